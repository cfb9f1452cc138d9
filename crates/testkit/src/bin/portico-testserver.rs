//! `portico-testserver`: a small HTTP/1.1 server for the service manager's tests and
//! benchmarks (not part of the product). An agent starts it as a managed instance; its
//! latency is set per instance so tests can make one instance slow.
//!
//! ```text
//! portico-testserver [--port N] [--id NAME] [--delay 50ms]
//! ```
//!
//! `--port` defaults to `$PORT` (the agent sets it), `--id` to `$PORTICO_INSTANCE_ID`, else
//! `testserver-PORT`. It listens on `0.0.0.0` (so agents in other network namespaces can
//! reach it) and answers:
//!
//! - any path: `200 {"server":ID,"port":PORT,"method":..,"path":..}` after the delay;
//! - `GET /_health`: `200 ok` (after the delay, like any request);
//! - `PUT /_delay` with a body such as `250ms`: sets the delay from now on; `GET /_delay`;
//! - `GET /_stats`: `{"server":..,"port":..,"requests":N,"in_flight":N,"bodies":N}`
//!   (`bodies`: request bodies `/_echo` read to their end; control paths
//!   `/_delay` and `/_stats` are neither delayed nor counted);
//! - `/_echo...`: the request as JSON (method, path with query, headers, body as text);
//! - `/_stream...`: the request body streamed back as the response body, unbuffered;
//! - `/_status/NNN`: an empty answer with status NNN;
//! - `/_abort`: closes the connection without answering;
//! - `/_ws`: a WebSocket echo (text and binary messages come back; ping gets pong).

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

struct State {
    id: String,
    port: u16,
    delay_micros: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    /// Request bodies read whole by `/_echo`.
    bodies: AtomicU64,
}

fn main() {
    let (port, id, delay) = match parse_args(std::env::args().skip(1).collect()) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("portico-testserver: {message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    if let Err(error) = runtime.block_on(serve(port, id, delay)) {
        eprintln!("portico-testserver: {error}");
        std::process::exit(1);
    }
}

fn parse_args(args: Vec<String>) -> Result<(u16, Option<String>, Duration), String> {
    let mut port = std::env::var("PORT").ok();
    let mut id = std::env::var("PORTICO_INSTANCE_ID").ok();
    let mut delay = Duration::ZERO;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => port = Some(value()?),
            "--id" => id = Some(value()?),
            "--delay" => {
                let text = value()?;
                delay = humantime::parse_duration(&text)
                    .map_err(|e| format!("--delay {text:?}: {e}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let port = port.ok_or("--port or PORT is required")?;
    let port = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    Ok((port, id, delay))
}

async fn serve(port: u16, id: Option<String>, delay: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let port = listener.local_addr()?.port();
    let state = Arc::new(State {
        id: id.unwrap_or_else(|| format!("testserver-{port}")),
        port,
        delay_micros: AtomicU64::new(delay.as_micros() as u64),
        requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        bodies: AtomicU64::new(0),
    });
    println!("portico-testserver {} listening on port {port}", state.id);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(state.clone(), request));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let _ = connection.await;
        });
    }
}

async fn answer(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Body>, String> {
    let path = request.uri().path().to_string();
    match (request.method().as_str(), path.as_str()) {
        ("PUT", "/_delay") => return Ok(set_delay(&state, request).await),
        ("GET", "/_delay") => {
            let delay = Duration::from_micros(state.delay_micros.load(Ordering::Relaxed));
            return Ok(text(
                StatusCode::OK,
                humantime::format_duration(delay).to_string(),
            ));
        }
        ("GET", "/_stats") => return Ok(stats(&state)),
        _ => {}
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    state.in_flight.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight(state.clone());
    let delay = state.delay_micros.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_micros(delay)).await;
    }
    if path == "/_abort" {
        return Err("aborted on request".into());
    }
    if path == "/_ws" {
        return Ok(websocket(request));
    }
    if path.starts_with("/_echo") {
        return Ok(echo(&state, request).await);
    }
    if path.starts_with("/_stream") {
        return Ok(Response::new(request.into_body().boxed()));
    }
    if let Some(code) = path.strip_prefix("/_status/") {
        let status = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
        return Ok(text(
            status.unwrap_or(StatusCode::BAD_REQUEST),
            String::new(),
        ));
    }
    if path == "/_health" {
        return Ok(text(StatusCode::OK, "ok\n".into()));
    }
    let body = serde_json::json!({
        "server": state.id,
        "port": state.port,
        "method": request.method().as_str(),
        "path": request.uri().to_string(),
    });
    Ok(json(StatusCode::OK, &body))
}

/// Counts a request in flight until it is answered.
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn set_delay(state: &State, request: Request<Incoming>) -> Response<Body> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {error}\n"),
            )
        }
    };
    let text_body = String::from_utf8_lossy(&body).trim().to_string();
    match humantime::parse_duration(&text_body) {
        Ok(delay) => {
            state
                .delay_micros
                .store(delay.as_micros() as u64, Ordering::Relaxed);
            text(StatusCode::OK, format!("delay {text_body}\n"))
        }
        Err(error) => text(
            StatusCode::BAD_REQUEST,
            format!("bad delay {text_body:?}: {error}\n"),
        ),
    }
}

fn stats(state: &State) -> Response<Body> {
    let body = serde_json::json!({
        "server": state.id,
        "port": state.port,
        "requests": state.requests.load(Ordering::Relaxed),
        "in_flight": state.in_flight.load(Ordering::Relaxed),
        "bodies": state.bodies.load(Ordering::Relaxed),
    });
    json(StatusCode::OK, &body)
}

async fn echo(state: &State, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => {
            state.bodies.fetch_add(1, Ordering::Relaxed);
            collected.to_bytes()
        }
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {error}\n"),
            )
        }
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let described = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    json(StatusCode::OK, &described)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        "text/plain".parse().expect("a valid header value"),
    );
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(format!("{value}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("a valid header value"),
    );
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Answers the handshake with 101 and echoes frames on the upgraded connection.
fn websocket(mut request: Request<Incoming>) -> Response<Body> {
    let key = request
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let is_upgrade = request
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = key.filter(|_| is_upgrade) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade\n".into(),
        );
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let _ = echo_frames(TokioIo::new(upgraded)).await;
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("upgrade", "websocket".parse().expect("valid"));
    headers.insert("connection", "Upgrade".parse().expect("valid"));
    let accept = accept_key(&key);
    headers.insert(
        "sec-websocket-accept",
        accept.parse().expect("base64 is a valid value"),
    );
    response
}

/// RFC 6455 section 4.2.2: base64(SHA-1(key + GUID)).
fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Reads client frames (masked), sends each back unmasked; ping becomes pong; close is
/// answered with close and ends the connection.
async fn echo_frames<S>(mut stream: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await?;
        let (fin_and_opcode, masked, short_len) = (head[0], head[1] & 0x80 != 0, head[1] & 0x7f);
        let len = match short_len {
            126 => u64::from(stream.read_u16().await?),
            127 => stream.read_u64().await?,
            n => u64::from(n),
        };
        if len > 16 * 1024 * 1024 {
            return Err(std::io::Error::other("frame too large"));
        }
        let mut mask = [0u8; 4];
        if masked {
            stream.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await?;
        if masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        let opcode = fin_and_opcode & 0x0f;
        let reply_head = match opcode {
            0x9 => (fin_and_opcode & 0xf0) | 0xA,
            _ => fin_and_opcode,
        };
        stream
            .write_all(&frame_head(reply_head, payload.len()))
            .await?;
        stream.write_all(&payload).await?;
        stream.flush().await?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}

fn frame_head(first: u8, len: usize) -> Vec<u8> {
    let mut head = vec![first];
    match len {
        0..=125 => head.push(len as u8),
        126..=0xffff => {
            head.push(126);
            head.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            head.push(127);
            head.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    head
}
