//! What job commands print, on untrusted bytes: the per_job stderr progress-line parser,
//! the persistent-mode stdout line parser, and the per_job result parser. Must never panic;
//! a parsed progress line's percent is at most 100, and a parsed persistent line keeps its
//! id and kind through a serialise/parse round trip (values are not compared: serde_json's
//! default float parsing may move a huge number by one ulp, which the fuzzer found).
#![no_main]

use jobs::runner::protocol::{parse_persistent_line, parse_progress_line, parse_result, PersistentLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(progress) = parse_progress_line(bytes) {
        assert!(progress.percent <= 100);
    }
    if let Ok(line) = parse_persistent_line(bytes) {
        let id = line.id().to_string();
        let again = match &line {
            PersistentLine::Progress { progress, .. } => serde_json::json!({"id": id, "progress": progress.percent, "meta": progress.meta}),
            PersistentLine::Result { value, .. } => serde_json::json!({"id": id, "result": value}),
            PersistentLine::Error { message, .. } => serde_json::json!({"id": id, "error": message}),
        };
        let reparsed = parse_persistent_line(again.to_string().as_bytes()).expect("a line it wrote");
        assert_eq!(reparsed.id(), line.id());
        assert_eq!(std::mem::discriminant(&reparsed), std::mem::discriminant(&line));
    }
    let _ = parse_result(bytes);
});
