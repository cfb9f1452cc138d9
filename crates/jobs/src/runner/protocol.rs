//! Parsers of what commands print: untrusted bytes, so they never panic, never allocate
//! more than the line they are given, and say what was wrong.
//!
//! - per_job stderr: `progress <0-100> [json meta]` lines ([`parse_progress_line`]); any
//!   other line is log text.
//! - persistent stdout: one JSON object per line ([`parse_persistent_line`]):
//!   `{"id": ..., "progress": N, "meta": {...}}`, `{"id": ..., "result": ...}` or
//!   `{"id": ..., "error": "..."}`.

use serde_json::{Map, Value};

/// A progress report: percent and the meta object the command gave (empty if none).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub percent: u8,
    pub meta: Map<String, Value>,
}

/// `progress <0-100> [json object]`, with any ASCII whitespace between the parts and around
/// them. Anything else (another word, a percent above 100, meta that is not a JSON object)
/// is not a progress line: `None`, and the line goes to the log.
pub fn parse_progress_line(line: &[u8]) -> Option<Progress> {
    let line = std::str::from_utf8(line).ok()?.trim_ascii();
    let rest = line.strip_prefix("progress")?;
    if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let rest = rest.trim_ascii_start();
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let percent: u8 = rest[..digits].parse().ok().filter(|p| *p <= 100)?;
    let meta_text = &rest[digits..];
    if meta_text.is_empty() {
        return Some(Progress {
            percent,
            meta: Map::new(),
        });
    }
    if !meta_text.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    match serde_json::from_str(meta_text.trim_ascii()) {
        Ok(Value::Object(meta)) => Some(Progress { percent, meta }),
        _ => None,
    }
}

/// One line a persistent command printed on stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum PersistentLine {
    Progress { id: String, progress: Progress },
    Result { id: String, value: Value },
    Error { id: String, message: String },
}

impl PersistentLine {
    pub fn id(&self) -> &str {
        match self {
            PersistentLine::Progress { id, .. }
            | PersistentLine::Result { id, .. }
            | PersistentLine::Error { id, .. } => id,
        }
    }
}

/// Parses one stdout line of a persistent command; the error says what is wrong with it.
pub fn parse_persistent_line(line: &[u8]) -> Result<PersistentLine, String> {
    let value: Value =
        serde_json::from_slice(line.trim_ascii()).map_err(|e| format!("not a JSON line ({e})"))?;
    let Value::Object(mut object) = value else {
        return Err("not a JSON object".into());
    };
    let id = match object.remove("id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err("\"id\" is not a string".into()),
        None => return Err("no \"id\"".into()),
    };
    let kinds = ["progress", "result", "error"];
    let present: Vec<&str> = kinds
        .into_iter()
        .filter(|k| object.contains_key(*k))
        .collect();
    match present.as_slice() {
        ["progress"] => {
            let percent = object
                .get("progress")
                .and_then(Value::as_u64)
                .filter(|p| *p <= 100)
                .ok_or("\"progress\" is not an integer from 0 to 100")?;
            let meta = match object.remove("meta") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(meta)) => meta,
                Some(_) => return Err("\"meta\" is not an object".into()),
            };
            let progress = Progress {
                percent: percent as u8,
                meta,
            };
            Ok(PersistentLine::Progress { id, progress })
        }
        ["result"] => Ok(PersistentLine::Result {
            id,
            value: object.remove("result").unwrap_or(Value::Null),
        }),
        ["error"] => match object.remove("error") {
            Some(Value::String(message)) => Ok(PersistentLine::Error { id, message }),
            Some(other) => Ok(PersistentLine::Error {
                id,
                message: other.to_string(),
            }),
            None => unreachable!("present"),
        },
        [] => Err("none of \"progress\", \"result\", \"error\"".into()),
        _ => Err(format!("more than one of {present:?}")),
    }
}

/// The result of a per_job command: its stdout as JSON, else as a string (spec 3). Text
/// that is not UTF-8 is an error (garbage output fails the job).
pub fn parse_result(stdout: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(stdout).map_err(|e| {
        format!(
            "the command's output is not UTF-8 text (invalid byte at {})",
            e.valid_up_to()
        )
    })?;
    Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn progress_lines_with_and_without_meta() {
        let p = parse_progress_line(b"progress 40").unwrap();
        assert_eq!((p.percent, p.meta.len()), (40, 0));
        let p = parse_progress_line(b"  progress\t100  {\"step\": \"b\"} \r").unwrap();
        assert_eq!(p.percent, 100);
        assert_eq!(Value::Object(p.meta), json!({"step": "b"}));
        for not in [
            &b"progress"[..],
            b"progress 101",
            b"progress -1",
            b"progress 1000",
            b"progress 50%",
            b"progress50",
            b"progress 50 [1]",
            b"progress 50 {bad",
            b"Progress 50",
            b"progress 0x10",
            b"progress \xff",
            b"",
        ] {
            assert_eq!(
                parse_progress_line(not),
                None,
                "{:?}",
                String::from_utf8_lossy(not)
            );
        }
    }

    #[test]
    fn persistent_lines_of_each_kind_and_their_errors() {
        assert_eq!(
            parse_persistent_line(br#"{"id":"a","progress":5,"meta":{"x":1}}"#).unwrap(),
            PersistentLine::Progress {
                id: "a".into(),
                progress: Progress {
                    percent: 5,
                    meta: json!({"x": 1}).as_object().unwrap().clone()
                }
            }
        );
        assert_eq!(
            parse_persistent_line(br#"{"id":"a","result":null}"#).unwrap(),
            PersistentLine::Result {
                id: "a".into(),
                value: Value::Null
            }
        );
        assert_eq!(
            parse_persistent_line(br#"{"id":"a","error":"boom"}"#).unwrap(),
            PersistentLine::Error {
                id: "a".into(),
                message: "boom".into()
            }
        );
        for (line, problem) in [
            (&b"hello"[..], "not a JSON line"),
            (b"[1]", "not a JSON object"),
            (br#"{"result":1}"#, "no \"id\""),
            (br#"{"id":1,"result":1}"#, "not a string"),
            (br#"{"id":"a"}"#, "none of"),
            (br#"{"id":"a","result":1,"error":"x"}"#, "more than one"),
            (br#"{"id":"a","progress":101}"#, "0 to 100"),
            (br#"{"id":"a","progress":5,"meta":[]}"#, "not an object"),
        ] {
            let error = parse_persistent_line(line).unwrap_err();
            assert!(error.contains(problem), "{error}");
        }
    }

    #[test]
    fn results_are_json_else_text_and_never_garbage() {
        assert_eq!(parse_result(b"{\"a\": 1}\n").unwrap(), json!({"a": 1}));
        assert_eq!(parse_result(b"hello\n").unwrap(), json!("hello\n"));
        assert_eq!(parse_result(b"").unwrap(), json!(""));
        assert!(parse_result(b"\xff\xfe").unwrap_err().contains("not UTF-8"));
    }

    /// The reference: a progress line is exactly "progress", whitespace, 1-3 digits <= 100,
    /// and optionally whitespace + a JSON object.
    fn reference(line: &str) -> Option<u8> {
        let mut parts = line.split_ascii_whitespace();
        if parts.next()? != "progress" || !line.trim_ascii_start().starts_with("progress") {
            return None;
        }
        let number = parts.next()?;
        if number.is_empty() || number.len() > 3 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let percent: u8 = number.parse().ok().filter(|p| *p <= 100)?;
        let after_number = line.trim_ascii().split_once(number)?.1;
        if after_number.trim_ascii().is_empty() {
            return Some(percent);
        }
        match serde_json::from_str::<Value>(after_number.trim_ascii()) {
            Ok(Value::Object(_)) => Some(percent),
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn progress_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_progress_line(&bytes);
        }

        #[test]
        fn progress_parser_agrees_with_the_reference(
            pad in "[ \t]{0,3}",
            word in prop_oneof![Just("progress"), Just("progres"), Just("prog ress")],
            sep in "[ \t]{0,2}",
            number in prop_oneof![0u32..=120u32, 0u32..=1200u32].prop_map(|n| n.to_string()),
            meta in prop_oneof![Just(String::new()), Just(" {\"a\":1}".to_string()), Just(" {x".to_string()), Just(" 5".to_string())],
        ) {
            let line = format!("{pad}{word}{sep}{number}{meta}{pad}");
            prop_assert_eq!(parse_progress_line(line.as_bytes()).map(|p| p.percent), reference(&line), "{:?}", line);
        }

        #[test]
        fn persistent_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_persistent_line(&bytes);
        }

        #[test]
        fn persistent_parser_reads_what_a_writer_wrote(
            id in "[a-z0-9-]{0,40}",
            percent in 0u8..=100,
            text in ".{0,40}",
        ) {
            let progress = json!({"id": id, "progress": percent, "meta": {"t": text}}).to_string();
            let parsed = parse_persistent_line(progress.as_bytes()).unwrap();
            prop_assert_eq!(parsed.id(), id.as_str());
            let error = json!({"id": id, "error": text}).to_string();
            prop_assert_eq!(
                parse_persistent_line(error.as_bytes()).unwrap(),
                PersistentLine::Error { id: id.clone(), message: text.clone() }
            );
        }
    }
}
