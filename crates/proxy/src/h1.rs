//! The proxy's own HTTP/1.1 client for body-less `GET` and `HEAD`, the requests most
//! proxied traffic is made of.
//!
//! **Why.** hyper's client runs each connection as a task of its own: a request crosses a
//! channel to it, the response head comes back through a oneshot and its body through a
//! second channel, each hop a wake-up and a poll of another task. Measured with callgrind
//! (bench/RESULTS.md, Proxy), that was a quarter of a proxied request's instructions. Here
//! the request's own task writes the head and reads the answer on the pooled socket, and the
//! response body reads the socket as the client's connection polls it. Everything else
//! (request bodies, WebSocket upgrades, every other method) still goes through hyper.
//!
//! **What it sends.** The request head is encoded once, straight from the client's headers,
//! with the rules of `crate::headers` applied as it is written ([`encode_request`]), so no
//! `HeaderMap` is rewritten. A property test checks it against `headers::request_headers`.
//!
//! **What it reads** (RFC 9112): a status line and at most [`MAX_HEADERS`] headers within
//! [`MAX_HEAD`] bytes (hyper's client limits); interim `1xx` answers are skipped, and a `101`
//! nobody asked for is an error. The body is framed, in this order, by: none for `HEAD`,
//! `204` and `304`; `Transfer-Encoding` (chunked when that is its last coding, else until
//! the connection closes); a `Content-Length` (several must agree); else until close. Hop-by-
//! hop headers are left out as the head is read, as `headers::response_headers` would. The
//! head is taken out of the read buffer as one `Bytes` and header values are slices of it:
//! no allocation or copy per value.
//!
//! **Reuse.** A connection goes back to the pool once its body has been read to the end,
//! unless the answer said `Connection: close` (or was HTTP/1.0 without keep-alive), its body
//! ran until close, or bytes followed it. A pooled connection the instance has closed is
//! found out as the request goes out: the write fails, or the answer ends before its first
//! byte. Then nothing was answered and `GET`/`HEAD` are safe to send again: the caller
//! retries on a new connection (`Failure::Stale`).

use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::headers::{self, Client};
use crate::instances::{now, Upstream};
use crate::pool::{self, ConnectError};

/// Most headers an answer may have (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// Most bytes an answer's head may take (hyper's client default buffer).
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Most bytes of trailers after a chunked body (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_AHEAD: usize = 16 * 1024;

/// Whether a request goes through this client: `GET` or `HEAD` with no body that does not
/// ask to switch protocols.
pub(crate) fn serves(method: &Method, body_ended: bool, upgrade: bool) -> bool {
    (method == Method::GET || method == Method::HEAD) && body_ended && !upgrade
}

/// The request head the instance gets: `{method} {path} HTTP/1.1`, the client's headers
/// as `headers::request_headers` rewrites them.
pub(crate) fn encode_request(
    method: &Method,
    path: &str,
    from_client: &HeaderMap,
    client: &Client<'_>,
) -> Bytes {
    let mut out = Vec::with_capacity(256 + from_client.len() * 32);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = headers::connection_named(from_client);
    let mut host = None;
    let mut forwarded_for = false;
    for (name, value) in from_client {
        if headers::is_hop_by_hop(name, &named) {
            continue;
        }
        if name == header::HOST {
            host.get_or_insert(value);
        }
        if name == headers::X_FORWARDED_FOR && client.ip.is_some() {
            forwarded_for = true;
            continue;
        }
        let replaced = name == header::EXPECT
            || headers::is_forwarding(name)
            || (name == headers::X_REQUEST_ID && client.request_id.is_some());
        if !replaced {
            put_header(&mut out, name.as_str(), value.as_bytes());
        }
    }
    let authority;
    if host.is_none() {
        authority = client
            .authority
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(value) = &authority {
            put_header(&mut out, "host", value.as_bytes());
            host = Some(value);
        }
    }
    if let Some(host) = host {
        put_header(&mut out, "x-forwarded-host", host.as_bytes());
    }
    if let Some(ip) = client.ip {
        if forwarded_for {
            let joined = headers::forwarded_for(from_client, ip);
            put_header(&mut out, "x-forwarded-for", joined.as_bytes());
        } else {
            out.extend_from_slice(b"x-forwarded-for: ");
            headers::write_ip(&mut out, ip);
            out.extend_from_slice(b"\r\n");
        }
    }
    let proto: &[u8] = if client.tls { b"https" } else { b"http" };
    put_header(&mut out, "x-forwarded-proto", proto);
    if let Some(id) = client.request_id {
        put_header(&mut out, "x-request-id", id.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// A pooled connection turned out closed: nothing was answered (retry on a new one).
    #[error("the pooled connection was closed by the instance")]
    Stale,
    /// The request could not be written on a new connection: nothing reached the instance.
    #[error("sending the request: {0}")]
    Send(std::io::Error),
    /// The instance broke the exchange after the request went out.
    #[error("{0}")]
    Broken(String),
}

/// A broken answer, as the parser sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid response head: {0}")]
    Head(String),
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length {0:?}")]
    ContentLength(String),
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("a 101 Switching Protocols to a request that did not ask to switch")]
    UnaskedSwitch,
}

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// This many bytes.
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    Close,
}

/// An answer's head, parsed.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub status: StatusCode,
    /// Without hop-by-hop headers.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
}

/// Parses the answer's head at the start of `buf`: `Ok(None)` when more bytes are needed,
/// else the head, whose bytes (and those of interim `1xx` answers, which are skipped) are
/// taken from `buf`. Header values are slices of those bytes, not copies.
pub fn parse_head(buf: &mut BytesMut, to_head: bool) -> Result<Option<Head>, ParseError> {
    let mut spans = Spans::new();
    loop {
        let Some(found) = locate(buf, &mut spans)? else {
            return Ok(None);
        };
        if found.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ParseError::UnaskedSwitch);
        }
        if found.status.is_informational() {
            buf.advance(found.taken);
            continue;
        }
        let bytes = buf.split_to(found.taken).freeze();
        let head = head_of(&found, &bytes, &spans, to_head)?;
        return Ok(Some(head));
    }
}

/// Where one header's name and value are in the head's bytes (a head is under 4 GiB:
/// `MAX_HEAD`).
#[derive(Debug, Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    fn of(field: &httparse::Header<'_>, base: usize) -> Span {
        let at = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            (start as u32, (start + part.len()) as u32)
        };
        Span {
            name: at(field.name.as_bytes()),
            value: at(field.value),
        }
    }

    fn name(&self) -> Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(&self) -> Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// The spans of a head's headers: the first 16 without a heap allocation, and uninitialised
/// until used (a zeroed array of `MAX_HEADERS` would be 1.6 KiB written per answer).
type Spans = SmallVec<[Span; 16]>;

/// A complete head found at the start of a buffer.
struct Located {
    status: StatusCode,
    http10: bool,
    /// Its length in bytes.
    taken: usize,
}

/// Finds the head at the start of `buf`, and where its headers are (in `spans`).
fn locate(buf: &[u8], spans: &mut Spans) -> Result<Option<Located>, ParseError> {
    // Uninitialised slots: a head's worth of empty ones would be 3 KiB written each time.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let taken = match parsed {
        Ok(httparse::Status::Complete(taken)) => taken,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ParseError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(ParseError::Head(error.to_string())),
    };
    let code = response.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| ParseError::Head(format!("status code {code}")))?;
    let base = buf.as_ptr() as usize;
    spans.clear();
    spans.extend(response.headers.iter().map(|field| Span::of(field, base)));
    Ok(Some(Located {
        status,
        http10: response.version == Some(0),
        taken,
    }))
}

fn head_of(
    found: &Located,
    bytes: &Bytes,
    spans: &Spans,
    to_head: bool,
) -> Result<Head, ParseError> {
    let status = found.status;
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut keep_alive = !found.http10;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut named: Vec<HeaderName> = Vec::new();
    for span in spans {
        let raw_name = &bytes[span.name()];
        let raw = &bytes[span.value()];
        let name = header_name(raw_name).map_err(|_| {
            ParseError::Head(format!(
                "header name {:?}",
                String::from_utf8_lossy(raw_name)
            ))
        })?;
        if name == header::CONNECTION {
            // As bytes: a token past a non-UTF-8 one (obs-text) still counts.
            for token in raw.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = keep_alive || found.http10;
                } else if let Ok(other) = HeaderName::from_bytes(token) {
                    named.push(other);
                }
            }
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            let last = raw.rsplit(|b| *b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let text = String::from_utf8_lossy(raw);
            let parsed = parse_length(&text)?;
            if length.is_some_and(|earlier| earlier != parsed) {
                return Err(ParseError::ContentLength(text.to_string()));
            }
            length = Some(parsed);
        }
        if headers::is_fixed_hop_by_hop(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(bytes.slice(span.value()))
            .map_err(|_| ParseError::Head(format!("value of {name}")))?;
        headers.append(name, value);
    }
    for name in named {
        headers.remove(name);
    }
    let framing = match (chunked, length) {
        _ if to_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED => {
            Framing::Empty
        }
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => Framing::Close,
        (None, Some(0)) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::Close,
    };
    if chunked.is_some() {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3), and the client's side
        // frames its own copy.
        headers.remove(header::CONTENT_LENGTH);
        keep_alive = keep_alive && framing == Framing::Chunked;
    }
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive,
    })
}

/// Names answers carry most, matched before `HeaderName::from_bytes` (which lowercases into
/// a scratch buffer and walks its table: about 150 instructions a header).
static COMMON_NAMES: [(&[u8], HeaderName); 15] = [
    (b"date", header::DATE),
    (b"etag", header::ETAG),
    (b"vary", header::VARY),
    (b"server", header::SERVER),
    (b"expires", header::EXPIRES),
    (b"location", header::LOCATION),
    (b"connection", header::CONNECTION),
    (b"keep-alive", HeaderName::from_static("keep-alive")),
    (b"set-cookie", header::SET_COOKIE),
    (b"content-type", header::CONTENT_TYPE),
    (b"accept-ranges", header::ACCEPT_RANGES),
    (b"cache-control", header::CACHE_CONTROL),
    (b"last-modified", header::LAST_MODIFIED),
    (b"content-length", header::CONTENT_LENGTH),
    (b"transfer-encoding", header::TRANSFER_ENCODING),
];

/// A header name of an answer, as `HeaderName::from_bytes` makes it.
fn header_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    let common = COMMON_NAMES
        .iter()
        .find(|(name, _)| name.len() == raw.len() && name.eq_ignore_ascii_case(raw));
    match common {
        Some((_, name)) => Ok(name.clone()),
        None => HeaderName::from_bytes(raw),
    }
}

/// A `Content-Length` value: digits only (a list of equal values, as some servers send, is
/// one value).
fn parse_length(text: &str) -> Result<u64, ParseError> {
    let mut value = None;
    for part in text.split(',').map(str::trim) {
        let n = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| ParseError::ContentLength(text.to_string()))?;
        if value.is_some_and(|v| v != n) {
            return Err(ParseError::ContentLength(text.to_string()));
        }
        value = Some(n);
    }
    value.ok_or_else(|| ParseError::ContentLength(text.to_string()))
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// Next: a chunk-size line.
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// Next: the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one (this many bytes of them seen).
    Trailers(usize),
    Done,
}

/// What decoding found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// Nothing decodable until more bytes arrive.
    NeedMore,
    End,
}

impl Chunks {
    /// Decodes from the front of `buf`, consuming what it decodes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ParseError> {
        loop {
            match *self {
                Chunks::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((taken, size))) => {
                        buf.advance(taken);
                        *self = match size {
                            0 => Chunks::Trailers(0),
                            n => Chunks::Data(n),
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > 1024 => {
                        return Err(ParseError::Chunked("chunk size line too long"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err(ParseError::Chunked("bad chunk size line")),
                },
                Chunks::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Chunks::DataEnd
                    } else {
                        Chunks::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Chunks::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::Chunked("no CRLF after a chunk's data"));
                    }
                    buf.advance(2);
                    *self = Chunks::Size;
                }
                Chunks::Trailers(seen) => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err(ParseError::Chunked("trailers too large"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(end + 2);
                    *self = match end {
                        0 => Chunks::Done,
                        _ if seen + end + 2 > MAX_TRAILERS => {
                            return Err(ParseError::Chunked("trailers too large"))
                        }
                        _ => Chunks::Trailers(seen + end + 2),
                    };
                }
                Chunks::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// A keep-alive connection to an instance, and what was read past the last answer.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// A new connection to `addr`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
        let stream = pool::open(addr, timeout).await?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_AHEAD),
        })
    }

    /// Sends `request` and reads the answer's head. `reused`: the connection came from the
    /// pool, so a close before any answer means it was stale.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        to_head: bool,
        reused: bool,
    ) -> Result<Head, Failure> {
        if let Err(error) = self.stream.write_all(request).await {
            return Err(if reused {
                Failure::Stale
            } else {
                Failure::Send(error)
            });
        }
        self.buf.clear();
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, to_head) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) => {}
                    Err(error) => return Err(Failure::Broken(error.to_string())),
                }
            }
            self.buf.reserve(READ_AHEAD);
            let read = self.stream.read_buf(&mut self.buf).await;
            match read {
                Ok(0) | Err(_) if reused && !answered => return Err(Failure::Stale),
                Ok(0) => {
                    return Err(Failure::Broken(
                        "the connection closed before a complete response head".into(),
                    ))
                }
                Ok(_) => answered = true,
                Err(error) => return Err(Failure::Broken(error.to_string())),
            }
        }
    }
}

/// Gives a connection back to this worker's pool.
pub(crate) struct Lease {
    pub addr: SocketAddr,
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

/// An answer's body, read from the connection as the client's side polls it; the connection
/// goes back to the pool at its end when it can carry another request.
pub(crate) struct ResponseBody {
    /// `None` once the body has ended (its connection pooled or closed) or broken.
    conn: Option<Conn>,
    framing: Framing,
    /// Bytes still to come of a `Content-Length` body.
    left: u64,
    chunks: Chunks,
    keep_alive: bool,
    lease: Lease,
    upstream: Arc<Upstream>,
}

impl ResponseBody {
    pub fn new(conn: Conn, head: &Head, lease: Lease, upstream: Arc<Upstream>) -> Self {
        let left = match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        ResponseBody {
            conn: Some(conn),
            framing: head.framing,
            left,
            chunks: Chunks::Size,
            keep_alive: head.keep_alive,
            lease,
            upstream,
        }
    }

    /// The next piece of body already in the buffer, if any.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ParseError> {
        match self.framing {
            Framing::Empty => Ok(Decoded::End),
            Framing::Length(_) if self.left == 0 => Ok(Decoded::End),
            Framing::Length(_) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.left -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Framing::Chunked => self.chunks.decode(buf),
            Framing::Close if buf.is_empty() => Ok(Decoded::NeedMore),
            Framing::Close => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// The body ended: the connection goes back to the pool if it can be used again.
    pub fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive && conn.buf.is_empty() {
            let lease = &self.lease;
            pool::give_back_conn(lease.addr, conn, lease.max_idle, lease.idle_timeout);
        }
    }

    fn broke(&mut self, error: String) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        tracing::debug!(instance = %self.upstream.addr(), %error, "response body broke");
        self.upstream.failed(now());
        Poll::Ready(Some(Err(BodyError(error))))
    }
}

impl Drop for ResponseBody {
    /// A body dropped once read whole (its last bytes were in the buffer, say) still gives its
    /// connection back; one cut short closes it.
    fn drop(&mut self) {
        let whole = match self.framing {
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunks == Chunks::Done,
            Framing::Empty => true,
            Framing::Close => false,
        };
        if whole && self.conn.is_some() {
            self.finish();
        }
    }
}

/// An answer's body broke off (its connection is closed).
#[derive(Debug, thiserror::Error)]
#[error("the instance's response body broke off: {0}")]
pub(crate) struct BodyError(String);

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(mut conn) = this.conn.take() else {
            return Poll::Ready(None);
        };
        loop {
            match this.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    this.conn = Some(conn);
                    if matches!(this.framing, Framing::Length(_)) && this.left == 0 {
                        // hyper stops polling a body whose length it has had: this is the end.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.conn = Some(conn);
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(error) => return this.broke(error.to_string()),
            }
            conn.buf.reserve(READ_AHEAD);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf);
            match read {
                Poll::Pending => {
                    this.conn = Some(conn);
                    return Poll::Pending;
                }
                // The connection (taken above) is dropped: closed, as the body's end.
                Poll::Ready(Ok(0)) if this.framing == Framing::Close => return Poll::Ready(None),
                Poll::Ready(Ok(0)) => {
                    return this.broke("the connection closed before the body ended".into())
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return this.broke(error.to_string()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(_) => SizeHint::with_exact(self.left),
            Framing::Empty => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `parse_head` on a copy of `bytes`.
    fn parse(bytes: &[u8], to_head: bool) -> Result<Option<Head>, ParseError> {
        parse_head(&mut BytesMut::from(bytes), to_head)
    }

    /// The head of `text`, which takes all of it.
    fn parsed(text: &str, to_head: bool) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        let head = parse_head(&mut buf, to_head).unwrap().unwrap();
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        head
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = "HTTP/1.1 200 OK\r\n";
        let head = parsed(&format!("{ok}content-length: 12\r\n\r\n"), false);
        assert_eq!((head.framing, head.keep_alive), (Framing::Length(12), true));
        assert_eq!(head.headers["content-length"], "12");
        let head = parsed(&format!("{ok}content-length: 12\r\n\r\n"), true);
        assert_eq!(head.framing, Framing::Empty, "HEAD");
        let head = parsed(
            &format!("{ok}Transfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"),
            false,
        );
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, true));
        assert!(head.headers.is_empty(), "{:?}", head.headers);
        let head = parsed(&format!("{ok}transfer-encoding: gzip\r\n\r\n"), false);
        assert_eq!((head.framing, head.keep_alive), (Framing::Close, false));
        let head = parsed(&format!("{ok}x: y\r\n\r\n"), false);
        assert_eq!((head.framing, head.keep_alive), (Framing::Close, false));
        let head = parsed(
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            false,
        );
        assert_eq!(head.framing, Framing::Empty);
        let head = parsed("HTTP/1.1 304 Not Modified\r\n\r\n", false);
        assert_eq!((head.framing, head.keep_alive), (Framing::Empty, true));
        let head = parsed(&format!("{ok}content-length: 4, 4\r\n\r\n"), false);
        assert_eq!(head.framing, Framing::Length(4));
        for bad in ["4, 5", "-1", "0x10", "", "1 2"] {
            let text = format!("{ok}content-length: {bad}\r\n\r\n");
            let error = parse(text.as_bytes(), false).unwrap_err();
            assert_eq!(error, ParseError::ContentLength(bad.into()));
        }
        let text = format!("{ok}content-length: 4\r\ncontent-length: 5\r\n\r\n");
        assert!(parse(text.as_bytes(), false).is_err());
    }

    #[test]
    fn keep_alive_and_hop_by_hop_headers() {
        let head = parsed(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nx-private: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\nETag: \"a\"\r\n\r\n",
            false,
        );
        assert!(!head.keep_alive);
        let mut names: Vec<_> = head.headers.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "etag"]);
        let head = parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!head.keep_alive, "HTTP/1.0 closes by default");
        // A `close` after a token that is not text (obs-text) still closes.
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: x\xff, close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!head.unwrap().unwrap().keep_alive);
        let head = parsed(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(head.keep_alive);
    }

    #[test]
    fn header_values_are_slices_of_the_read_buffer() {
        let text = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-custom: a value\r\n\r\nbody";
        let mut buf = BytesMut::from(text.as_bytes());
        let read = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.headers.len(), 2);
        for value in head.headers.values() {
            let at = value.as_bytes().as_ptr() as usize;
            assert!(
                read.contains(&at),
                "{value:?} was copied out of the read buffer"
            );
        }
        assert_eq!(&buf[..], b"body");
    }

    #[test]
    fn interim_answers_are_skipped_and_an_unasked_switch_is_an_error() {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let head = parsed(text, false);
        assert_eq!(head.status, StatusCode::OK);
        assert!(!head.headers.contains_key("link"));
        let switch = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(parse(switch, false), Err(ParseError::UnaskedSwitch));
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nx: y\r\n", false), Ok(None));
        assert!(matches!(
            parse(b"HTTP/1.1 2000 OK\r\n\r\n", false),
            Err(ParseError::Head(_))
        ));
    }

    #[test]
    fn a_head_past_the_limit_is_refused() {
        let mut text = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        text.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse(&text, false), Err(ParseError::HeadTooLarge));
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(
            parse(many.as_bytes(), false),
            Err(ParseError::Head(_))
        ));
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n",
            b"3\r\nabc\r\n0\r\nx: y\r\n",
        ] {
            let mut chunks = Chunks::Size;
            let mut buf = BytesMut::from(bad);
            let mut outcome = Ok(Decoded::NeedMore);
            for _ in 0..10 {
                outcome = chunks.decode(&mut buf);
                if !matches!(outcome, Ok(Decoded::Data(_))) {
                    break;
                }
            }
            if bad.starts_with(b"3\r\nabc\r\n0") {
                assert_eq!(outcome, Ok(Decoded::NeedMore), "trailers not ended yet");
            } else {
                assert!(outcome.is_err(), "{bad:?}: {outcome:?}");
            }
        }
    }

    /// `body` as chunks of the given sizes, with trailers.
    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        for size in sizes.iter().copied().chain(std::iter::once(usize::MAX)) {
            if rest.is_empty() {
                break;
            }
            let n = size.clamp(1, rest.len());
            out.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
        out
    }

    /// A raw HTTP/1.1 server on a fresh port: for each connection, answers each request
    /// (read up to its blank line) with the next of `answers`; an empty answer closes the
    /// connection instead, and an answer ending in `<close>` closes it after being written
    /// (without the marker). Counts its connections.
    async fn raw_server(
        answers: Vec<&'static [u8]>,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut seen = Vec::new();
                loop {
                    let mut chunk = [0u8; 1024];
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&chunk[..n]);
                    if !seen.ends_with(b"\r\n\r\n") {
                        continue;
                    }
                    seen.clear();
                    match answers.next() {
                        Some(answer) if answer.ends_with(b"<close>") => {
                            let answer = &answer[..answer.len() - b"<close>".len()];
                            stream.write_all(answer).await.unwrap();
                            break;
                        }
                        Some(answer) if !answer.is_empty() => {
                            stream.write_all(answer).await.unwrap()
                        }
                        _ => break,
                    }
                }
            }
        });
        (addr, accepted)
    }

    async fn body_of(body: ResponseBody) -> Result<Vec<u8>, BodyError> {
        use http_body_util::BodyExt;
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    fn lease(addr: SocketAddr) -> Lease {
        Lease {
            addr,
            max_idle: 4,
            idle_timeout: Duration::from_secs(30),
        }
    }

    fn upstream(addr: SocketAddr) -> Arc<Upstream> {
        Arc::new(Upstream::for_tests(addr))
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    #[tokio::test]
    async fn answers_are_read_whole_and_their_connection_reused() {
        let (addr, accepted) = raw_server(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close<close>",
        ])
        .await;
        let second = Duration::from_secs(1);
        let mut conn = Conn::connect(addr, second).await.unwrap();
        let head = conn.exchange(GET, false, false).await.unwrap();
        let body = ResponseBody::new(conn, &head, lease(addr), upstream(addr));
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        assert_eq!(body_of(body).await.unwrap(), b"hello");
        let mut conn = pool::take_conn(addr, Duration::from_secs(30)).expect("pooled");
        let head = conn.exchange(GET, false, true).await.unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let body = ResponseBody::new(conn, &head, lease(addr), upstream(addr));
        assert_eq!(body_of(body).await.unwrap(), b"abcde");
        let mut conn = pool::take_conn(addr, Duration::from_secs(30)).expect("pooled again");
        let head = conn.exchange(GET, false, true).await.unwrap();
        assert!(!head.keep_alive);
        let body = ResponseBody::new(conn, &head, lease(addr), upstream(addr));
        assert_eq!(body_of(body).await.unwrap(), b"until close");
        assert!(
            pool::take_conn(addr, Duration::from_secs(30)).is_none(),
            "closed, not pooled"
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// hyper's server stops polling a body once it has had its declared length: the
    /// connection must go back to the pool then, not only at a final `None`.
    #[tokio::test]
    async fn a_body_read_to_its_length_gives_its_connection_back_without_a_last_poll() {
        let (addr, accepted) = raw_server(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
        ])
        .await;
        let mut conn = Conn::connect(addr, Duration::from_secs(1)).await.unwrap();
        let mut reused = false;
        for expected in [&b"hello"[..], b"hi", b"hi"] {
            let head = conn.exchange(GET, false, reused).await.unwrap();
            let mut body = ResponseBody::new(conn, &head, lease(addr), upstream(addr));
            let frame = http_body_util::BodyExt::frame(&mut body)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(frame.into_data().unwrap(), expected);
            drop(body);
            conn = pool::take_conn(addr, Duration::from_secs(30)).expect("given back");
            reused = true;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closed_pooled_connection_is_stale_and_a_cut_body_an_error() {
        let (addr, _) = raw_server(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort<close>",
            b"",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n<close>",
        ])
        .await;
        let second = Duration::from_secs(1);
        let mut conn = Conn::connect(addr, second).await.unwrap();
        conn.exchange(GET, false, false).await.unwrap();
        // The server closes the connection at the next request: a reused one is stale.
        let failure = conn.exchange(GET, false, true).await.unwrap_err();
        assert!(matches!(failure, Failure::Stale), "{failure}");
        let mut conn = Conn::connect(addr, second).await.unwrap();
        let head = conn.exchange(GET, false, false).await.unwrap();
        let body = ResponseBody::new(conn, &head, lease(addr), upstream(addr));
        let error = body_of(body).await.unwrap_err();
        assert!(
            error.to_string().contains("closed before the body ended"),
            "{error}"
        );
        // A new connection closed before any answer is the instance's failure, not stale.
        let mut conn = Conn::connect(addr, second).await.unwrap();
        let failure = conn.exchange(GET, false, false).await.unwrap_err();
        assert!(matches!(failure, Failure::Broken(_)), "{failure}");
        // A pooled connection that answered, if only with an interim answer, was not stale.
        let mut conn = Conn::connect(addr, second).await.unwrap();
        conn.exchange(GET, false, false).await.unwrap();
        let failure = conn.exchange(GET, false, true).await.unwrap_err();
        assert!(matches!(failure, Failure::Broken(_)), "{failure}");
    }

    /// A request's headers as `headers::request_headers` leaves them, sorted.
    fn rewritten(from_client: &HeaderMap, client: &Client<'_>) -> Vec<(String, Vec<u8>)> {
        let mut map = from_client.clone();
        headers::request_headers(&mut map, client, false);
        let mut pairs: Vec<_> = map
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        pairs.sort();
        pairs
    }

    /// The headers of an encoded request, sorted, and its request line.
    fn sent(encoded: &[u8]) -> (String, Vec<(String, Vec<u8>)>) {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut slots);
        let taken = request.parse(encoded).unwrap().unwrap();
        assert_eq!(taken, encoded.len());
        assert_eq!(request.version, Some(1));
        let line = format!("{} {}", request.method.unwrap(), request.path.unwrap());
        let mut pairs: Vec<_> = request
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect();
        pairs.sort();
        (line, pairs)
    }

    /// Header names a test request draws from: the ones the rules touch, and others.
    const NAMES: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "expect",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
        "proxy-connection",
        "transfer-encoding",
        "accept",
        "x-secret",
        "cookie",
        "close",
    ];

    fn header_strategy() -> impl Strategy<Value = (usize, String)> {
        let value = prop_oneof![
            Just("keep-alive".to_string()),
            Just("close".to_string()),
            Just("X-Secret, keep-alive".to_string()),
            Just(" cookie ,Host".to_string()),
            Just("10.0.0.1".to_string()),
            "[ -~]{0,12}",
        ];
        (0..NAMES.len(), value)
    }

    proptest! {
        /// The encoded request carries exactly the headers `headers::request_headers`
        /// would leave, whatever the client sent and whatever the gateway knows of it.
        #[test]
        fn the_encoded_request_has_the_rewritten_headers(
            fields in proptest::collection::vec(header_strategy(), 0..10),
            ip in proptest::option::of(Just("10.9.8.7".parse::<std::net::IpAddr>().unwrap())),
            tls in any::<bool>(),
            with_id in any::<bool>(),
            with_authority in any::<bool>(),
        ) {
            let mut from_client = HeaderMap::new();
            for (name, value) in &fields {
                if let Ok(value) = HeaderValue::from_str(value.trim()) {
                    from_client.append(HeaderName::from_static(NAMES[*name]), value);
                }
            }
            let id = HeaderValue::from_static("gw-7");
            let authority: http::uri::Authority = "example.com:8443".parse().unwrap();
            let client = Client {
                ip,
                tls,
                request_id: with_id.then_some(&id),
                authority: with_authority.then_some(&authority),
            };
            let encoded = encode_request(&Method::GET, "/a/b?c=d", &from_client, &client);
            let (line, pairs) = sent(&encoded);
            prop_assert_eq!(line, "GET /a/b?c=d");
            prop_assert_eq!(pairs, rewritten(&from_client, &client));
        }

        /// However a chunked body is cut into chunks and into reads, it decodes to itself
        /// and nothing past its end is consumed.
        #[test]
        fn chunked_bodies_decode_whole_across_any_reads(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..200, 0..8),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = chunked(&body, &sizes);
            wire.extend_from_slice(b"NEXT");
            let mut chunks = Chunks::Size;
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut fed = 0;
            let mut cut = cuts.iter().cycle();
            loop {
                match chunks.decode(&mut buf).unwrap() {
                    Decoded::Data(data) => decoded.extend_from_slice(&data),
                    Decoded::End => break,
                    Decoded::NeedMore => {
                        prop_assert!(fed < wire.len(), "ran out of input");
                        let n = (*cut.next().unwrap()).min(wire.len() - fed);
                        buf.extend_from_slice(&wire[fed..fed + n]);
                        fed += n;
                    }
                }
            }
            prop_assert_eq!(decoded, body);
            let mut left = buf.to_vec();
            left.extend_from_slice(&wire[fed..]);
            prop_assert_eq!(left, b"NEXT".to_vec());
        }

        /// The common names are matched as `HeaderName::from_bytes` would make them, in any
        /// case, and anything else is left to it.
        #[test]
        fn header_names_are_made_as_the_http_crate_makes_them(
            pick in 0..COMMON_NAMES.len() + 1,
            upper in proptest::collection::vec(any::<bool>(), 20),
            other in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let raw: Vec<u8> = match COMMON_NAMES.get(pick) {
                Some((name, _)) => name
                    .iter()
                    .zip(&upper)
                    .map(|(b, up)| if *up { b.to_ascii_uppercase() } else { *b })
                    .collect(),
                None => other,
            };
            let ours = header_name(&raw).ok();
            prop_assert_eq!(ours, HeaderName::from_bytes(&raw).ok());
        }

        /// Any bytes at all: the head parser answers without panicking, and a head it
        /// accepts takes a prefix of what it was given, leaving the rest as it was.
        #[test]
        fn the_head_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(_)) = parse_head(&mut buf, false) {
                prop_assert!(bytes.ends_with(&buf));
            }
            let mut with_status = b"HTTP/1.1 200 OK\r\n".to_vec();
            with_status.extend_from_slice(&bytes);
            let _ = parse(&with_status, false);
            let mut chunks = Chunks::Size;
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..bytes.len() + 2 {
                match chunks.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => {}
                    _ => break,
                }
            }
        }
    }
}
