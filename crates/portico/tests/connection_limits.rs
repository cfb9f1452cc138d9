//! The gateway's connection limits against clients that do not play along, over real
//! sockets: idle and silent connections (HTTP/1 and HTTP/2), slow heads, clients that read
//! nothing or withhold HTTP/2 flow-control credit, request bodies of unknown length over the
//! limit, and connections past `max_connections`.
//!
//! Servers here run with short limits (`SHORT`) so that the tests take seconds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// `[limits]` short enough for tests; `idle_timeout` longer than `header_timeout` so that
/// the tests tell them apart.
const SHORT: &str = "header_timeout = \"1s\"\nidle_timeout = \"4s\"\nsend_timeout = \"1s\"\n";

const PLAIN: &str = "[[listener]]\naddr = \"127.0.0.1:0\"\n";

/// A server with `listeners` (`None`: the default TLS one), the `[limits]` keys `limits`
/// and the further sections `extra`.
async fn server(listeners: Option<&str>, limits: &str, extra: &str) -> Portico {
    let mut builder = Portico::builder(BIN)
        .toml(&format!("[limits]\n{limits}"))
        .toml(extra);
    if let Some(listeners) = listeners {
        builder = builder.listeners_toml(listeners);
    }
    builder.start().await.expect("the server starts")
}

/// Reads until EOF or error (a reset counts as closed); returns what was read and when the
/// connection ended, or `None` for the time if it was still open after `limit`.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return (got, Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, Some(start.elapsed())),
        }
    }
    (got, None)
}

/// Waits until `server`'s stderr (where the access log goes) satisfies `done`.
async fn wait_for_log(server: &Portico, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = server.stderr();
        if done(&log) || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- raw HTTP/2 frames

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The types of the HTTP/2 frames in `bytes` (a server's side of a connection).
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// An HTTP/2 client (h2c, prior knowledge) whose connection runs in the background.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://x{path}"))
        .body(())
        .expect("request")
}

// ---------------------------------------------------------------- idle connections

/// Finding 2: idle HTTP/2 connections held their slots forever.
#[tokio::test]
async fn idle_http2_connections_get_goaway_then_close_and_give_back_their_slots() {
    let server = server(Some(PLAIN), &format!("{SHORT}max_connections = 5\n"), "").await;
    let addr = server.addr();
    let idle: Vec<_> = (0..5)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                let mut stream = TcpStream::connect(addr).expect("connects");
                stream.write_all(H2_PREFACE).expect("preface");
                stream
                    .write_all(&h2_frame(SETTINGS, 0, 0, &[]))
                    .expect("settings");
                read_until_closed(&mut stream, Duration::from_secs(10))
            })
        })
        .collect();
    for connection in idle {
        let (bytes, closed) = connection.await.expect("reader");
        let closed = closed.expect("an idle HTTP/2 connection is closed");
        assert!(
            h2_frame_types(&bytes).contains(&GOAWAY),
            "closed without GOAWAY: {:?}",
            h2_frame_types(&bytes)
        );
        assert!(
            closed >= Duration::from_millis(3800),
            "closed after {closed:?}: before the idle timeout (4 s)"
        );
    }
    let answer = reqwest::get(server.url("/healthz"))
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200, "the slots came back");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_lasts_the_idle_timeout_not_the_header_timeout() {
    let server = server(Some(PLAIN), SHORT, "").await;
    let addr = server.addr();
    let (answer, closed) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        read_until_closed(&mut stream, Duration::from_secs(10))
    })
    .await
    .expect("reader");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let closed = closed.expect("closed");
    assert!(
        closed >= Duration::from_millis(3800) && closed < Duration::from_secs(8),
        "closed after {closed:?}, not after the idle timeout (4 s)"
    );
}

#[tokio::test]
async fn a_head_sent_slowly_is_cut_at_the_header_timeout_not_the_idle_timeout() {
    let server = server(Some(PLAIN), SHORT, "").await;
    let addr = server.addr();
    let (answer, closed) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connects");
        let start = Instant::now();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("request line");
        // One header byte every 200 ms: the whole head would take 8 s.
        for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if stream.write_all(&[*byte]).is_err() || start.elapsed() > Duration::from_secs(8) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5));
        (answer, start.elapsed())
    })
    .await
    .expect("writer");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("200 OK"),
        "a slow head must not be served: {text}"
    );
    assert!(
        closed < Duration::from_millis(3500),
        "cut off after {closed:?}"
    );
}

#[tokio::test]
async fn silent_clients_are_dropped_at_the_header_timeout_with_and_without_tls() {
    let listeners = "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = { self_signed = true }\n\
                     [[listener]]\naddr = \"127.0.0.1:0\"\n";
    let server = server(Some(listeners), SHORT, "").await;
    for listener in server.listeners() {
        let addr = listener.addr;
        let closed = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).expect("connects");
            read_until_closed(&mut stream, Duration::from_secs(10)).1
        })
        .await
        .expect("reader")
        .expect("closed");
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_millis(3500),
            "tls {}: closed after {closed:?}",
            listener.tls
        );
    }
}

#[tokio::test]
async fn a_slow_upload_is_cut_by_neither_the_header_nor_the_idle_timeout() {
    let listeners = "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"messages\"]\n";
    let server = server(Some(listeners), SHORT, "").await;
    let addr = server.addr();
    let answer = tokio::task::spawn_blocking(move || {
        let body = br#"{"message": "uploaded slowly"}"#;
        let head = format!(
            "POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream.write_all(head.as_bytes()).expect("head");
        // The body takes about 5 s, past both timeouts: the head was complete, so the
        // request is in progress and only the request timeout applies.
        for byte in body {
            stream.write_all(&[*byte]).expect("body byte");
            std::thread::sleep(Duration::from_millis(5000 / body.len() as u64));
        }
        read_until_closed(&mut stream, Duration::from_secs(5)).0
    })
    .await
    .expect("writer");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
}

// ---------------------------------------------------------------- clients that read nothing

use fib::cache::MAX_PRODUCERS;

/// More requests than `MAX_PRODUCERS` (32), so that on old code every producer slot is held
/// and the next answer past the cache waits for one forever.
const STALLED: usize = 40;

/// A fib service with no cache: every answer needs a producer slot.
const UNCACHED_FIB: &str = "[fib]\ncache_bytes = 0\n";

/// Waits until all `STALLED` requests for `/fib/100000` reached the fib service (each past
/// the cache: holding a producer slot or waiting for one).
async fn wait_for_fib_misses(server: &Portico) {
    let metrics = server.url("/metrics");
    let wanted = format!("portico_fib_cache_misses_total {STALLED}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = reqwest::get(&metrics)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if text.lines().any(|line| line == wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the requests did not arrive: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_aborted_fib_lines(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("/fib/100000 ") && line.contains("(aborted)"))
        .count()
}

/// A connection asking for 1 GB and reading nothing, with a small receive buffer so that
/// the server's writes stall soon.
fn non_reading_client(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    socket.connect(&addr.into()).expect("connects");
    let mut stream = TcpStream::from(socket);
    stream
        .write_all(b"GET /fib/100000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    stream
}

/// Finding 4 over HTTP/1: slow readers held their connection, a producer slot and a
/// blocking thread for as long as they liked.
#[tokio::test]
async fn clients_that_read_nothing_are_cut_off_and_answers_past_the_cache_go_on() {
    let server = server(Some(PLAIN), SHORT, UNCACHED_FIB).await;
    let addr = server.addr();
    let stalled: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..STALLED).map(|_| non_reading_client(addr)).collect()
    })
    .await
    .expect("clients");
    wait_for_fib_misses(&server).await;
    let answer = reqwest::Client::new()
        .get(server.url("/fib/5000"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer past the cache while 40 clients read nothing");
    assert_eq!(answer.status(), 200);
    let log = wait_for_log(&server, Duration::from_secs(15), |log| {
        count_aborted_fib_lines(log) == STALLED
    })
    .await;
    let fib_lines: Vec<&str> = log.lines().filter(|l| l.contains("/fib/")).collect();
    assert_eq!(
        count_aborted_fib_lines(&log),
        STALLED,
        "{}",
        fib_lines.join("\n")
    );
    // What the clients see: the bytes already in flight, then the end.
    let reads = tokio::task::spawn_blocking(move || {
        stalled
            .into_iter()
            .map(|mut stream| {
                let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
                (bytes.len(), closed)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("readers");
    for (read, closed) in reads {
        assert!(closed.is_some(), "still open after reading {read} bytes");
        assert!(read < 64 << 20, "{read} bytes: the answer went on");
    }
}

/// Finding 4 over HTTP/2: a client that reads its connection but grants no flow-control
/// credit to the streams it opened.
#[tokio::test]
async fn an_http2_client_that_withholds_flow_control_credit_is_cut_off() {
    let server = server(Some(PLAIN), SHORT, UNCACHED_FIB).await;
    let mut client = h2_client(server.addr()).await;
    let mut pending = Vec::new();
    for _ in 0..STALLED {
        client = client.ready().await.expect("stream slot");
        let (response, _) = client
            .send_request(h2_get("/fib/100000"), true)
            .expect("sent");
        pending.push(response);
    }
    wait_for_fib_misses(&server).await;
    // Heads arrive (they need no credit); bodies are never read, so no WINDOW_UPDATE is sent.
    // The streams with a producer are logged as aborted; the others were still waiting for
    // one, had no response yet, and go with the connection unlogged.
    let log = wait_for_log(&server, Duration::from_secs(15), |log| {
        count_aborted_fib_lines(log) >= MAX_PRODUCERS
    })
    .await;
    let fib_lines: Vec<&str> = log.lines().filter(|l| l.contains("/fib/")).collect();
    assert_eq!(
        count_aborted_fib_lines(&log),
        MAX_PRODUCERS,
        "{}",
        fib_lines.join("\n")
    );
    let answer = reqwest::Client::new()
        .get(server.url("/fib/5000"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200);
    drop(pending);
}

// ---------------------------------------------------------------- bodies of unknown length

/// The gateway's body limit, lower than the messages service's own limit (which let a
/// chunked body through).
const LOW_GATEWAY_LIMIT: &str = "max_body_bytes = 1000\n";
const HIGH_MESSAGES_LIMIT: &str = "[messages]\nmax_body_bytes = 100000\n";

fn json_message(size: usize) -> Vec<u8> {
    let mut body = b"{\"message\": \"".to_vec();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// Finding 5 over HTTP/1.1: a chunked body skipped the gateway's limit.
#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_over_http1() {
    let listeners = "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"messages\"]\n";
    let server = server(Some(listeners), LOW_GATEWAY_LIMIT, HIGH_MESSAGES_LIMIT).await;
    let addr = server.addr();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connects");
        let head = "POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).expect("head");
        for chunk in json_message(5000).chunks(500) {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(chunk);
            framed.extend_from_slice(b"\r\n");
            if stream.write_all(&framed).is_err() {
                break; // the server answered and closed: fine
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        read_until_closed(&mut stream, Duration::from_secs(5)).0
    })
    .await
    .expect("client");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("over the limit of 1000 bytes"), "{text}");
    assert!(
        text.contains("application/json"),
        "the gateway's JSON error: {text}"
    );
}

/// Finding 5 over HTTP/2: a body sent without `content-length` skipped the limit.
#[tokio::test]
async fn a_body_without_length_over_the_limit_gets_413_over_http2() {
    let listeners = "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"messages\"]\n";
    let server = server(Some(listeners), LOW_GATEWAY_LIMIT, HIGH_MESSAGES_LIMIT).await;
    let client = h2_client(server.addr()).await;
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post("http://x/messages")
        .header("content-type", "application/json")
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("sent");
    let message = Bytes::from(json_message(5000));
    let mut offset = 0;
    while offset < message.len() {
        let end = (offset + 500).min(message.len());
        if body
            .send_data(message.slice(offset..end), end == message.len())
            .is_err()
        {
            break; // the server answered and reset the stream: fine
        }
        offset = end;
    }
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered in time")
        .expect("a response");
    assert_eq!(response.status(), 413);
    let mut received = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = received.data().await {
        text.extend_from_slice(&chunk.expect("body"));
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("over the limit of 1000 bytes"), "{text}");
}

// ---------------------------------------------------------------- over max_connections

/// A ClientHello, as a TLS client's first flight.
fn client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut client =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("hello");
    hello
}

#[tokio::test]
async fn a_tls_client_over_the_limit_is_closed_without_a_server_hello() {
    let server = server(None, "max_connections = 1\n", "").await;
    let addr = server.addr();
    let (reply, closed) = tokio::task::spawn_blocking(move || {
        let held = TcpStream::connect(addr).expect("connects");
        std::thread::sleep(Duration::from_millis(200));
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream.write_all(&client_hello()).expect("hello");
        let outcome = read_until_closed(&mut stream, Duration::from_secs(5));
        drop(held);
        outcome
    })
    .await
    .expect("client");
    assert!(
        reply.is_empty(),
        "the server answered: {:02x?}",
        &reply[..reply.len().min(16)]
    );
    let closed = closed.expect("closed");
    assert!(closed < Duration::from_secs(1), "closed after {closed:?}");
}

#[tokio::test]
async fn a_cleartext_client_over_the_limit_gets_a_static_503_even_speaking_http2() {
    let server = server(Some(PLAIN), "max_connections = 2\n", "").await;
    let addr = server.addr();
    let replies = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(addr).expect("connects"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let replies: Vec<_> = [&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..], H2_PREFACE]
            .into_iter()
            .map(|first| {
                let mut stream = TcpStream::connect(addr).expect("connects");
                let _ = stream.write_all(first);
                read_until_closed(&mut stream, Duration::from_secs(5))
            })
            .collect();
        drop(held);
        replies
    })
    .await
    .expect("clients");
    for (reply, closed) in replies {
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("retry-after: 1"), "{text}");
        assert!(text.contains("too many connections"), "{text}");
        assert!(closed.expect("closed") < Duration::from_secs(1));
    }
    // The held connections are closed: their slots come back once the server sees EOF. Until
    // then a request is refused: a 503, or an error when the client was too slow to send its
    // request within the refusal's wait and read the 503 as an unsolicited answer.
    let url = server.url("/healthz");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let outcome = reqwest::get(&url).await.map(|answer| answer.status());
        if matches!(outcome, Ok(status) if status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {outcome:?} after the held connections closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
