//! What an instance answers the proxy's own HTTP/1.1 client, on untrusted bytes: the
//! response head parser and the chunked body decoder. Must never panic; a head it accepts
//! takes a prefix of what it was given, and decoding consumes only what it was given.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proxy::fuzzing::{parse_head, Chunks, Decoded};

fuzz_target!(|bytes: &[u8]| {
    for to_head in [false, true] {
        let mut buf = BytesMut::from(bytes);
        if let Ok(Some(_)) = parse_head(&mut buf, to_head) {
            assert!(bytes.ends_with(&buf));
        }
    }
    let mut chunks = Chunks::Size;
    let mut buf = BytesMut::from(bytes);
    let mut decoded = 0;
    while let Ok(Decoded::Data(data)) = chunks.decode(&mut buf) {
        decoded += data.len();
        assert!(decoded <= bytes.len());
    }
});
