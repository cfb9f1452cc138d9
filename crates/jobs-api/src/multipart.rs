//! `multipart/form-data` bodies (submissions as the original's Flask `request.values` read
//! them, and temporary file uploads), parsed with `multer` from a body the gateway already
//! bounded (`limits.max_body_bytes`). A part with a file name is a file; any other part is a
//! text field, which must be UTF-8. A malformed body (no boundary, truncated, a part without
//! a name) is a 400 saying what was wrong.

use std::convert::Infallible;

use bytes::Bytes;

use crate::vesta::ApiError;

/// One part of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Field {
        name: String,
        value: String,
    },
    File {
        name: String,
        filename: String,
        content_type: Option<String>,
        data: Bytes,
    },
}

/// Whether `content_type` is `multipart/form-data` (any parameters).
pub fn is_multipart(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("multipart/form-data"))
}

fn malformed(what: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("The multipart/form-data body is malformed: {what}"))
}

/// Every part of `body`, in order. A file part whose file name and content are both empty
/// (a browser's form with no file chosen) is left out.
pub async fn parse(content_type: &str, body: Bytes) -> Result<Vec<Part>, ApiError> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::BadRequest(format!(
            "The Content-Type {content_type:?} has no boundary parameter \
             (multipart/form-data; boundary=...)"
        ))
    })?;
    let stream = futures::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let Some(name) = field.name().map(str::to_string) else {
            return Err(malformed(
                "a part has no name (Content-Disposition: form-data; name=\"...\")",
            ));
        };
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(ToString::to_string);
        let data = field
            .bytes()
            .await
            .map_err(|e| malformed(format!("the part {name:?}: {e}")))?;
        match filename {
            Some(filename) if filename.is_empty() && data.is_empty() => {}
            Some(filename) => parts.push(Part::File {
                name,
                filename,
                content_type,
                data,
            }),
            None => {
                let value = String::from_utf8(data.to_vec()).map_err(|_| {
                    ApiError::BadRequest(format!(
                        "The form field {name:?} is not UTF-8 text (send a file with a \
                         filename to upload bytes)"
                    ))
                })?;
                parts.push(Part::Field { name, value });
            }
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE: &str = "multipart/form-data; boundary=XyZ";

    fn body(text: &str) -> Bytes {
        Bytes::from(text.replace('\n', "\r\n"))
    }

    #[tokio::test]
    async fn fields_and_files_in_order() {
        let text = "--XyZ\nContent-Disposition: form-data; name=\"doc_url\"\n\nhttp://h/a\n\
                    --XyZ\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.wav\"\n\
                    Content-Type: audio/wav\n\nRIFF\n\
                    --XyZ\nContent-Disposition: form-data; name=\"none\"; filename=\"\"\n\n\n\
                    --XyZ--\n";
        let parts = parse(TYPE, body(text)).await.unwrap();
        assert_eq!(
            parts,
            vec![
                Part::Field {
                    name: "doc_url".into(),
                    value: "http://h/a".into()
                },
                Part::File {
                    name: "doc".into(),
                    filename: "a.wav".into(),
                    content_type: Some("audio/wav".into()),
                    data: Bytes::from_static(b"RIFF"),
                },
            ]
        );
    }

    #[tokio::test]
    async fn malformed_bodies_say_what_is_wrong() {
        let no_boundary = parse("multipart/form-data", Bytes::new()).await;
        let Err(ApiError::BadRequest(text)) = no_boundary else {
            panic!("{no_boundary:?}")
        };
        assert!(text.contains("no boundary"), "{text}");
        let truncated = "--XyZ\nContent-Disposition: form-data; name=\"a\"\n\nvalue";
        let Err(ApiError::BadRequest(text)) = parse(TYPE, body(truncated)).await else {
            panic!("truncated body accepted")
        };
        assert!(text.contains("malformed"), "{text}");
        let nameless = "--XyZ\nContent-Disposition: form-data\n\nv\n--XyZ--\n";
        let Err(ApiError::BadRequest(text)) = parse(TYPE, body(nameless)).await else {
            panic!("nameless part accepted")
        };
        assert!(text.contains("no name"), "{text}");
        let binary =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n\xff\xfe\r\n--XyZ--\r\n";
        let Err(ApiError::BadRequest(text)) = parse(TYPE, Bytes::from_static(binary)).await else {
            panic!("binary field accepted")
        };
        assert!(text.contains("\"b\""), "{text}");
    }

    #[test]
    fn only_form_data_is_multipart() {
        assert!(is_multipart("multipart/form-data; boundary=a"));
        assert!(is_multipart("Multipart/Form-Data"));
        assert!(!is_multipart("multipart/mixed; boundary=a"));
        assert!(!is_multipart("application/x-www-form-urlencoded"));
    }
}
