//! What the gateway tells a service about each request, beside the request itself: request
//! extensions it attaches ([`RequestId`], [`ClientTls`]; axum's `ConnectInfo<SocketAddr>`
//! carries the client's address), the same facts as one argument for a direct handler
//! ([`ClientFacts`], `Service::with_direct`), and the error a counted request body fails
//! with when it passes the body limit ([`BodyTooLarge`]). They live here, not in the
//! gateway, because services never depend on the gateway.

use std::error::Error as StdError;

/// The id of a request (the client's sane `X-Request-Id`, else a new one), as a request
/// extension; the gateway also sets it on the response.
#[derive(Debug, Clone)]
pub struct RequestId(pub axum::http::HeaderValue);

/// Whether the client reached the listener over TLS, as a request extension (a proxy's
/// `X-Forwarded-Proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTls(pub bool);

/// What the gateway knows of a request's client, handed to a direct handler as an argument
/// (`Service::with_direct`): what other services read from the request's extensions
/// (`ConnectInfo`, [`RequestId`], [`ClientTls`]), without the three allocations those take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFacts {
    /// The client's address (the TCP peer).
    pub peer: std::net::SocketAddr,
    /// Whether the client reached the listener over TLS.
    pub tls: bool,
    /// The request's id (the client's sane `X-Request-Id`, else a new one).
    pub request_id: axum::http::HeaderValue,
}

/// A request body that went past the gateway's `limits.max_body_bytes` while it streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body is over the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit, in bytes.
    pub limit: u64,
}

impl BodyTooLarge {
    /// The `BodyTooLarge` in `error` or its chain of sources (through `axum::Error`,
    /// `hyper::Error`, `std::io::Error` and other wrappers of their cause).
    pub fn find_in<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a BodyTooLarge> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<BodyTooLarge>() {
                return Some(found);
            }
            // An `io::Error` made from an error hides it from `source` (only its cause shows).
            let io_inner = error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref());
            current = match io_inner {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => error.source(),
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_error_is_found_through_wrappers() {
        let too_large = BodyTooLarge { limit: 1000 };
        let wrapped = axum::Error::new(too_large);
        assert_eq!(BodyTooLarge::find_in(&wrapped), Some(&too_large));
        let io = std::io::Error::other(axum::Error::new(too_large));
        assert_eq!(BodyTooLarge::find_in(&io), Some(&too_large));
        let io = std::io::Error::other(too_large);
        assert_eq!(BodyTooLarge::find_in(&io), Some(&too_large));
        let other = std::io::Error::other("something else");
        assert_eq!(BodyTooLarge::find_in(&other), None);
        assert_eq!(
            too_large.to_string(),
            "request body is over the limit of 1000 bytes"
        );
    }
}
