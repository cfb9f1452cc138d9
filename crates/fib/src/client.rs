//! The REST tier's client of remote fib back ends: a pool of persistent connections per back
//! end, a timeout on every call, each call sent to the cheaper of two back ends drawn at random
//! (cost: peak-EWMA latency × calls in flight; see [`crate::backend`]),
//! retry on another back end (or a fresh connection when a pooled one turns out stale), health
//! tracking that skips a failed back end and probes it again after a backoff, and a cache of
//! successful replies only.
//!
//! Small replies (up to [`BUFFER_LIMIT`]) are read whole before answering, so any failure is
//! retried and the client never sees it; larger replies are streamed through as they arrive, so
//! only a failure before the first byte can be retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::timeout;

use crate::backend::{Backend, Choices};
use crate::metrics;
use crate::protocol::{self, Reply};
use crate::reply_cache::ReplyCache;
use crate::text::{Text, TextError};

/// Replies up to this size are read whole (and so retried on any failure) and cached.
pub const BUFFER_LIMIT: u64 = 1024 * 1024;

/// Largest reply length believed (F(0..1,000,000) is ~105 GB).
const MAX_REPLY: u64 = 1 << 40;

/// Bytes read from a back end per streamed chunk.
const STREAM_READ: usize = 256 * 1024;

/// Why one attempt on one back end failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// Every pooled connection to the back end stayed in use: it is busy, not failing.
    Busy,
    Connect,
    Io,
    Timeout,
    Protocol,
}

impl FailureKind {
    fn label(self) -> &'static str {
        match self {
            FailureKind::Busy => "busy",
            FailureKind::Connect => "connect",
            FailureKind::Io => "io",
            FailureKind::Timeout => "timeout",
            FailureKind::Protocol => "protocol",
        }
    }
}

/// A failed attempt, with where it happened.
#[derive(Debug, Clone)]
struct Attempt {
    backend: String,
    kind: FailureKind,
    detail: String,
    /// The attempt used a pooled connection, which may simply have gone stale.
    reused: bool,
}

/// Why a call to the back ends failed. Every failure of a back end is retried elsewhere first;
/// these are what remains.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no fib back end answered: {0}")]
    Unavailable(String),
    #[error("every fib back end timed out: {0}")]
    TimedOut(String),
    #[error("every fib back end is busy: {0}")]
    Busy(String),
    #[error("fib back end {backend} refused the request: {message}")]
    Refused { backend: String, message: String },
}

/// The pooled, retrying, latency-aware client.
pub struct BackendClient {
    backends: Vec<Arc<Backend>>,
    call_timeout: Duration,
    pool_size: usize,
    cache: ReplyCache,
}

impl BackendClient {
    pub fn new(
        addresses: &[String],
        call_timeout: Duration,
        pool_size: usize,
        cache_bytes: u64,
    ) -> Self {
        let backends = addresses
            .iter()
            .map(|address| Arc::new(Backend::new(address, pool_size)))
            .collect();
        BackendClient {
            backends,
            call_timeout,
            pool_size,
            cache: ReplyCache::new(cache_bytes),
        }
    }

    /// The text of the first `n` numbers from a back end.
    pub async fn text(&self, n: u64) -> Result<Text, ClientError> {
        if let Some(hit) = self.cache.get(n) {
            ::metrics::counter!(metrics::CLIENT_CACHE_HITS).increment(1);
            return Ok(Text::complete([hit]));
        }
        let mut failures: Vec<Attempt> = Vec::new();
        let mut choices = Choices::new(&self.backends, Instant::now());
        while let Some((backend, _in_flight)) = choices.next() {
            if let Some(answer) = self.call(backend, n, &mut failures).await {
                return answer;
            }
        }
        Err(summarise(&failures))
    }

    /// Calls one back end; `None` when it failed (recorded in `failures`: try the next).
    async fn call(
        &self,
        backend: &Arc<Backend>,
        n: u64,
        failures: &mut Vec<Attempt>,
    ) -> Option<Result<Text, ClientError>> {
        let mut fresh_retry_left = true;
        loop {
            if !failures.is_empty() {
                ::metrics::counter!(metrics::BACKEND_RETRIES).increment(1);
            }
            let attempt = match self.attempt(backend, n).await {
                Ok(answer) => {
                    backend.succeeded(answer.latency);
                    return Some(match answer.result {
                        AttemptResult::Text(text) => Ok(text),
                        AttemptResult::Refused(message) => Err(ClientError::Refused {
                            backend: backend.address.clone(),
                            message,
                        }),
                    });
                }
                Err(attempt) => attempt,
            };
            // A pooled connection that fails at once may just have been closed by the back end
            // (restart, idle timeout): one fresh try there first. A timeout is the back end's
            // slowness, not staleness: move on. Busy is not failing: move on without backoff.
            let stale = attempt.reused && attempt.kind != FailureKind::Timeout && fresh_retry_left;
            if stale {
                backend.clear_idle();
                fresh_retry_left = false;
            } else if attempt.kind != FailureKind::Busy {
                backend.failed(attempt.kind.label(), &attempt.detail);
            }
            failures.push(attempt);
            if !stale {
                return None;
            }
        }
    }

    /// One try on one back end: a pool slot, a connection, the request, the reply.
    async fn attempt(&self, backend: &Arc<Backend>, n: u64) -> Result<Answer, Attempt> {
        let slot = self.acquire_slot(backend).await?;
        let (mut conn, reused) = match backend.checkout() {
            Some(conn) => (conn, true),
            None => (self.connect(backend).await?, false),
        };
        let fail = |(kind, detail)| Attempt {
            backend: backend.address.clone(),
            kind,
            detail,
            reused,
        };
        let sent = Instant::now();
        let len = match timeout(self.call_timeout, request_start(&mut conn, n)).await {
            Err(_) => Err((
                FailureKind::Timeout,
                format!("no reply within {:?}", self.call_timeout),
            )),
            Ok(started) => started,
        }
        .map_err(fail)?;
        let latency = sent.elapsed();
        let result = if len <= BUFFER_LIMIT {
            self.read_small(backend, conn, len, n).await
        } else {
            self.start_stream(backend, conn, slot, len, n).await
        }
        .map_err(fail)?;
        Ok(Answer { result, latency })
    }

    /// A free pooled connection's permit. Long streamed replies hold their connection, so
    /// waiting too long means busy, not broken: no backoff for a healthy back end.
    async fn acquire_slot(&self, backend: &Backend) -> Result<OwnedSemaphorePermit, Attempt> {
        let slot = Arc::clone(&backend.slots).acquire_owned();
        match timeout(self.call_timeout, slot).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(Attempt {
                backend: backend.address.clone(),
                kind: FailureKind::Busy,
                detail: format!(
                    "all {} connections stayed busy for {:?}",
                    self.pool_size, self.call_timeout
                ),
                reused: false,
            }),
        }
    }

    async fn connect(&self, backend: &Backend) -> Result<TcpStream, Attempt> {
        let fail = |kind, detail: String| Attempt {
            backend: backend.address.clone(),
            kind,
            detail,
            reused: false,
        };
        match timeout(self.call_timeout, TcpStream::connect(&backend.address)).await {
            Err(_) => Err(fail(FailureKind::Timeout, "connect timed out".into())),
            Ok(Err(e)) => Err(fail(FailureKind::Connect, e.to_string())),
            Ok(Ok(conn)) => {
                // Requests are tiny and answered at once: Nagle would only add delay.
                let _ = conn.set_nodelay(true);
                Ok(conn)
            }
        }
    }

    /// Reads a small reply whole, pools the connection again and caches a success.
    async fn read_small(
        &self,
        backend: &Backend,
        mut conn: TcpStream,
        len: u64,
        n: u64,
    ) -> Result<AttemptResult, (FailureKind, String)> {
        let result = match timeout(self.call_timeout, read_whole(&mut conn, len, n)).await {
            Err(_) => Err((
                FailureKind::Timeout,
                format!("reply not complete within {:?}", self.call_timeout),
            )),
            Ok(read) => read,
        }?;
        backend.checkin(conn, self.pool_size);
        if let AttemptResult::Text(text) = &result {
            if let Some(whole) = text.ready.front() {
                self.cache.insert(n, whole.clone());
            }
        }
        Ok(result)
    }

    /// Checks a large reply's head and hands the rest to a relay task.
    async fn start_stream(
        &self,
        backend: &Arc<Backend>,
        mut conn: TcpStream,
        slot: OwnedSemaphorePermit,
        len: u64,
        n: u64,
    ) -> Result<AttemptResult, (FailureKind, String)> {
        let head = protocol::reply_head(n);
        let mut got = vec![0u8; head.len()];
        match timeout(self.call_timeout, conn.read_exact(&mut got)).await {
            Err(_) => return Err((FailureKind::Timeout, "reply head timed out".into())),
            Ok(Err(e)) => return Err((FailureKind::Io, e.to_string())),
            Ok(Ok(_)) if got != head.as_bytes() => {
                return Err((
                    FailureKind::Protocol,
                    format!("reply starts {:?}", String::from_utf8_lossy(&got)),
                ))
            }
            Ok(Ok(_)) => {}
        }
        let text_len = len - head.len() as u64 - protocol::REPLY_TAIL.len() as u64;
        Ok(AttemptResult::Text(self.stream(
            Arc::clone(backend),
            conn,
            slot,
            text_len,
        )))
    }

    /// Streams `text_len` bytes of numbers then the reply's tail from `conn`, handing the
    /// connection back to the pool once the reply is complete.
    fn stream(
        &self,
        backend: Arc<Backend>,
        conn: TcpStream,
        slot: OwnedSemaphorePermit,
        text_len: u64,
    ) -> Text {
        let (tx, rx) = mpsc::channel(4);
        let call_timeout = self.call_timeout;
        let pool_size = self.pool_size;
        tokio::spawn(async move {
            let address = backend.address.clone();
            let relayed = relay(conn, text_len, call_timeout, &tx).await;
            drop(slot);
            match relayed {
                Ok(Some(conn)) => backend.checkin(conn, pool_size),
                Ok(None) => {} // the HTTP client went away; the half-read reply is dropped
                Err(problem) => {
                    ::metrics::counter!(metrics::BACKEND_ERRORS, "backend" => address.clone(), "kind" => "stream").increment(1);
                    tracing::warn!(backend = %address, error = %problem, "fib back end reply broke off mid-stream");
                    let _ = tx
                        .send(Err(TextError::Backend {
                            backend: address,
                            problem,
                        }))
                        .await;
                }
            }
        });
        Text {
            len: text_len,
            ready: Default::default(),
            rest: Some(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }))),
        }
    }
}

/// A back end's answer and its time to first byte.
struct Answer {
    result: AttemptResult,
    latency: Duration,
}

enum AttemptResult {
    Text(Text),
    Refused(String),
}

/// Sends the request and reads the length prefix.
async fn request_start(conn: &mut TcpStream, n: u64) -> Result<u64, (FailureKind, String)> {
    let request = format!("{{\"N\": {n}}}");
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| (FailureKind::Io, format!("sending request: {e}")))?;
    let mut prefix = [0u8; protocol::PREFIX_LEN];
    conn.read_exact(&mut prefix)
        .await
        .map_err(|e| (FailureKind::Io, format!("reading reply length: {e}")))?;
    let len = i64::from_le_bytes(prefix);
    match u64::try_from(len) {
        Ok(len) if (2..=MAX_REPLY).contains(&len) => Ok(len),
        _ => Err((
            FailureKind::Protocol,
            format!("implausible reply length {len}"),
        )),
    }
}

/// Reads and checks a whole small reply.
async fn read_whole(
    conn: &mut TcpStream,
    len: u64,
    n: u64,
) -> Result<AttemptResult, (FailureKind, String)> {
    let mut body = vec![0u8; len as usize];
    conn.read_exact(&mut body)
        .await
        .map_err(|e| (FailureKind::Io, format!("reading reply: {e}")))?;
    let body = Bytes::from(body);
    if let Some(text) = numbers_in_reply(&body, n) {
        return Ok(AttemptResult::Text(Text::complete([text])));
    }
    match protocol::parse_reply(&body) {
        Ok(Reply::Result { n: got, result }) if got == n && is_numbers_text(result.as_bytes()) => {
            Ok(AttemptResult::Text(Text::complete([Bytes::from(result)])))
        }
        Ok(Reply::Result { n: got, .. }) => Err((
            FailureKind::Protocol,
            format!("asked for N = {n}, got a reply for N = {got} or with a malformed result"),
        )),
        Ok(Reply::Error(message)) => Ok(AttemptResult::Refused(message)),
        Err(problem) => Err((FailureKind::Protocol, problem)),
    }
}

/// Copies `text_len` bytes of numbers to `tx`, then checks the tail; returns the connection
/// for reuse. Stops (without error) when the receiver is gone.
async fn relay(
    mut conn: TcpStream,
    mut text_len: u64,
    call_timeout: Duration,
    tx: &mpsc::Sender<Result<Bytes, TextError>>,
) -> Result<Option<TcpStream>, String> {
    // One buffer, read into its spare room and split off: chunks share its allocation
    // instead of each pinning a zeroed STREAM_READ-sized one.
    let mut buffer = BytesMut::new();
    while text_len > 0 {
        let want = text_len.min(STREAM_READ as u64) as usize;
        buffer.reserve(want);
        let mut room = (&mut buffer).limit(want);
        let got = match timeout(call_timeout, conn.read_buf(&mut room)).await {
            Err(_) => return Err(format!("no data within {call_timeout:?}")),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(0)) => return Err(format!("connection closed with {text_len} bytes to go")),
            Ok(Ok(got)) => got,
        };
        let chunk = buffer.split().freeze();
        if !is_numbers_text(&chunk) {
            return Err("reply contains bytes other than digits and spaces".into());
        }
        text_len -= got as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(None);
        }
    }
    let mut tail = [0u8; 2];
    match timeout(call_timeout, conn.read_exact(&mut tail)).await {
        Ok(Ok(_)) if tail == protocol::REPLY_TAIL => Ok(Some(conn)),
        _ => Err("reply does not end with \"}".into()),
    }
}

/// The numbers' text of a reply in this crate's own layout (`{"N": n, "result": "..."}`), as a
/// slice of the reply with no JSON parsing; `None` for anything else (an error reply, other
/// spacing), which then goes through the JSON parser.
fn numbers_in_reply(body: &Bytes, n: u64) -> Option<Bytes> {
    let head = protocol::reply_head(n);
    let tail = protocol::REPLY_TAIL;
    if body.len() < head.len() + tail.len()
        || !body.starts_with(head.as_bytes())
        || !body.ends_with(tail)
    {
        return None;
    }
    let text = body.slice(head.len()..body.len() - tail.len());
    is_numbers_text(&text).then_some(text)
}

fn is_numbers_text(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b.is_ascii_digit() || b == b' ')
}

fn summarise(failures: &[Attempt]) -> ClientError {
    let detail = failures
        .iter()
        .map(|a| format!("{}: {}", a.backend, a.detail))
        .collect::<Vec<_>>()
        .join("; ");
    let all = |kind| !failures.is_empty() && failures.iter().all(|a| a.kind == kind);
    if all(FailureKind::Busy) {
        ClientError::Busy(detail)
    } else if all(FailureKind::Timeout) {
        ClientError::TimedOut(detail)
    } else {
        ClientError::Unavailable(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::lock;

    #[test]
    fn own_layout_replies_are_sliced_without_parsing() {
        let body = Bytes::from_static(br#"{"N": 3, "result": "0 1 1"}"#);
        assert_eq!(numbers_in_reply(&body, 3).as_deref(), Some(&b"0 1 1"[..]));
        assert_eq!(numbers_in_reply(&body, 4), None, "another N");
        let injected = Bytes::from_static(br#"{"N": 3, "result": "0 1", "x": "1"}"#);
        assert_eq!(
            numbers_in_reply(&injected, 3),
            None,
            "only digits and spaces"
        );
    }

    #[tokio::test]
    async fn no_back_end_listening_fails_fast_naming_each() {
        // Ports 1 and 2 on loopback: nothing listens there, the connects are refused.
        let client = BackendClient::new(
            &["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()],
            Duration::from_secs(1),
            4,
            0,
        );
        let err = client.text(10).await.err().expect("fails");
        let message = err.to_string();
        assert!(
            message.contains("127.0.0.1:1") && message.contains("127.0.0.1:2"),
            "{message}"
        );
        assert!(lock(&client.backends[0].state).health().is_ejected());
    }
}
