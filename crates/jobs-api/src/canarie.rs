//! The CANARIE registry's pages for each job service: `info` (JSON or a readable HTML page),
//! `stats`, and the `doc`, `releasenotes`, `support`, `source`, `tryme`, `licence`,
//! `provenance` and `home` pages, plus the gateway-wide `/info`.
//!
//! A page's config value says what it is, as in the original: a value starting with `http` is
//! a URL (302 to it); a readable file is that page (read at start); `"body,status"` (one
//! comma) answers that body with that status (`",204"`: CANARIE's "no source"). An unset page
//! answers 404.

use std::path::Path;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::negotiate::Format;
use crate::vesta::text_response;
use crate::{html, pyjson};

/// The page names CANARIE requires, in the order pages are listed.
pub const PAGES: &[&str] = &[
    "doc",
    "releasenotes",
    "support",
    "source",
    "tryme",
    "licence",
    "provenance",
];

/// The CANARIE description of one service (`[jobs.service.canarie]` plus the service's own
/// keys), as the HTTP layer needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceDescription {
    /// Route keyword: `/<route>/annotate`.
    pub route: String,
    pub celery_task_name: String,
    pub celery_queue_name: String,
    /// The service's version (second half of CANARIE's `version`).
    pub version: String,
    pub noparams: bool,
    pub name: String,
    pub synopsis: String,
    pub institution: String,
    pub release_time: String,
    pub support_email: String,
    pub category: String,
    pub research_subject: String,
    pub tags: Vec<String>,
    /// Page name (`doc`, ..., `home`) -> its config value.
    pub pages: Vec<(String, String)>,
}

impl ServiceDescription {
    /// The config value of page `name` (empty when unset).
    pub fn page(&self, name: &str) -> &str {
        self.pages
            .iter()
            .find(|(page, _)| page == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or("")
    }

    /// CANARIE `info` as JSON: `version` is `<api version>_<service version>`.
    pub fn info(&self, api_version: &str, active_workers: usize) -> Value {
        json!({
            "name": self.name,
            "synopsis": self.synopsis,
            "version": format!("{api_version}_{}", self.version),
            "institution": self.institution,
            "releaseTime": self.release_time,
            "supportEmail": self.support_email,
            "category": self.category,
            "researchSubject": self.research_subject,
            "tags": self.tags,
            "activeWorkers": active_workers,
        })
    }

    /// The service as `/info` lists it: the original's config keys (never the command).
    pub fn summary(&self) -> Value {
        let mut entry = Map::new();
        let text = |value: &str| Value::String(value.to_string());
        entry.insert("route_keyword".into(), text(&self.route));
        entry.insert("celery_task_name".into(), text(&self.celery_task_name));
        entry.insert("celery_queue_name".into(), text(&self.celery_queue_name));
        entry.insert("version".into(), text(&self.version));
        entry.insert("noparams".into(), Value::Bool(self.noparams));
        entry.insert("name".into(), text(&self.name));
        entry.insert("synopsis".into(), text(&self.synopsis));
        entry.insert("institution".into(), text(&self.institution));
        entry.insert("releaseTime".into(), text(&self.release_time));
        entry.insert("supportEmail".into(), text(&self.support_email));
        entry.insert("category".into(), text(&self.category));
        entry.insert("researchSubject".into(), text(&self.research_subject));
        entry.insert("tags".into(), text(&self.tags.join(",")));
        for (page, value) in &self.pages {
            entry.insert(page.clone(), text(value));
        }
        Value::Object(entry)
    }
}

/// `info` in `format`.
pub fn info_response(info: &Value, format: Format) -> Response {
    match format {
        Format::Json => text_response(StatusCode::OK, Format::Json, pyjson::body(info)),
        _ => {
            let title = info["name"].as_str().unwrap_or("Service").to_string() + " : Info";
            text_response(StatusCode::OK, Format::Html, fields_page(&title, info))
        }
    }
}

/// `stats` (`{"invocations":N,"lastReset":"..."}`) in `format`.
pub fn stats_response(invocations: u64, last_reset: OffsetDateTime, format: Format) -> Response {
    let stats = json!({"invocations": invocations, "lastReset": canarie_time(last_reset)});
    match format {
        Format::Json => text_response(StatusCode::OK, Format::Json, pyjson::body(&stats)),
        _ => text_response(StatusCode::OK, Format::Html, fields_page("Stats", &stats)),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC, CANARIE's time format.
pub fn canarie_time(at: OffsetDateTime) -> String {
    format!("{}Z", crate::submission::request_time(at))
}

/// An HTML page listing an object's fields (lists joined by commas).
fn fields_page(title: &str, fields: &Value) -> String {
    let rows: Vec<(String, String)> = fields
        .as_object()
        .map(|map| {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            keys.into_iter()
                .map(|key| (key.clone(), display(&map[key])))
                .collect()
        })
        .unwrap_or_default();
    let borrowed: Vec<(&str, &str)> = rows.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    html::page(title, &borrowed)
}

fn display(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join(", "),
        Value::Null => String::new(),
        other => pyjson::compact(other),
    }
}

/// What a page's config value says to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageAnswer {
    /// 302 to this URL.
    Redirect(String),
    /// 200 with this HTML (a file's contents).
    Html(String),
    /// This body and status.
    Fixed { body: String, status: StatusCode },
    /// The page is not configured: 404.
    Unset,
}

/// Why a page's config value is not usable (reported at start, naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("{value:?} is not a URL, a readable file or \"body,status\"")]
    Unusable { value: String },
    #[error("{value:?}: the status after the comma must be 100-599")]
    BadStatus { value: String },
}

impl PageAnswer {
    /// Reads a page's config value; files are read now, relative to `base` (the config
    /// file's directory). Blocking: call at start.
    pub fn from_config(value: &str, base: &Path) -> Result<PageAnswer, PageError> {
        if value.is_empty() {
            return Ok(PageAnswer::Unset);
        }
        if value.starts_with("http") {
            return Ok(PageAnswer::Redirect(value.to_string()));
        }
        // The original allowed `file.html#anchor` and served the file.
        let file = value.rsplit_once('#').map_or(value, |(file, _)| file);
        let path = base.join(file);
        if path.is_file() {
            return std::fs::read_to_string(&path)
                .map(PageAnswer::Html)
                .map_err(|_| PageError::Unusable {
                    value: value.to_string(),
                });
        }
        let parts: Vec<&str> = value.split(',').collect();
        if let [body, status] = parts.as_slice() {
            let status = status
                .trim()
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| PageError::BadStatus {
                    value: value.to_string(),
                })?;
            return Ok(PageAnswer::Fixed {
                body: body.to_string(),
                status,
            });
        }
        Err(PageError::Unusable {
            value: value.to_string(),
        })
    }

    /// The answer (`None` for an unset page: the caller answers its 404).
    pub fn response(&self) -> Option<Response> {
        let response = match self {
            PageAnswer::Redirect(url) => {
                let mut response = text_response(StatusCode::FOUND, Format::Html, String::new());
                let location = HeaderValue::from_str(url).ok()?;
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            PageAnswer::Html(text) => text_response(StatusCode::OK, Format::Html, text.clone()),
            PageAnswer::Fixed { body, status } => {
                text_response(*status, Format::Html, body.clone())
            }
            PageAnswer::Unset => return None,
        };
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> ServiceDescription {
        ServiceDescription {
            route: "transcoder".into(),
            version: "0.2.7".into(),
            name: "Transcoder".into(),
            tags: vec!["audio".into(), "video".into()],
            pages: vec![("doc".into(), "https://example.org/doc".into())],
            ..ServiceDescription::default()
        }
    }

    #[test]
    fn info_json_has_every_canarie_field_sorted() {
        let info = description().info("1.9.3", 2);
        assert_eq!(
            pyjson::body(&info),
            "{\"activeWorkers\":2,\"category\":\"\",\"institution\":\"\",\"name\":\"Transcoder\",\
             \"releaseTime\":\"\",\"researchSubject\":\"\",\"supportEmail\":\"\",\"synopsis\":\"\",\
             \"tags\":[\"audio\",\"video\"],\"version\":\"1.9.3_0.2.7\"}\n"
        );
        let summary = description().summary();
        assert_eq!(summary["tags"], "audio,video");
        assert_eq!(summary["doc"], "https://example.org/doc");
    }

    #[test]
    fn page_values_are_urls_files_or_body_and_status() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("doc.html"), "<p>doc</p>").unwrap();
        let base = temp.path();
        assert_eq!(
            PageAnswer::from_config("http://x/doc", base),
            Ok(PageAnswer::Redirect("http://x/doc".into()))
        );
        assert_eq!(
            PageAnswer::from_config("doc.html#top", base),
            Ok(PageAnswer::Html("<p>doc</p>".into()))
        );
        assert_eq!(
            PageAnswer::from_config(",204", base),
            Ok(PageAnswer::Fixed {
                body: String::new(),
                status: StatusCode::NO_CONTENT
            })
        );
        assert_eq!(
            PageAnswer::from_config("Not available,404", base),
            Ok(PageAnswer::Fixed {
                body: "Not available".into(),
                status: StatusCode::NOT_FOUND
            })
        );
        assert_eq!(PageAnswer::from_config("", base), Ok(PageAnswer::Unset));
        assert!(matches!(
            PageAnswer::from_config("missing.html", base),
            Err(PageError::Unusable { .. })
        ));
        assert!(matches!(
            PageAnswer::from_config("x,abc", base),
            Err(PageError::BadStatus { .. })
        ));
        let redirect = PageAnswer::Redirect("http://x/doc".into())
            .response()
            .unwrap();
        assert_eq!(redirect.status(), 302);
        assert_eq!(redirect.headers()[header::LOCATION], "http://x/doc");
    }

    #[test]
    fn stats_time_is_canarie_format() {
        let at = OffsetDateTime::from_unix_timestamp(1_553_074_657).unwrap();
        assert_eq!(canarie_time(at), "2019-03-20T09:37:37Z");
    }
}
