//! Probes behind `portico check`: end-to-end checks of a running Portico, the watchdog that
//! cron or a systemd timer runs. `/healthz` first, then the probe of each service the
//! listener says it mounts. Which probe belongs to which service is the binary's table of
//! services; this crate provides the probes ([`messages_probe`], [`region_probe`],
//! [`fib_probe`]).

mod fib;
mod messages;
mod region;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One service's end-to-end probe: pushes a line per thing checked to `done`.
pub type Probe = for<'a> fn(
    &'a Target,
    &'a mut Vec<String>,
) -> Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send + 'a>>;

/// The messages probe: the official test's sequence (404, POST/GET `foo` and `bar`).
pub fn messages_probe<'a>(
    target: &'a Target,
    done: &'a mut Vec<String>,
) -> Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send + 'a>> {
    Box::pin(messages::probe(target, done))
}

/// The region probe: `/regionInfo` answers XML with servers.
pub fn region_probe<'a>(
    target: &'a Target,
    done: &'a mut Vec<String>,
) -> Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send + 'a>> {
    Box::pin(region::probe(target, done))
}

/// The fib probe: `/fib/10` byte for byte.
pub fn fib_probe<'a>(
    target: &'a Target,
    done: &'a mut Vec<String>,
) -> Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send + 'a>> {
    Box::pin(fib::probe(target, done))
}

/// What a probe talks to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of one listener, e.g. `https://localhost:8443`.
    pub base: reqwest::Url,
    /// HTTP client (trusting the `--cacert` when given).
    pub client: reqwest::Client,
    /// Region to ask for in the region probe (`--region-hint`).
    pub region_hint: Option<String>,
}

/// Why a check failed. Each prints its cause and exposes none as `source()`, so a chain
/// printed with `{:#}` names it once.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// reqwest's own message is generic ("error sending request"); the reason (refused, timed
    /// out, certificate unknown) is further down its chain, so the whole chain is printed.
    #[error("{what}: request to {url} failed: {}", chain(.error))]
    Request {
        what: String,
        url: String,
        error: reqwest::Error,
    },
    #[error("{what}: {problem}")]
    Unexpected { what: String, problem: String },
    #[error("reading CA certificate {path}: {problem}")]
    CaCert { path: String, problem: String },
}

/// `error: cause: cause`, skipping a cause whose text its parent already ends with.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Builds a client with a timeout that trusts only `cacert` (PEM) when given, else the
/// system's roots are not available either: a Portico with a self-signed certificate needs
/// `--cacert`.
pub fn client(cacert_pem: Option<&[u8]>, timeout: Duration) -> Result<reqwest::Client, CheckError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .tls_built_in_root_certs(false)
        .use_rustls_tls();
    if let Some(pem) = cacert_pem {
        let cert = reqwest::Certificate::from_pem(pem).map_err(|e| CheckError::CaCert {
            path: "--cacert".into(),
            problem: e.to_string(),
        })?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| CheckError::CaCert {
        path: "--cacert".into(),
        problem: e.to_string(),
    })
}

/// Runs `/healthz` and then the probe (from `probes`, by service name) of every service the
/// listener mounts, pushing one line per thing checked to `done` (so what passed before a
/// failure can be shown).
pub async fn run(
    target: &Target,
    probes: &[(&str, Probe)],
    done: &mut Vec<String>,
) -> Result<(), CheckError> {
    let services = healthz(target, done).await?;
    for service in &services {
        if let Some((_, probe)) = probes.iter().find(|(name, _)| name == service) {
            probe(target, done).await?;
        }
    }
    Ok(())
}

/// `GET /healthz`: expects 200 and a JSON body `{"status":"ok","services":[...]}`; returns the
/// services mounted on that listener.
async fn healthz(target: &Target, done: &mut Vec<String>) -> Result<Vec<String>, CheckError> {
    let what = "healthz";
    let url = url(target, "/healthz");
    let (status, body) = send_text(what, &url, target.client.get(&url)).await?;
    if status != reqwest::StatusCode::OK {
        return Err(unexpected(what, format!("{url} answered {status}: {body}")));
    }
    let json: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| unexpected(what, format!("{url} answered non-JSON ({e}): {body}")))?;
    let services: Vec<String> = json["services"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    done.push(format!("{url} healthy, services: {}", join(&services)));
    Ok(services)
}

fn join(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// `base` + `path`.
pub(crate) fn url(target: &Target, path: &str) -> String {
    format!("{}{}", target.base.as_str().trim_end_matches('/'), path)
}

/// Sends a request and reads the whole answer as text, naming the check and URL when either
/// fails.
pub(crate) async fn send_text(
    what: &str,
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, String), CheckError> {
    let response = send(what, url, request).await?;
    let status = response.status();
    let body = response.text().await.map_err(|error| CheckError::Request {
        what: what.into(),
        url: url.into(),
        error: error.without_url(),
    })?;
    Ok((status, body))
}

/// Sends a request, naming the check and URL when it fails.
pub(crate) async fn send(
    what: &str,
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, CheckError> {
    request.send().await.map_err(|error| CheckError::Request {
        what: what.into(),
        url: url.into(),
        error: error.without_url(),
    })
}

pub(crate) fn unexpected(what: &str, problem: String) -> CheckError {
    CheckError::Unexpected {
        what: what.into(),
        problem,
    }
}
