//! The task message built from a submission (`POST /<svc>/annotate`, `/process`, and
//! `POST /jobs/<svc>`): the one positional argument every worker of the original received.
//!
//! ```json
//! {"request_time": "2019-03-20T09:37:37",
//!  "service": {"type": "<celery_task_name>",
//!              "document": {"url": "<doc_url or storage URL>", "credentials": null},
//!              "misc": {...}},
//!  "annotation_service": {"url": "<annotations URL or null>", "uuid": null, "credentials": null}}
//! ```
//!
//! Rules, as VestaRestPackage's `submit_task` applied them:
//! - request values are the query and form fields, query first, first value per key;
//! - `document.url` is `get_doc_url` with the path's `storage_doc_id`, else the `doc_url`
//!   value; required unless the service has `noparams`; it must have a scheme, a host and a
//!   path (Python's `urlparse` view of it);
//! - `misc` is built in this order, later steps overwriting earlier ones: the JSON body
//!   (process only), for each `storage_<x>_id` value `<x>_url` = `get_doc_url` with it (a
//!   `<x>_url` value given too wins), each `<x>_url` value as given (validated like
//!   `doc_url`), every other value verbatim (`doc_url` and `ann_doc_id` included), then
//!   `upload_url` = `post_doc_url`;
//! - `annotation_service.url` is `post_annotations_url` with `{ann_doc_id}` when `ann_doc_id`
//!   is given.
//!
//! `request_time` is written as the original wrote it (`%Y-%m-%dT%H:%M:%S`), in UTC (the
//! original used the gateway's local time).

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::vesta::ApiError;

/// The storage URL templates of `[jobs.storage]` (the original's MSS and annotation store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageUrls {
    /// `{storage_doc_id}` is replaced by the document's id.
    pub get_doc_url: String,
    /// Given to workers as `misc.upload_url`.
    pub post_doc_url: String,
    /// `{ann_doc_id}` is replaced by the annotation document's id.
    pub post_annotations_url: String,
}

impl Default for StorageUrls {
    /// The original's defaults.
    fn default() -> Self {
        StorageUrls {
            get_doc_url: "http://localhost:5002/get/{storage_doc_id}".into(),
            post_doc_url: "http://localhost:5002/add".into(),
            post_annotations_url:
                "http://localhost:5001/document/{ann_doc_id}/annotations?storageType=2".into(),
        }
    }
}

/// What the message needs to know about the service it goes to.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub celery_task_name: &'a str,
    /// The service takes no document (`doc_url` is optional).
    pub noparams: bool,
    pub storage: &'a StorageUrls,
}

/// Which route the submission came by (named in a missing-parameter error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Annotate,
    Process,
    /// `POST /jobs/<svc>`
    Jobs,
}

impl Route {
    fn uri(self) -> &'static str {
        match self {
            Route::Annotate => "/annotate",
            Route::Process => "/process",
            Route::Jobs => "/jobs",
        }
    }
}

/// Request values: the query's, then the form's, first value per key, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestValues(Vec<(String, String)>);

impl RequestValues {
    /// The values of an `application/x-www-form-urlencoded` query and body.
    pub fn from_query_and_form(query: Option<&str>, form: Option<&[u8]>) -> RequestValues {
        let mut values = RequestValues::default();
        if let Some(query) = query {
            values.extend(form_urlencoded::parse(query.as_bytes()));
        }
        if let Some(form) = form {
            values.extend(form_urlencoded::parse(form));
        }
        values
    }

    /// Adds each pair whose key is not there yet.
    pub fn extend<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) {
        for (key, value) in pairs {
            self.push(key.as_ref(), value.as_ref());
        }
    }

    /// Adds `key` = `value` unless `key` has a value already.
    pub fn push(&mut self, key: &str, value: &str) {
        if self.get(key).is_none() {
            self.0.push((key.to_string(), value.to_string()));
        }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// Every key and its first value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// One submission, before it becomes a message.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    pub route: Route,
    /// The `<storage_doc_id>` path segment.
    pub storage_doc_id: Option<&'a str>,
    pub values: &'a RequestValues,
    /// The JSON body (process and the modern API): the base of `misc`.
    pub body: Option<Map<String, Value>>,
}

/// The task message for `submission` to `target`, or the error the client gets.
pub fn build_message(
    target: &Target<'_>,
    submission: Submission<'_>,
    now: OffsetDateTime,
) -> Result<Value, ApiError> {
    let document_url = document_url(target, &submission)?;
    let misc = misc(target, &submission)?;
    let annotations_url = submission.values.get("ann_doc_id").map(|id| {
        target
            .storage
            .post_annotations_url
            .replace("{ann_doc_id}", id)
    });
    Ok(json!({
        "request_time": request_time(now),
        "service": {
            "type": target.celery_task_name,
            "document": {"url": document_url, "credentials": null},
            "misc": misc,
        },
        "annotation_service": {"url": annotations_url, "uuid": null, "credentials": null},
    }))
}

/// `%Y-%m-%dT%H:%M:%S`, as the original's `request_message_factory` wrote it.
pub fn request_time(now: OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn document_url(target: &Target<'_>, submission: &Submission<'_>) -> Result<Value, ApiError> {
    let url = match submission.storage_doc_id {
        Some(id) => storage_url(target.storage, id),
        None => match submission.values.get("doc_url") {
            Some(url) => url.to_string(),
            None if target.noparams => return Ok(Value::Null),
            None => {
                return Err(ApiError::MissingParameter {
                    method: "POST",
                    uri: submission.route.uri().to_string(),
                    parameter: "doc_url".into(),
                })
            }
        },
    };
    validate_url(&url)?;
    Ok(Value::String(url))
}

fn storage_url(storage: &StorageUrls, id: &str) -> String {
    storage.get_doc_url.replace("{storage_doc_id}", id)
}

fn is_storage_key(key: &str) -> bool {
    key.starts_with("storage_") && key.ends_with("_id")
}

fn is_url_key(key: &str) -> bool {
    key.ends_with("_url") && key != "doc_url"
}

fn misc(target: &Target<'_>, submission: &Submission<'_>) -> Result<Map<String, Value>, ApiError> {
    let values = submission.values;
    let mut misc = submission.body.clone().unwrap_or_default();
    for (key, id) in values.iter().filter(|(key, _)| is_storage_key(key)) {
        // `storage_txt_id` names a `txt_url` (the second word, as the original split it).
        let kind = key.split('_').nth(1).unwrap_or_default();
        let url_key = format!("{kind}_url");
        let url = match values.get(&url_key) {
            Some(direct) => direct.to_string(),
            None => storage_url(target.storage, id),
        };
        validate_url(&url)?;
        misc.insert(url_key, Value::String(url));
    }
    for (key, url) in values.iter().filter(|(key, _)| is_url_key(key)) {
        validate_url(url)?;
        misc.insert(key.to_string(), Value::String(url.to_string()));
    }
    for (key, value) in values
        .iter()
        .filter(|(key, _)| !is_storage_key(key) && !is_url_key(key))
    {
        misc.insert(key.to_string(), Value::String(value.to_string()));
    }
    misc.insert(
        "upload_url".into(),
        Value::String(target.storage.post_doc_url.clone()),
    );
    Ok(misc)
}

/// A document URL must have a scheme, a host and a path, as Python's `urlparse` splits it.
pub fn validate_url(url: &str) -> Result<(), ApiError> {
    if python_urlparse_has_scheme_host_and_path(url) {
        Ok(())
    } else {
        Err(ApiError::InvalidDocumentUrl(url.to_string()))
    }
}

fn python_urlparse_has_scheme_host_and_path(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let Some(after_slashes) = rest.strip_prefix("//") else {
        return false;
    };
    if !scheme_ok {
        return false;
    }
    let host_end = after_slashes
        .find(['/', '?', '#'])
        .unwrap_or(after_slashes.len());
    let (host, tail) = after_slashes.split_at(host_end);
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    !host.is_empty() && path_end > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_553_074_657).unwrap()
    }

    fn build(
        noparams: bool,
        route: Route,
        storage_doc_id: Option<&str>,
        values: &RequestValues,
        body: Option<Map<String, Value>>,
    ) -> Result<Value, ApiError> {
        let storage = StorageUrls::default();
        let target = Target {
            celery_task_name: "transcoder",
            noparams,
            storage: &storage,
        };
        let submission = Submission {
            route,
            storage_doc_id,
            values,
            body,
        };
        build_message(&target, submission, at())
    }

    #[test]
    fn a_doc_url_submission_gives_the_original_message() {
        let values = RequestValues::from_query_and_form(
            Some("ann_doc_id=A1&lang=fr"),
            Some(b"doc_url=http%3A%2F%2Fh%2Fa.wav&lang=en"),
        );
        let message = build(false, Route::Annotate, None, &values, None).unwrap();
        assert_eq!(
            message,
            json!({
                "request_time": "2019-03-20T09:37:37",
                "service": {
                    "type": "transcoder",
                    "document": {"url": "http://h/a.wav", "credentials": null},
                    "misc": {"ann_doc_id": "A1", "lang": "fr", "doc_url": "http://h/a.wav",
                             "upload_url": "http://localhost:5002/add"},
                },
                "annotation_service": {
                    "url": "http://localhost:5001/document/A1/annotations?storageType=2",
                    "uuid": null, "credentials": null},
            })
        );
    }

    #[test]
    fn storage_ids_resolve_through_get_doc_url_and_direct_urls_win() {
        let values = RequestValues::from_query_and_form(
            Some("storage_txt_id=T&storage_img_id=I&img_url=http://x/i.png&other_url=ftp://f/p"),
            None,
        );
        let message = build(false, Route::Process, Some("D9"), &values, None).unwrap();
        assert_eq!(
            message["service"]["document"]["url"],
            "http://localhost:5002/get/D9"
        );
        let misc = &message["service"]["misc"];
        assert_eq!(misc["txt_url"], "http://localhost:5002/get/T");
        assert_eq!(misc["img_url"], "http://x/i.png");
        assert_eq!(misc["other_url"], "ftp://f/p");
        assert!(
            misc.get("storage_txt_id").is_none(),
            "storage ids become URLs: {misc}"
        );
        assert_eq!(message["annotation_service"]["url"], Value::Null);
    }

    #[test]
    fn the_json_body_is_the_base_of_misc_and_fields_overwrite_it() {
        let values = RequestValues::from_query_and_form(Some("k=query"), None);
        let body = json!({"k": "body", "n": 3, "upload_url": "mine"});
        let message = build(
            true,
            Route::Process,
            None,
            &values,
            body.as_object().cloned(),
        )
        .unwrap();
        let misc = &message["service"]["misc"];
        assert_eq!(misc["k"], "query");
        assert_eq!(misc["n"], 3);
        assert_eq!(
            misc["upload_url"], "http://localhost:5002/add",
            "upload_url is always the store's"
        );
        assert_eq!(
            message["service"]["document"]["url"],
            Value::Null,
            "noparams: no document"
        );
    }

    #[test]
    fn a_missing_or_invalid_document_url_is_refused() {
        let none = RequestValues::default();
        let error = build(false, Route::Annotate, None, &none, None).unwrap_err();
        assert_eq!(error.vesta_code(), 206);
        assert!(error.to_string().contains("\"/annotate\""), "{error}");
        for bad in [
            "http://host",
            "host/path",
            "/path",
            "http:///path",
            "1http://h/p",
            "http:/h/p",
        ] {
            let values =
                RequestValues::from_query_and_form(None, Some(format!("doc_url={bad}").as_bytes()));
            let error = build(false, Route::Annotate, None, &values, None).unwrap_err();
            assert_eq!(error, ApiError::InvalidDocumentUrl(bad.into()));
        }
        let values = RequestValues::from_query_and_form(Some("doc_url=http://h/&x_url=nope"), None);
        assert_eq!(
            build(false, Route::Annotate, None, &values, None)
                .unwrap_err()
                .vesta_code(),
            207
        );
    }

    #[test]
    fn urls_are_judged_as_python_urlparse_splits_them() {
        for good in [
            "http://h/",
            "https://h:8443/a?b#c",
            "s3+x://bucket/key",
            "file://host/x",
        ] {
            assert!(validate_url(good).is_ok(), "{good}");
        }
        for bad in ["", "http://h", "http://h?x=/y", "mailto:a@b", "://h/p"] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn building_never_panics_on_arbitrary_fields(
            fields in proptest::collection::vec((".{0,12}", ".{0,24}"), 0..8),
            storage_doc_id in proptest::option::of(".{0,12}"),
            noparams: bool,
        ) {
            let mut values = RequestValues::default();
            values.extend(fields);
            let result = build(noparams, Route::Process, storage_doc_id.as_deref(), &values, None);
            if let Ok(message) = result {
                proptest::prop_assert!(message["service"]["misc"]["upload_url"].is_string());
            }
        }
    }
}
