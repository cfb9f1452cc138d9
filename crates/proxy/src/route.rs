//! `/{service}/{rest}?{query}` → the service's name and the instance's `/{rest}?{query}`.
//!
//! The path is split as it arrived, not decoded: `%2F` in `rest` reaches the instance as
//! `%2F`, as it would had the client called the instance directly. `/{service}` alone and
//! `/{service}/` both go to the instance's `/`.

use http::uri::PathAndQuery;
use http::Uri;

/// Where a proxied request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// The first path segment: the catalog name asked for (not checked yet).
    pub service: &'a str,
    /// What the instance is asked for: `/{rest}?{query}`.
    pub path: PathAndQuery,
}

/// The target of `uri`; `None` when it has no first segment (`/`, `//x`).
pub(crate) fn target(uri: &Uri) -> Option<Target<'_>> {
    let path = uri.path().strip_prefix('/')?;
    let (service, rest) = match path.find('/') {
        Some(slash) => (&path[..slash], &path[slash..]),
        None => (path, "/"),
    };
    if service.is_empty() {
        return None;
    }
    let path = match uri.query() {
        None if rest == "/" => PathAndQuery::from_static("/"),
        None => {
            PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(rest.as_bytes())).ok()?
        }
        Some(query) => {
            let mut text = String::with_capacity(rest.len() + 1 + query.len());
            text.push_str(rest);
            text.push('?');
            text.push_str(query);
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(text)).ok()?
        }
    };
    Some(Target { service, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(uri: &str) -> Option<(String, String)> {
        let uri: Uri = uri.parse().unwrap();
        target(&uri).map(|t| (t.service.to_string(), t.path.to_string()))
    }

    #[test]
    fn the_first_segment_names_the_service_and_the_rest_goes_to_the_instance() {
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(split("/hello/hello"), pair("hello", "/hello"));
        assert_eq!(split("/hello/a/b/?x=1&y"), pair("hello", "/a/b/?x=1&y"));
        assert_eq!(split("/hello"), pair("hello", "/"));
        assert_eq!(split("/hello/"), pair("hello", "/"));
        assert_eq!(split("/hello?q=2"), pair("hello", "/?q=2"));
        assert_eq!(split("/hello/%2Fx%20y"), pair("hello", "/%2Fx%20y"));
        // HTTP/2 requests carry an absolute URI: only its path and query count.
        assert_eq!(
            split("https://example.com:8443/api-2/v1?k=v"),
            pair("api-2", "/v1?k=v")
        );
    }

    #[test]
    fn a_path_without_a_first_segment_has_no_target() {
        assert_eq!(split("/"), None);
        assert_eq!(split("//x"), None);
    }
}
