//! A reader for the INI dialect of Python 3's `configparser.RawConfigParser` with its default
//! settings, which is what the original region server reads `regionData.cfg` and
//! `regionInfo.cfg` with:
//!
//! - `key = value` or `key: value` (the first `=` or `:` splits; the key is right-trimmed and
//!   lower-cased, the value trimmed);
//! - full-line comments start with `#` or `;` after optional indentation (no inline comments);
//! - a line indented deeper than the option line continues its value (joined with `\n`);
//!   empty lines inside a value are kept, trailing ones dropped;
//! - `[DEFAULT]` (exact case) holds options every section inherits and is not a section;
//! - section names are case-sensitive and may contain anything (`[a]b]` names `a]b`);
//! - strict mode: a section or an option given twice is an error (a repeated `[DEFAULT]`
//!   header is not, as in Python).
//!
//! Unlike Python, which stops at the first duplicate, the reader reports every problem of the
//! file, each with its line, section and key.

use std::fmt;

/// The name of the section whose options every other section inherits.
pub const DEFAULT_SECTION: &str = "DEFAULT";

/// One `key = value` option with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lower-cased option name.
    pub key: String,
    /// Value, trimmed; continuation lines joined with `\n`.
    pub value: String,
    /// 1-based line of the option's first line.
    pub line: usize,
}

/// One `[name]` section and its own options, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name as written between the brackets.
    pub name: String,
    /// 1-based line of the header.
    pub line: usize,
    /// The section's own options (not the inherited `[DEFAULT]` ones).
    pub entries: Vec<Entry>,
}

/// A parsed file: the `[DEFAULT]` options and the sections in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ini {
    /// Options of `[DEFAULT]`.
    pub defaults: Vec<Entry>,
    /// Every other section, in file order.
    pub sections: Vec<Section>,
}

/// What is wrong with one line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// An option or anything else before the first section header.
    MissingSectionHeader,
    /// A second `[name]` header for the same section.
    DuplicateSection { first_line: usize },
    /// A second `key` in the same section.
    DuplicateOption { first_line: usize },
    /// A line that is neither a header, an option, a comment nor a continuation.
    NotAnOption,
    /// An option line whose name is empty (`= value`).
    EmptyOptionName,
    /// Bytes that are not UTF-8.
    NotUtf8,
}

/// One problem of the file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number.
    pub line: usize,
    /// The section the line belongs to, if any.
    pub section: Option<String>,
    /// The option concerned, if any.
    pub key: Option<String>,
    /// The offending line, trimmed (for messages).
    pub text: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl Problem {
    /// What is wrong, without the location.
    pub fn message(&self) -> String {
        match &self.kind {
            ProblemKind::MissingSectionHeader => {
                format!("no section header before {:?}", self.text)
            }
            ProblemKind::DuplicateSection { first_line } => {
                format!("section already defined on line {first_line}")
            }
            ProblemKind::DuplicateOption { first_line } => {
                format!("option already set on line {first_line}")
            }
            ProblemKind::NotAnOption => format!(
                "not a section header, an option (key = value) or a comment: {:?}",
                self.text
            ),
            ProblemKind::EmptyOptionName => format!("option without a name: {:?}", self.text),
            ProblemKind::NotUtf8 => "not valid UTF-8".to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(section) = &self.section {
            write!(f, ", section [{section}]")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key {key}")?;
        }
        write!(f, ": {}", self.message())
    }
}

impl Section {
    /// The option `key` (lower-case) of this section, else of `[DEFAULT]`, as Python's
    /// `get(section, key)` finds it.
    pub fn get<'a>(&'a self, ini: &'a Ini, key: &str) -> Option<&'a Entry> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .or_else(|| ini.defaults.iter().find(|e| e.key == key))
    }
}

impl Ini {
    /// The section named exactly `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// Whitespace as Python's `str.strip()` sees it: Unicode White_Space plus the four
/// information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Splits like Python's universal-newline text mode: `\r\n`, `\r` and `\n` end a line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        let mut next = end;
        if rest[end..].starts_with("\r\n") {
            next += 2;
        } else if end < rest.len() {
            next += 1;
        }
        rest = &rest[next..];
        Some(line)
    })
}

/// Where options go: `[DEFAULT]` or the n-th section.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Defaults,
    Section(usize),
}

/// Reader state between lines.
struct Reader {
    ini: Ini,
    problems: Vec<Problem>,
    target: Option<Target>,
    /// Index of the option that continuation lines append to, in the current target.
    option: Option<usize>,
    /// Indentation of the last header or option line: deeper lines continue the value.
    indent_level: usize,
    /// Whether the file holds any continuation or in-value empty line (values then need
    /// their trailing whitespace trimmed at the end, as Python's join + rstrip).
    continued: bool,
}

/// Parses `bytes` (a whole file). Returns the file or every problem found.
pub fn parse_bytes(bytes: &[u8]) -> Result<Ini, Vec<Problem>> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            Err(vec![Problem {
                line,
                section: None,
                key: None,
                text: String::new(),
                kind: ProblemKind::NotUtf8,
            }])
        }
    }
}

/// Parses `text` (a whole file). Returns the file or every problem found.
pub fn parse(text: &str) -> Result<Ini, Vec<Problem>> {
    let mut reader = Reader {
        ini: Ini::default(),
        problems: Vec::new(),
        target: None,
        option: None,
        indent_level: 0,
        continued: false,
    };
    for (index, line) in lines(text).enumerate() {
        reader.line(index + 1, line);
    }
    reader.finish()
}

impl Reader {
    fn line(&mut self, lineno: usize, line: &str) {
        let stripped = py_strip(line);
        if stripped.starts_with('#') || stripped.starts_with(';') {
            // A comment neither adds to nor ends a value.
            return;
        }
        if stripped.is_empty() {
            if let Some(value) = self.current_value() {
                value.push('\n');
            }
            return;
        }
        let indent = line.chars().take_while(|&c| is_py_space(c)).count();
        if self.option.is_some() && self.target.is_some() && indent > self.indent_level {
            if let Some(value) = self.current_value() {
                value.push('\n');
                value.push_str(stripped);
            }
            return;
        }
        self.indent_level = indent;
        if let Some(name) = section_header(stripped) {
            self.header(lineno, name);
        } else if self.target.is_none() {
            self.problem(lineno, None, stripped, ProblemKind::MissingSectionHeader);
        } else {
            self.option_line(lineno, stripped);
        }
    }

    /// The value continuation lines append to (lines are joined with `\n`, as Python does).
    fn current_value(&mut self) -> Option<&mut String> {
        let target = self.target?;
        let option = self.option?;
        self.continued = true;
        self.entries_mut(target)
            .get_mut(option)
            .map(|entry| &mut entry.value)
    }

    fn header(&mut self, lineno: usize, name: &str) {
        self.option = None;
        if name == DEFAULT_SECTION {
            self.target = Some(Target::Defaults);
            return;
        }
        if let Some(index) = self.ini.sections.iter().position(|s| s.name == name) {
            let first_line = self.ini.sections[index].line;
            self.problem(
                lineno,
                Some(name.to_string()),
                name,
                ProblemKind::DuplicateSection { first_line },
            );
            // Python would stop here; going on into the same section finds more problems.
            self.target = Some(Target::Section(index));
            return;
        }
        self.ini.sections.push(Section {
            name: name.to_string(),
            line: lineno,
            entries: Vec::new(),
        });
        self.target = Some(Target::Section(self.ini.sections.len() - 1));
    }

    fn option_line(&mut self, lineno: usize, stripped: &str) {
        let Some(target) = self.target else { return };
        let section = self.section_name(target);
        let Some(split) = stripped.find(['=', ':']) else {
            self.problem(lineno, section, stripped, ProblemKind::NotAnOption);
            return;
        };
        let key = py_strip(&stripped[..split]).to_lowercase();
        if key.is_empty() {
            self.problem(lineno, section, stripped, ProblemKind::EmptyOptionName);
            return;
        }
        let value = py_strip(&stripped[split + 1..]).to_string();
        let entries = self.entries_mut(target);
        if let Some(first) = entries.iter().find(|e| e.key == key) {
            let first_line = first.line;
            let problem = Problem {
                line: lineno,
                section,
                key: Some(key),
                text: stripped.to_string(),
                kind: ProblemKind::DuplicateOption { first_line },
            };
            self.problems.push(problem);
            self.option = None;
            return;
        }
        entries.push(Entry {
            key,
            value,
            line: lineno,
        });
        self.option = Some(entries.len() - 1);
    }

    fn section_name(&self, target: Target) -> Option<String> {
        match target {
            Target::Defaults => Some(DEFAULT_SECTION.to_string()),
            Target::Section(i) => Some(self.ini.sections[i].name.clone()),
        }
    }

    fn entries_mut(&mut self, target: Target) -> &mut Vec<Entry> {
        match target {
            Target::Defaults => &mut self.ini.defaults,
            Target::Section(i) => &mut self.ini.sections[i].entries,
        }
    }

    fn problem(&mut self, line: usize, section: Option<String>, text: &str, kind: ProblemKind) {
        self.problems.push(Problem {
            line,
            section,
            key: None,
            text: text.to_string(),
            kind,
        });
    }

    fn finish(mut self) -> Result<Ini, Vec<Problem>> {
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        if self.continued {
            // Python joins the value lines and strips the end (trailing empty lines).
            let all = self.ini.defaults.iter_mut().chain(
                self.ini
                    .sections
                    .iter_mut()
                    .flat_map(|s| s.entries.iter_mut()),
            );
            for entry in all {
                let end = entry.value.trim_end_matches(is_py_space).len();
                entry.value.truncate(end);
            }
        }
        Ok(self.ini)
    }
}

/// `[name]` as Python's `SECTCRE` (`\[(?P<header>.+)\]`, matched at the start of the stripped
/// line) reads it: the name runs to the LAST `]`, anything after it is ignored.
fn section_header(stripped: &str) -> Option<&str> {
    let rest = stripped.strip_prefix('[')?;
    let close = rest.rfind(']')?;
    let name = &rest[..close];
    if name.is_empty() {
        return None;
    }
    Some(name)
}

/// Writes `ini` back as text that [`parse`] reads to the same value (what the round-trip
/// property test relies on).
pub fn render(ini: &Ini) -> String {
    let mut out = String::new();
    if !ini.defaults.is_empty() {
        out.push_str("[DEFAULT]\n");
        render_entries(&mut out, &ini.defaults);
    }
    for section in &ini.sections {
        out.push('[');
        out.push_str(&section.name);
        out.push_str("]\n");
        render_entries(&mut out, &section.entries);
    }
    out
}

fn render_entries(out: &mut String, entries: &[Entry]) {
    for entry in entries {
        out.push_str(&entry.key);
        out.push_str(" = ");
        for (i, line) in entry.value.split('\n').enumerate() {
            if i > 0 {
                out.push_str("\n\t");
            }
            out.push_str(line);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests;
