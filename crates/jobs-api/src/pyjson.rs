//! JSON written byte for byte as the original wrote it: Flask's `jsonify` over Python's
//! `json` module. Clients of the ServiceGateway compare bodies, cache them and sign them, so
//! "the same JSON" is not enough: the same bytes are.
//!
//! What that means, all of it from Python's defaults as Flask used them:
//! - compact separators (`,` and `:`), keys sorted by code point, one trailing newline;
//! - `ensure_ascii`: every character outside `' '..='~'` is escaped, `\uXXXX` in lowercase
//!   hex, characters beyond the BMP as a surrogate pair; `\n`, `\r`, `\t`, `\b`, `\f`, `"` and
//!   `\` by their short escapes; `/` is not escaped;
//! - floats as Python's `repr`: `1.0`, `1e+16`, `1.5e-05`, `0.0001` (fixed notation from
//!   1e-4 up to 1e16, scientific outside, at least two exponent digits).
//!
//! serde_json differs on each of these (raw UTF-8, `1e16`, no newline), hence this writer.

use serde_json::Value;

/// `value` as the original's body: compact, sorted, ASCII, with a trailing newline.
pub fn body(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value);
    out.push('\n');
    out
}

/// `value` without the trailing newline (for embedding).
pub fn compact(value: &Value) -> String {
    let mut out = String::with_capacity(64);
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => write_number(out, number),
        Value::String(text) => write_string(out, text),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Python sorts str keys by code point; UTF-8 byte order is the same order.
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, number: &serde_json::Number) {
    if let Some(int) = number.as_i64() {
        out.push_str(itoa::Buffer::new().format(int));
    } else if let Some(int) = number.as_u64() {
        out.push_str(itoa::Buffer::new().format(int));
    } else if let Some(float) = number.as_f64() {
        out.push_str(&python_float_repr(float));
    }
}

/// A JSON string literal as Python's `json.dumps` writes it with `ensure_ascii`.
pub fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)` for a finite float (JSON holds no others).
pub fn python_float_repr(value: f64) -> String {
    if value == 0.0 {
        return if value.is_sign_negative() {
            "-0.0"
        } else {
            "0.0"
        }
        .to_string();
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, as Python's repr does; only
    // the layout differs.
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("{:e} always writes an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} writes a decimal exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exponent) {
        out.push_str(&fixed_notation(&digits, exponent));
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        out.push_str(&format!("e{exponent_sign}{:02}", exponent.abs()));
    }
    out
}

/// `d.ddd x 10^exponent` written without an exponent, with at least one digit after the point.
fn fixed_notation(digits: &str, exponent: i32) -> String {
    if exponent < 0 {
        let zeros = "0".repeat((-exponent - 1) as usize);
        return format!("0.{zeros}{digits}");
    }
    let integer_len = exponent as usize + 1;
    if digits.len() <= integer_len {
        let zeros = "0".repeat(integer_len - digits.len());
        format!("{digits}{zeros}.0")
    } else {
        format!("{}.{}", &digits[..integer_len], &digits[integer_len..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_compact_sorted_and_end_with_a_newline() {
        let value = json!({"uuid": "u", "status": "PENDING", "result": null});
        assert_eq!(
            body(&value),
            "{\"result\":null,\"status\":\"PENDING\",\"uuid\":\"u\"}\n"
        );
        let nested = json!({"b": [1, {"d": true, "c": false}], "a": {}});
        assert_eq!(
            compact(&nested),
            "{\"a\":{},\"b\":[1,{\"c\":false,\"d\":true}]}"
        );
    }

    #[test]
    fn strings_are_escaped_as_python_ensure_ascii() {
        let mut out = String::new();
        write_string(&mut out, "é \"q\" \\ / \n\t\u{1}\u{7f} 😀");
        assert_eq!(
            out,
            "\"\\u00e9 \\\"q\\\" \\\\ / \\n\\t\\u0001\\u007f \\ud83d\\ude00\""
        );
    }

    #[test]
    fn floats_are_written_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value:e}");
        }
    }

    #[test]
    fn integers_keep_their_digits() {
        assert_eq!(
            compact(&json!([u64::MAX, i64::MIN, 0])),
            "[18446744073709551615,-9223372036854775808,0]"
        );
    }

    proptest::proptest! {
        #[test]
        fn python_float_repr_round_trips(value in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL) {
            let text = python_float_repr(value);
            proptest::prop_assert_eq!(text.parse::<f64>().unwrap(), value);
        }

        #[test]
        fn every_string_becomes_ascii_json_that_reads_back(text in ".*") {
            let mut out = String::new();
            write_string(&mut out, &text);
            proptest::prop_assert!(out.bytes().all(|b| (b' '..=b'~').contains(&b)));
            let back: String = serde_json::from_str(&out).unwrap();
            proptest::prop_assert_eq!(back, text);
        }
    }
}
