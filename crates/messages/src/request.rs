//! What a `POST /messages` request must look like: its Content-Type and its JSON body.
//! Pure functions over headers and bytes, so they are tested without a server.

use crate::response::ApiError;

/// Checks that the Content-Type is JSON: `application/json` or any `application/*+json`,
/// parameters allowed, but a `charset` other than UTF-8 is refused (JSON is UTF-8).
pub fn check_content_type(value: Option<&http::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type; send the body as application/json".into(),
        ));
    };
    let text = value.to_str().map_err(|_| {
        ApiError::UnsupportedMediaType(
            "Content-Type is not readable text; send application/json".into(),
        )
    })?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !is_json_type(&essence) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/json, got {text:?}"
        )));
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.eq_ignore_ascii_case("utf-8")
            && !value.eq_ignore_ascii_case("utf8")
        {
            return Err(ApiError::UnsupportedMediaType(format!(
                "JSON must be UTF-8, got charset {value:?}"
            )));
        }
    }
    Ok(())
}

fn is_json_type(essence: &str) -> bool {
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .and_then(|sub| sub.strip_suffix("+json"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// The `message` of a body `{"message": "..."}`; other fields are ignored.
pub fn parse_message(body: &[u8]) -> Result<String, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(ApiError::BadRequest(format!(
            "request body must be a JSON object like {{\"message\": \"...\"}}, got {}",
            kind(&value)
        )));
    };
    match object.remove("message") {
        Some(serde_json::Value::String(message)) => Ok(message),
        Some(other) => Err(ApiError::BadRequest(format!(
            "field \"message\" must be a string, got {}",
            kind(&other)
        ))),
        None => Err(ApiError::BadRequest(
            "missing field \"message\" in the JSON object".into(),
        )),
    }
}

/// A JSON value's kind, for error texts.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn content_type(text: &str) -> Result<(), ApiError> {
        check_content_type(Some(
            &http::HeaderValue::from_str(text).expect("header value"),
        ))
    }

    fn error_text(result: Result<String, ApiError>) -> String {
        result.expect_err("should fail").to_string()
    }

    #[test]
    fn accepts_json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/merge-patch+json",
            "application/vnd.api+json; foo=bar",
        ] {
            assert!(content_type(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_other_content_types_naming_them() {
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonp",
            "application/+json",
            "text/json",
            "",
        ] {
            let error = content_type(bad).expect_err(bad);
            assert_eq!(error.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
        let missing = check_content_type(None).expect_err("missing");
        assert!(missing.to_string().contains("missing Content-Type"));
    }

    #[test]
    fn refuses_a_charset_other_than_utf8() {
        let error = content_type("application/json; charset=latin1").expect_err("latin1");
        assert!(error.to_string().contains("latin1"), "{error}");
    }

    #[test]
    fn parses_the_message_field_ignoring_others() {
        let message = parse_message(br#"{"message": "caf\u00e9", "extra": 1}"#);
        assert_eq!(message.expect("valid"), "café");
        assert_eq!(parse_message(br#"{"message":""}"#).expect("valid"), "");
    }

    #[test]
    fn names_what_is_wrong_with_the_body() {
        assert!(error_text(parse_message(b"{nope")).starts_with("request body is not valid JSON"));
        assert!(error_text(parse_message(b"")).starts_with("request body is not valid JSON"));
        assert!(error_text(parse_message(b"[1]")).contains("got an array"));
        assert!(error_text(parse_message(b"\"foo\"")).contains("got a string"));
        assert!(error_text(parse_message(b"{}")).contains("missing field \"message\""));
        let text = error_text(parse_message(br#"{"message": 5}"#));
        assert_eq!(text, "field \"message\" must be a string, got a number");
        assert!(error_text(parse_message(br#"{"message": null}"#)).contains("got null"));
    }

    proptest! {
        #[test]
        fn any_string_message_round_trips(message in "\\PC*") {
            let body = serde_json::to_vec(&serde_json::json!({ "message": message })).expect("encode");
            prop_assert_eq!(parse_message(&body).expect("valid body"), message);
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_message(&body);
        }

        #[test]
        fn content_type_matches_reference(essence in "[a-zA-Z+/.-]{0,30}", charset in proptest::option::of("[a-zA-Z0-9-]{1,8}")) {
            let text = match &charset {
                Some(c) => format!("{essence}; charset={c}"),
                None => essence.clone(),
            };
            let lower = essence.to_ascii_lowercase();
            let json = lower == "application/json"
                || (lower.starts_with("application/") && lower.ends_with("+json")
                    && lower.len() > "application/+json".len()
                    && !lower["application/".len()..].contains('/'));
            let utf8 = charset.as_deref().is_none_or(|c| c.eq_ignore_ascii_case("utf-8") || c.eq_ignore_ascii_case("utf8"));
            prop_assert_eq!(content_type(&text).is_ok(), json && utf8);
        }
    }
}
