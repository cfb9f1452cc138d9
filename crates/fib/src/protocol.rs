//! The original back-end wire protocol. A request is the JSON text `{"N": 10}` with no framing;
//! a reply is an 8-byte little-endian signed length followed by that many bytes of JSON,
//! `{"N": 10, "result": "0 1 1 2 3 5 8 13 21 34"}` (Python `json.dumps` spacing, as the original
//! sent it) or, for a request that cannot be answered, `{"error": "..."}`.
//!
//! Since requests have no framing, [`RequestScanner`] finds JSON object boundaries in the byte
//! stream (brace depth, strings and escapes), so requests split over many reads or several in
//! one read are both handled. Bytes outside an object are garbage: a run of them, ended by a
//! `{`, a newline or the end of input, yields one error reply and scanning resumes at the `{`.

use serde::Deserialize;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 8;

/// Largest request object accepted; past it the connection is answered with an error and
/// closed (nothing sane is that long, and resynchronising inside it is guesswork).
pub const MAX_REQUEST_BYTES: usize = 4096;

/// Longest sample of garbage quoted back in an error reply.
const SAMPLE_MAX: usize = 32;

/// What the scanner found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The bytes of one complete JSON object, braces included.
    Request(Vec<u8>),
    /// Bytes outside any object (the first few of them).
    Garbage(Vec<u8>),
    /// An object longer than [`MAX_REQUEST_BYTES`]: the connection cannot be resynchronised.
    TooLarge,
    /// The input ended inside an object.
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Garbage,
    Object {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
}

/// Incremental splitter of a byte stream into request objects.
#[derive(Debug)]
pub struct RequestScanner {
    /// Unconsumed input; an object in progress starts at index 0.
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    state: State,
    sample: Vec<u8>,
}

impl Default for RequestScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestScanner {
    pub fn new() -> Self {
        RequestScanner {
            buf: Vec::new(),
            scanned: 0,
            state: State::Between,
            sample: Vec::new(),
        }
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Next complete event in the input pushed so far, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        while self.scanned < self.buf.len() {
            let byte = self.buf[self.scanned];
            if let Some(event) = self.step(byte) {
                return Some(event);
            }
        }
        // Garbage and whitespace are never needed again: drop them now so a long run of
        // them does not pile up.
        if matches!(self.state, State::Between | State::Garbage) {
            self.consume_scanned();
        }
        None
    }

    /// The event the end of input completes, if any.
    pub fn finish(&mut self) -> Option<Event> {
        match self.state {
            State::Between => None,
            State::Garbage => Some(self.end_garbage()),
            State::Object { .. } => Some(Event::Truncated),
        }
    }

    /// True when no partial request or garbage is pending (so an idle close loses nothing).
    pub fn is_idle(&self) -> bool {
        self.state == State::Between && self.buf.is_empty()
    }

    fn step(&mut self, byte: u8) -> Option<Event> {
        match self.state {
            State::Between => self.step_between(byte),
            State::Garbage => self.step_garbage(byte),
            State::Object {
                depth,
                in_string,
                escaped,
            } => self.step_object(byte, depth, in_string, escaped),
        }
    }

    fn step_between(&mut self, byte: u8) -> Option<Event> {
        if byte == b'{' {
            self.consume_scanned();
            self.scanned = 1;
            self.state = State::Object {
                depth: 1,
                in_string: false,
                escaped: false,
            };
        } else if byte.is_ascii_whitespace() {
            self.scanned += 1;
        } else {
            self.state = State::Garbage;
            self.sample.clear();
        }
        None
    }

    fn step_garbage(&mut self, byte: u8) -> Option<Event> {
        match byte {
            b'{' => Some(self.end_garbage()),
            b'\n' => {
                self.scanned += 1;
                Some(self.end_garbage())
            }
            _ => {
                if self.sample.len() < SAMPLE_MAX {
                    self.sample.push(byte);
                }
                self.scanned += 1;
                None
            }
        }
    }

    fn end_garbage(&mut self) -> Event {
        self.consume_scanned();
        self.state = State::Between;
        Event::Garbage(std::mem::take(&mut self.sample))
    }

    fn step_object(
        &mut self,
        byte: u8,
        depth: u32,
        in_string: bool,
        escaped: bool,
    ) -> Option<Event> {
        self.scanned += 1;
        let (depth, in_string, escaped) = match (in_string, escaped, byte) {
            (true, true, _) => (depth, true, false),
            (true, false, b'\\') => (depth, true, true),
            (true, false, b'"') => (depth, false, false),
            (true, false, _) => (depth, true, false),
            (false, _, b'"') => (depth, true, false),
            (false, _, b'{') => (depth + 1, false, false),
            (false, _, b'}') => (depth - 1, false, false),
            (false, _, _) => (depth, false, false),
        };
        if depth == 0 {
            let object = self.buf[..self.scanned].to_vec();
            self.consume_scanned();
            self.state = State::Between;
            return Some(Event::Request(object));
        }
        if self.scanned > MAX_REQUEST_BYTES {
            return Some(Event::TooLarge);
        }
        self.state = State::Object {
            depth,
            in_string,
            escaped,
        };
        None
    }

    fn consume_scanned(&mut self) {
        self.buf.drain(..self.scanned);
        self.scanned = 0;
    }
}

/// Why a request object could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request is not a JSON object like {{\"N\": 10}}: {0}")]
    Json(String),
    #[error(transparent)]
    BadN(#[from] crate::parse::BadN),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(rename = "N")]
    n: serde_json::Value,
}

/// N from a request object: a JSON integer, or a string of digits (as a lenient client might
/// send), within `1..=limit`.
pub fn parse_request(object: &[u8], limit: u64) -> Result<u64, RequestError> {
    let raw: RawRequest =
        serde_json::from_slice(object).map_err(|e| RequestError::Json(e.to_string()))?;
    let text = match &raw.n {
        serde_json::Value::Number(number) => number.to_string(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    Ok(crate::parse::parse_n(&text, limit)?)
}

/// The JSON of a reply before the numbers' text: `{"N": 10, "result": "`.
pub fn reply_head(n: u64) -> String {
    format!("{{\"N\": {n}, \"result\": \"")
}

/// The JSON of a reply after the numbers' text.
pub const REPLY_TAIL: &[u8] = b"\"}";

/// Length prefix plus head of a reply whose numbers' text is `text_len` bytes.
pub fn reply_start(n: u64, text_len: u64) -> Vec<u8> {
    let head = reply_head(n);
    let total = head.len() as u64 + text_len + REPLY_TAIL.len() as u64;
    let mut out = Vec::with_capacity(PREFIX_LEN + head.len());
    out.extend_from_slice(&(total as i64).to_le_bytes());
    out.extend_from_slice(head.as_bytes());
    out
}

/// A whole error reply: prefix and `{"error": "..."}`.
pub fn error_reply(message: &str) -> Vec<u8> {
    let quoted = serde_json::Value::String(message.to_string()).to_string();
    let json = format!("{{\"error\": {quoted}}}");
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len());
    out.extend_from_slice(&(json.len() as i64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

/// A reply body (after the prefix), as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Result { n: u64, result: String },
    Error(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawReply {
    Result {
        #[serde(rename = "N")]
        n: u64,
        result: String,
    },
    Error {
        error: String,
    },
}

/// Parses a reply body.
pub fn parse_reply(body: &[u8]) -> Result<Reply, String> {
    match serde_json::from_slice::<RawReply>(body) {
        Ok(RawReply::Result { n, result }) => Ok(Reply::Result { n, result }),
        Ok(RawReply::Error { error }) => Ok(Reply::Error(error)),
        Err(e) => Err(format!("reply is not the expected JSON: {e}")),
    }
}

/// The message of a garbage error reply.
pub fn garbage_message(sample: &[u8]) -> String {
    format!(
        "expected a JSON object like {{\"N\": 10}}, got {:?}",
        String::from_utf8_lossy(sample)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(chunks: &[&[u8]]) -> Vec<Event> {
        let mut scanner = RequestScanner::new();
        let mut out = Vec::new();
        for chunk in chunks {
            scanner.push(chunk);
            while let Some(event) = scanner.next_event() {
                out.push(event);
            }
        }
        out.extend(scanner.finish());
        out
    }

    fn request(text: &str) -> Event {
        Event::Request(text.as_bytes().to_vec())
    }

    #[test]
    fn one_request_in_one_read() {
        assert_eq!(events(&[b"{\"N\": 10}"]), vec![request("{\"N\": 10}")]);
    }

    #[test]
    fn a_request_split_into_single_bytes() {
        let text = b"{\"N\": 10}";
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(events(&chunks), vec![request("{\"N\": 10}")]);
    }

    #[test]
    fn two_requests_in_one_read() {
        assert_eq!(
            events(&[b"{\"N\": 1}{\"N\": 2}\n"]),
            vec![request("{\"N\": 1}"), request("{\"N\": 2}")]
        );
    }

    #[test]
    fn garbage_then_a_request() {
        assert_eq!(
            events(&[b"hello{\"N\": 3}"]),
            vec![Event::Garbage(b"hello".to_vec()), request("{\"N\": 3}")]
        );
        assert_eq!(
            events(&[b"oops\n", b"{\"N\": 3}"]),
            vec![Event::Garbage(b"oops".to_vec()), request("{\"N\": 3}")]
        );
    }

    #[test]
    fn braces_inside_strings_do_not_count() {
        let text = r#"{"x": "}{\"}", "N": 1}"#;
        assert_eq!(events(&[text.as_bytes()]), vec![request(text)]);
    }

    #[test]
    fn an_endless_object_is_too_large() {
        let mut scanner = RequestScanner::new();
        scanner.push(b"{\"N\": ");
        scanner.push(&vec![b'1'; MAX_REQUEST_BYTES]);
        assert_eq!(scanner.next_event(), Some(Event::TooLarge));
    }

    #[test]
    fn input_ending_inside_an_object_is_truncated() {
        assert_eq!(events(&[b"{\"N\": 1"]), vec![Event::Truncated]);
    }

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse_request(b"{\"N\": 10}", 100), Ok(10));
        assert_eq!(parse_request(b"{\"N\": \"010\"}", 100), Ok(10));
        assert!(parse_request(b"{\"N\": -1}", 100).is_err());
        assert!(parse_request(b"{\"N\": 1.5}", 100).is_err());
        assert!(parse_request(b"{\"N\": 0}", 100).is_err());
        assert!(parse_request(b"{\"N\": 101}", 100).is_err());
        assert!(parse_request(b"{\"M\": 1}", 100).is_err());
        assert!(parse_request(b"{\"N\": 123456789012345678901234567890}", 100).is_err());
    }

    #[test]
    fn reply_framing_is_the_original_byte_for_byte() {
        let text = "0 1 1 2 3 5 8 13 21 34";
        let mut reply = reply_start(10, text.len() as u64);
        reply.extend_from_slice(text.as_bytes());
        reply.extend_from_slice(REPLY_TAIL);
        let json = br#"{"N": 10, "result": "0 1 1 2 3 5 8 13 21 34"}"#;
        assert_eq!(&reply[..8], &(json.len() as i64).to_le_bytes());
        assert_eq!(&reply[8..], json);
        assert_eq!(
            parse_reply(&reply[8..]),
            Ok(Reply::Result {
                n: 10,
                result: text.into()
            })
        );
    }

    #[test]
    fn error_replies_are_framed_json() {
        let reply = error_reply("bad \"N\"");
        let body = &reply[8..];
        assert_eq!(&reply[..8], &(body.len() as i64).to_le_bytes());
        assert_eq!(parse_reply(body), Ok(Reply::Error("bad \"N\"".into())));
    }

    proptest! {
        /// Arbitrary bytes never panic the scanner, and cutting them anywhere changes nothing.
        #[test]
        fn arbitrary_bytes_scan_the_same_however_cut(
            input in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'{'), Just(b'}'), Just(b'"')], 0..300),
            cut in 0usize..300,
        ) {
            let cut = cut.min(input.len());
            let (head, tail) = input.split_at(cut);
            prop_assert_eq!(events(&[head, tail]), events(&[&input]));
        }

        /// However the input is cut, the events are those of reading it whole.
        #[test]
        fn splitting_never_changes_the_events(
            items in proptest::collection::vec(
                prop_oneof![
                    (1u64..100_000).prop_map(|n| format!("{{\"N\": {n}}}")),
                    "[a-z]{1,5}\n".prop_map(String::from),
                    Just(" ".to_string()),
                ],
                1..8,
            ),
            cuts in proptest::collection::vec(1usize..7, 0..40),
        ) {
            let input = items.concat();
            let whole = events(&[input.as_bytes()]);
            let mut chunks = Vec::new();
            let mut rest = input.as_bytes();
            for cut in cuts {
                if rest.is_empty() { break; }
                let (head, tail) = rest.split_at(cut.min(rest.len()));
                chunks.push(head);
                rest = tail;
            }
            chunks.push(rest);
            prop_assert_eq!(events(&chunks), whole.clone());
            let requests = items.iter().filter(|i| i.starts_with('{')).count();
            prop_assert_eq!(whole.iter().filter(|e| matches!(e, Event::Request(_))).count(), requests);
        }
    }
}
