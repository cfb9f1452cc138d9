//! The gateway's body limit (`limits.max_body_bytes`) on request bodies of unknown length:
//! chunked HTTP/1 bodies and HTTP/2 bodies without `Content-Length`, counted as they stream.
//!
//! A body that declares its length is checked before the service is called (413 at once),
//! and hyper holds it to that length, so it is passed through uncounted. Any other body is
//! counted frame by frame: past the limit, the service's next read fails with
//! [`BodyTooLarge`], and the request layer answers the client `413` with the gateway's JSON
//! error in place of whatever the service made of the failed read (unless it answered 413
//! itself). A streaming handler that forwards the body (a proxy) sees the same error from
//! its read or from its upstream client, and can recognise it with
//! [`BodyTooLarge::find_in`].

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
pub use service::BodyTooLarge;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Whether a counted body passed the limit: kept by the request layer, set by the body.
pub(crate) struct LimitWatch {
    passed: Arc<AtomicBool>,
    limit: u64,
}

impl LimitWatch {
    /// The error the body's reads failed with, once it passed the limit.
    pub(crate) fn passed(&self) -> Option<BodyTooLarge> {
        let passed = self.passed.load(Ordering::Relaxed);
        passed.then_some(BodyTooLarge { limit: self.limit })
    }
}

/// The request body a service reads: hyper's, counted against the limit when its length
/// was not declared.
pub(crate) struct RequestBody {
    inner: Incoming,
    allowance: Option<Allowance>,
}

/// What is left of the limit for one body of unknown length.
struct Allowance {
    left: u64,
    limit: u64,
    passed: bool,
    /// Shared with the request layer (`LimitWatch`), which answers 413 once it is set.
    tripped: Arc<AtomicBool>,
}

impl RequestBody {
    /// Wraps `inner`, whose `declared` length (none, or `Content-Length`: hyper holds the
    /// body to it) was checked against `limit` already. Returns what tells when the body
    /// passes `limit`, when it has to be counted: only bodies of unknown length are (one
    /// allocation for the flag; a body-less request costs nothing).
    pub(crate) fn new(
        inner: Incoming,
        declared: Option<u64>,
        limit: u64,
    ) -> (Self, Option<LimitWatch>) {
        if declared.is_some() {
            return (
                RequestBody {
                    inner,
                    allowance: None,
                },
                None,
            );
        }
        let tripped = Arc::new(AtomicBool::new(false));
        let allowance = Allowance {
            left: limit,
            limit,
            passed: false,
            tripped: tripped.clone(),
        };
        let body = RequestBody {
            inner,
            allowance: Some(allowance),
        };
        let watch = LimitWatch {
            passed: tripped,
            limit,
        };
        (body, Some(watch))
    }
}

impl Allowance {
    /// Takes `len` bytes off what is left; the error once the limit is passed.
    fn take(&mut self, len: usize) -> Result<(), BodyTooLarge> {
        match self.left.checked_sub(len as u64) {
            Some(left) if !self.passed => {
                self.left = left;
                Ok(())
            }
            _ => {
                self.passed = true;
                self.tripped.store(true, Ordering::Relaxed);
                Err(self.error())
            }
        }
    }

    fn error(&self) -> BodyTooLarge {
        BodyTooLarge { limit: self.limit }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Once passed, every read fails: the rest of the body is not read.
        if let Some(allowance) = this.allowance.as_ref().filter(|a| a.passed) {
            return Poll::Ready(Some(Err(allowance.error().into())));
        }
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let frame = match polled {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            None => return Poll::Ready(None),
        };
        if let (Some(allowance), Some(data)) = (&mut this.allowance, frame.data_ref()) {
            if let Err(too_large) = allowance.take(data.len()) {
                return Poll::Ready(Some(Err(too_large.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowance_passes_up_to_the_limit_and_then_stays_passed() {
        let tripped = Arc::new(AtomicBool::new(false));
        let mut allowance = Allowance {
            left: 10,
            limit: 10,
            passed: false,
            tripped: tripped.clone(),
        };
        assert!(allowance.take(4).is_ok());
        assert!(allowance.take(6).is_ok());
        assert!(!tripped.load(Ordering::Relaxed));
        assert_eq!(allowance.take(1), Err(BodyTooLarge { limit: 10 }));
        assert!(tripped.load(Ordering::Relaxed));
        assert!(allowance.take(0).is_err(), "passed stays passed");
    }
}
