use super::*;
use proptest::prelude::*;

fn value<'a>(ini: &'a Ini, section: &str, key: &str) -> Option<&'a str> {
    let s = ini.section(section)?;
    s.get(ini, key).map(|e| e.value.as_str())
}

fn kinds(text: &str) -> Vec<ProblemKind> {
    parse(text)
        .expect_err("should fail")
        .into_iter()
        .map(|p| p.kind)
        .collect()
}

#[test]
fn equals_and_colon_both_delimit_and_first_one_wins() {
    let ini = parse("[a]\nx = 1\ny: 2\nz = a:b=c\nw : x = y\n").unwrap();
    assert_eq!(value(&ini, "a", "x"), Some("1"));
    assert_eq!(value(&ini, "a", "y"), Some("2"));
    assert_eq!(value(&ini, "a", "z"), Some("a:b=c"));
    assert_eq!(value(&ini, "a", "w"), Some("x = y"));
}

#[test]
fn option_names_are_lower_cased_and_section_names_kept() {
    let ini = parse("[US-East]\nSMT-Server-IP = 1.2.3.4\n").unwrap();
    assert_eq!(ini.sections[0].name, "US-East");
    assert_eq!(value(&ini, "US-East", "smt-server-ip"), Some("1.2.3.4"));
    assert!(ini.section("us-east").is_none());
}

#[test]
fn comments_are_full_line_only() {
    let ini =
        parse("# top\n; top\n[a]\n  # indented comment\nx = 1 # not a comment\ny = 2 ; nor this\n")
            .unwrap();
    assert_eq!(value(&ini, "a", "x"), Some("1 # not a comment"));
    assert_eq!(value(&ini, "a", "y"), Some("2 ; nor this"));
}

#[test]
fn continuation_lines_join_with_newline_and_keep_inner_empty_lines() {
    let text = "[a]\nx = one\n  two\n\n  three\n\n\ny = 2\n";
    let ini = parse(text).unwrap();
    assert_eq!(value(&ini, "a", "x"), Some("one\ntwo\n\nthree"));
    assert_eq!(value(&ini, "a", "y"), Some("2"));
}

#[test]
fn comment_inside_a_value_is_skipped() {
    let ini = parse("[a]\nx = one\n# note\n  two\n").unwrap();
    assert_eq!(value(&ini, "a", "x"), Some("one\ntwo"));
}

#[test]
fn continuation_is_relative_to_the_option_indent() {
    // An option indented by two spaces: a line indented by two is a new option, by four a
    // continuation.
    let ini = parse("[a]\n  x = 1\n  y = 2\n    more\n").unwrap();
    assert_eq!(value(&ini, "a", "x"), Some("1"));
    assert_eq!(value(&ini, "a", "y"), Some("2\nmore"));
}

#[test]
fn empty_value_is_allowed() {
    let ini = parse("[a]\nx =\ny:\n").unwrap();
    assert_eq!(value(&ini, "a", "x"), Some(""));
    assert_eq!(value(&ini, "a", "y"), Some(""));
}

#[test]
fn defaults_are_inherited_and_overridden() {
    let ini = parse("[DEFAULT]\nname = d\nfp = F\n[a]\nname = mine\n[b]\n").unwrap();
    assert_eq!(ini.sections.len(), 2);
    assert_eq!(value(&ini, "a", "name"), Some("mine"));
    assert_eq!(value(&ini, "a", "fp"), Some("F"));
    assert_eq!(value(&ini, "b", "name"), Some("d"));
}

#[test]
fn lower_case_default_is_an_ordinary_section() {
    let ini = parse("[default]\nx = 1\n").unwrap();
    assert_eq!(ini.sections[0].name, "default");
    assert!(ini.defaults.is_empty());
}

#[test]
fn section_name_runs_to_the_last_bracket() {
    let ini = parse("[a]b] trailing\nx = 1\n[ spaced ]\ny = 2\n").unwrap();
    assert_eq!(ini.sections[0].name, "a]b");
    assert_eq!(ini.sections[1].name, " spaced ");
}

#[test]
fn crlf_and_cr_line_endings_are_read() {
    let ini = parse("[a]\r\nx = 1\r\ny = 2\rz = 3").unwrap();
    assert_eq!(value(&ini, "a", "x"), Some("1"));
    assert_eq!(value(&ini, "a", "y"), Some("2"));
    assert_eq!(value(&ini, "a", "z"), Some("3"));
}

#[test]
fn duplicate_section_is_an_error_naming_both_lines() {
    let problems = parse("[a]\nx = 1\n[b]\n[a]\n").unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, 4);
    assert_eq!(problems[0].section.as_deref(), Some("a"));
    assert_eq!(
        problems[0].kind,
        ProblemKind::DuplicateSection { first_line: 1 }
    );
    assert_eq!(
        problems[0].to_string(),
        "line 4, section [a]: section already defined on line 1"
    );
}

#[test]
fn duplicate_option_is_an_error_even_with_other_case() {
    let problems = parse("[a]\nX = 1\nx = 2\n").unwrap_err();
    assert_eq!(problems[0].key.as_deref(), Some("x"));
    assert_eq!(
        problems[0].to_string(),
        "line 3, section [a], key x: option already set on line 2"
    );
}

#[test]
fn duplicate_default_option_is_an_error_but_repeated_default_header_is_not() {
    assert!(parse("[DEFAULT]\nx = 1\n[DEFAULT]\ny = 2\n").is_ok());
    assert_eq!(
        kinds("[DEFAULT]\nx = 1\n[DEFAULT]\nx = 2\n"),
        vec![ProblemKind::DuplicateOption { first_line: 2 }]
    );
}

#[test]
fn every_problem_is_reported() {
    let problems = parse("x = 1\n[a]\njunk\n= v\ny = 1\ny = 2\n[a]\n").unwrap_err();
    let kinds: Vec<_> = problems.iter().map(|p| (p.line, p.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (1, ProblemKind::MissingSectionHeader),
            (3, ProblemKind::NotAnOption),
            (4, ProblemKind::EmptyOptionName),
            (6, ProblemKind::DuplicateOption { first_line: 5 }),
            (7, ProblemKind::DuplicateSection { first_line: 2 }),
        ]
    );
}

#[test]
fn not_utf8_names_the_line() {
    let problems = parse_bytes(b"[a]\nx = \xff\n").unwrap_err();
    assert_eq!(problems[0].line, 2);
    assert_eq!(problems[0].kind, ProblemKind::NotUtf8);
}

#[test]
fn indented_first_line_before_any_option_is_not_a_continuation() {
    // Right after a header there is no option to continue: the line is an option itself.
    let ini = parse("[a]\n   x = 1\n").unwrap();
    assert_eq!(value(&ini, "a", "x"), Some("1"));
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-][A-Za-z0-9_. -]{0,10}[A-Za-z0-9_.-]|[A-Za-z0-9]"
}

fn key() -> impl Strategy<Value = String> {
    "[a-z0-9_.-]([a-z0-9_. -]{0,10}[a-z0-9_.-])?"
}

fn value_line() -> impl Strategy<Value = String> {
    // No line may start with a comment prefix or be only whitespace except by being empty.
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9/:=,.\\[\\]][A-Za-z0-9/:=,.#; \\[\\]]{0,20}[A-Za-z0-9/:=,.#;\\]]",
        "[A-Za-z0-9]",
    ]
}

fn entry_value() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just(String::new()),
            "[A-Za-z0-9/:=,.][A-Za-z0-9/:=,. ]{0,20}[A-Za-z0-9]"
        ],
        prop::collection::vec(value_line(), 0..4),
    )
        .prop_map(|(first, rest)| {
            let mut lines = vec![first];
            lines.extend(rest);
            lines.join("\n").trim_end().to_string()
        })
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec((key(), entry_value()), 0..5).prop_map(|pairs| {
        let mut seen = std::collections::HashSet::new();
        pairs
            .into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .map(|(key, value)| Entry {
                key,
                value,
                line: 0,
            })
            .collect()
    })
}

fn ini() -> impl Strategy<Value = Ini> {
    (entries(), prop::collection::vec((name(), entries()), 0..5)).prop_map(
        |(defaults, sections)| {
            let mut seen = std::collections::HashSet::new();
            let sections = sections
                .into_iter()
                .filter(|(n, _)| n != DEFAULT_SECTION && seen.insert(n.clone()))
                .map(|(name, entries)| Section {
                    name,
                    line: 0,
                    entries,
                })
                .collect();
            Ini { defaults, sections }
        },
    )
}

fn without_lines(mut ini: Ini) -> Ini {
    for e in &mut ini.defaults {
        e.line = 0;
    }
    for s in &mut ini.sections {
        s.line = 0;
        for e in &mut s.entries {
            e.line = 0;
        }
    }
    ini
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_bytes(&bytes);
    }

    #[test]
    fn arbitrary_ini_like_text_never_panics(
        lines in prop::collection::vec("[ \t]{0,3}[\\[\\]=:#;a-z \t]{0,12}", 0..20)
    ) {
        let text = lines.join("\n");
        if let Err(problems) = parse(&text) {
            for p in problems {
                prop_assert!(p.line >= 1 && p.line <= lines.len().max(1));
                let _ = p.to_string();
            }
        }
    }

    #[test]
    fn valid_files_round_trip(ini in ini()) {
        let text = render(&ini);
        let parsed = parse(&text).map_err(|p| TestCaseError::fail(format!("{p:?}\n{text}")))?;
        prop_assert_eq!(without_lines(parsed), ini);
    }
}
