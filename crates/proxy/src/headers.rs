//! Header rules of the proxy, both ways.
//!
//! - **Hop-by-hop headers are removed** (RFC 9110 §7.6.1): `Connection` and every header it
//!   names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
//!   `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`; each side's connection frames
//!   its own messages (hyper sets `Transfer-Encoding` or `Content-Length` from the body).
//!   `Expect` is answered by the gateway (`100 Continue` when the body is first read) and is
//!   not passed on either. A WebSocket handshake keeps `Connection: upgrade` and its
//!   `Upgrade` header, which are the point of it.
//! - **Requests** keep `Host` (an HTTP/2 request's `:authority` becomes `Host`, since
//!   instances speak HTTP/1.1); `X-Forwarded-For` gets the client's address appended;
//!   `X-Forwarded-Proto` (`http`/`https` as the client reached the listener),
//!   `X-Forwarded-Host` (the `Host` the client sent) and `X-Request-Id` (the gateway's id of
//!   the request) are set, replacing what the client sent.
//! - **Responses** pass through as the instance sent them, hop-by-hop headers aside.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `name` is a hop-by-hop header other than `Connection` and the ones it names.
pub(crate) fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    // Standard names compare as small enums: cheaper than hashing each into a lookup.
    name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The headers a request's `Connection` header names (lowercase; usually none).
pub(crate) fn connection_named(headers: &HeaderMap) -> Vec<String> {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in tokens(value) {
            if token != "keep-alive" {
                named.push(token);
            }
        }
    }
    named
}

/// Whether a request header is hop-by-hop: `Connection`, a fixed one, or one `Connection`
/// names (`named`, from [`connection_named`]; `keep-alive` is left out of it, being fixed).
pub(crate) fn is_hop_by_hop(name: &HeaderName, named: &[String]) -> bool {
    name == header::CONNECTION
        || is_fixed_hop_by_hop(name)
        || (!named.is_empty() && named.iter().any(|n| n == name.as_str()))
}

/// Whether `name` is a forwarding header the proxy always sets itself (or removes).
pub(crate) fn is_forwarding(name: &HeaderName) -> bool {
    name == X_FORWARDED_HOST || name == X_FORWARDED_PROTO
}

/// What the proxy knows of the client's request, for the forwarding headers.
#[derive(Debug, Clone)]
pub(crate) struct Client<'a> {
    pub ip: Option<IpAddr>,
    pub tls: bool,
    pub request_id: Option<&'a HeaderValue>,
    /// The request URI's authority (HTTP/2's `:authority`), used when there is no `Host`.
    pub authority: Option<&'a Authority>,
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Rewrites a request's headers in place for the instance (see the module doc). `upgrade`
/// keeps the WebSocket handshake's `Connection: upgrade` and `Upgrade`.
pub(crate) fn request_headers(headers: &mut HeaderMap, client: &Client<'_>, upgrade: bool) {
    let upgrade_to = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    remove_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    if let Some(protocol) = upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    if !headers.contains_key(header::HOST) {
        if let Some(host) = client
            .authority
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, host);
        }
    }
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    if let Some(ip) = client.ip {
        append_forwarded_for(headers, ip);
    }
    let proto = if client.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(id) = client.request_id {
        headers.insert(X_REQUEST_ID.clone(), id.clone());
    }
}

/// Removes a response's hop-by-hop headers; a `101 Switching Protocols` keeps
/// `Connection` and `Upgrade`.
pub(crate) fn response_headers(headers: &mut HeaderMap, switching: bool) {
    if switching {
        let connection = headers.remove(header::CONNECTION);
        let upgrade = headers.remove(header::UPGRADE);
        remove_hop_by_hop(headers);
        if let (Some(connection), Some(upgrade)) = (connection, upgrade) {
            headers.insert(header::CONNECTION, connection);
            headers.insert(header::UPGRADE, upgrade);
        }
    } else {
        remove_hop_by_hop(headers);
    }
}

/// Removes `Connection`, the headers it names and the fixed hop-by-hop ones (one pass over
/// the few headers a request has; most have none of these).
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut connection = false;
    let mut fixed: Option<Vec<HeaderName>> = None;
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if is_fixed_hop_by_hop(name) {
            fixed.get_or_insert_with(Vec::new).push(name.clone());
        }
    }
    for name in fixed.into_iter().flatten() {
        headers.remove(name);
    }
    if connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(tokens)
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        headers.remove(header::CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
}

/// Whether a `Connection` header lists `token` (case-insensitively).
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| tokens(value).iter().any(|t| t.eq_ignore_ascii_case(token)))
}

/// The comma-separated tokens of a header value, trimmed, lowercased.
fn tokens(value: &HeaderValue) -> Vec<String> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// `X-Forwarded-For: <what the client sent>, <client ip>` (the header's lines joined).
fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR.clone(), ip_value(ip));
        return;
    }
    if let Ok(value) = HeaderValue::try_from(forwarded_for(headers, ip)) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

/// The `X-Forwarded-For` value: the client's lines of it (those that are text) joined,
/// then `ip`.
pub(crate) fn forwarded_for(headers: &HeaderMap, ip: IpAddr) -> String {
    let mut text = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(part) = value.to_str() {
            text.push_str(part);
            text.push_str(", ");
        }
    }
    let mut text = text.into_bytes();
    write_ip(&mut text, ip);
    // Only text went in: the joined lines passed `to_str`, the address is ASCII.
    String::from_utf8(text).unwrap_or_default()
}

/// An address as a header value.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut text = Vec::with_capacity(15);
    write_ip(&mut text, ip);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Writes `ip` as text. IPv4, nearly every client, by hand: `Display` for addresses goes
/// through the formatter's padding machinery, over 1,000 instructions a request (callgrind).
pub(crate) fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn client<'a>(id: &'a HeaderValue, authority: Option<&'a Authority>) -> Client<'a> {
        Client {
            ip: Some("10.1.2.3".parse().unwrap()),
            tls: true,
            request_id: Some(id),
            authority,
        }
    }

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_are_set() {
        let mut headers = map(&[
            ("host", "api.example.com"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
            ("x-forwarded-proto", "gopher"),
            ("x-request-id", "client-chose"),
            ("accept", "*/*"),
        ]);
        let id = HeaderValue::from_static("gw-1");
        request_headers(&mut headers, &client(&id, None), false);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "transfer-encoding",
            "proxy-authorization",
            "expect",
        ] {
            assert!(!headers.contains_key(gone), "{gone} kept");
        }
        assert_eq!(headers["host"], "api.example.com");
        assert_eq!(headers["x-forwarded-host"], "api.example.com");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 192.0.2.2, 10.1.2.3");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-request-id"], "gw-1");
        assert_eq!(headers["accept"], "*/*");
    }

    proptest::proptest! {
        /// The hand-written IPv4 text is `Display`'s, for every address.
        #[test]
        fn addresses_are_written_as_display_writes_them(bits: u32, v6: u128) {
            for ip in [IpAddr::from(std::net::Ipv4Addr::from(bits)), IpAddr::from(std::net::Ipv6Addr::from(v6))] {
                let mut text = Vec::new();
                write_ip(&mut text, ip);
                proptest::prop_assert_eq!(String::from_utf8(text).unwrap(), ip.to_string());
            }
        }
    }

    #[test]
    fn an_http2_authority_becomes_the_host() {
        let mut headers = map(&[("accept", "*/*")]);
        let id = HeaderValue::from_static("gw-2");
        let authority: Authority = "localhost:8443".parse().unwrap();
        request_headers(&mut headers, &client(&id, Some(&authority)), false);
        assert_eq!(headers["host"], "localhost:8443");
        assert_eq!(headers["x-forwarded-host"], "localhost:8443");
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3");
        let v6 = "2001:db8:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        assert_eq!(ip_value(v6), "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn a_websocket_handshake_keeps_its_upgrade_headers_both_ways() {
        let mut headers = map(&[
            ("host", "h"),
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&headers));
        let id = HeaderValue::from_static("gw-3");
        request_headers(&mut headers, &client(&id, None), true);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["sec-websocket-key"], "k");

        let mut response = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "a"),
        ]);
        response_headers(&mut response, true);
        assert_eq!(response["connection"], "upgrade");
        assert_eq!(response["upgrade"], "websocket");
        let mut plain = map(&[("connection", "close"), ("upgrade", "h2c"), ("etag", "1")]);
        response_headers(&mut plain, false);
        assert_eq!(plain.len(), 1);
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }
}
