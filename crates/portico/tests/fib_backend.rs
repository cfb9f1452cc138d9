//! `portico fib-backend` over real sockets (the original framing byte for byte, split,
//! coalesced and malformed requests, a client leaving mid-reply), and the REST tier calling two
//! real back-end processes while one is killed and restarted.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::Portico;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// A `portico fib-backend` child process, killed on drop.
struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    /// Starts a back end on `listen` (port 0 for a free one) and reads the bound address it
    /// prints.
    fn start(listen: &str, extra: &[&str]) -> Backend {
        let mut child = Command::new(BIN)
            .args(["fib-backend", "--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting fib-backend");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("announcement");
        let addr = line
            .trim()
            .strip_prefix("portico: fib-backend listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Backend { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn connect(backend: &Backend) -> TcpStream {
    let stream = TcpStream::connect(backend.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Reads one framed reply: the 8-byte little-endian length, then the JSON.
async fn read_reply(stream: &mut TcpStream) -> String {
    let mut prefix = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut prefix))
        .await
        .expect("reply within 30 s")
        .expect("length prefix");
    let len = i64::from_le_bytes(prefix);
    assert!(len > 0 && len < 1 << 30, "length {len}");
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await.expect("reply body");
    String::from_utf8(body).expect("utf-8")
}

const TEN: &str = r#"{"N": 10, "result": "0 1 1 2 3 5 8 13 21 34"}"#;

#[tokio::test]
async fn replies_use_the_original_framing_byte_for_byte() {
    let backend = Backend::start("127.0.0.1:0", &[]);
    let mut stream = connect(&backend).await;
    stream.write_all(br#"{"N": 10}"#).await.expect("write");
    let mut expected = (TEN.len() as i64).to_le_bytes().to_vec();
    expected.extend_from_slice(TEN.as_bytes());
    let mut got = vec![0u8; expected.len()];
    stream.read_exact(&mut got).await.expect("reply");
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_request_split_into_one_byte_writes_is_answered() {
    let backend = Backend::start("127.0.0.1:0", &[]);
    let mut stream = connect(&backend).await;
    for byte in br#"{"N": 10}"# {
        stream.write_all(&[*byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(read_reply(&mut stream).await, TEN);
}

#[tokio::test]
async fn two_requests_in_one_write_get_two_replies_in_order() {
    let backend = Backend::start("127.0.0.1:0", &[]);
    let mut stream = connect(&backend).await;
    stream
        .write_all(br#"{"N": 10}{"N": 3}"#)
        .await
        .expect("write");
    assert_eq!(read_reply(&mut stream).await, TEN);
    assert_eq!(
        read_reply(&mut stream).await,
        r#"{"N": 3, "result": "0 1 1"}"#
    );
}

#[tokio::test]
async fn garbage_gets_an_error_reply_and_the_connection_stays_usable() {
    let backend = Backend::start("127.0.0.1:0", &[]);
    let mut stream = connect(&backend).await;
    stream.write_all(b"GET / HTTP/1.0\n").await.expect("write");
    let error: serde_json::Value =
        serde_json::from_str(&read_reply(&mut stream).await).expect("JSON");
    assert!(error["error"]
        .as_str()
        .expect("error")
        .contains("expected a JSON object"));
    stream.write_all(br#"xx{"N": 10}"#).await.expect("write");
    let error: serde_json::Value =
        serde_json::from_str(&read_reply(&mut stream).await).expect("JSON");
    assert!(error["error"].is_string());
    assert_eq!(read_reply(&mut stream).await, TEN);
    for bad in [
        &br#"{"N": 0}"#[..],
        br#"{"N": -1}"#,
        br#"{"N": "abc"}"#,
        br#"{"N": 100001}"#,
        br#"{"M": 1}"#,
    ] {
        stream.write_all(bad).await.expect("write");
        let reply: serde_json::Value =
            serde_json::from_str(&read_reply(&mut stream).await).expect("JSON");
        assert!(
            reply["error"].is_string(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    stream.write_all(br#"{"N": 10}"#).await.expect("write");
    assert_eq!(read_reply(&mut stream).await, TEN);
}

#[tokio::test]
async fn an_oversized_request_is_refused_and_closed() {
    let backend = Backend::start("127.0.0.1:0", &[]);
    let mut stream = connect(&backend).await;
    let mut huge = b"{\"N\": \"".to_vec();
    huge.extend(std::iter::repeat_n(b'1', 10_000));
    let _ = stream.write_all(&huge).await; // the server may close before reading it all
    let reply = read_reply(&mut stream).await;
    assert!(reply.contains("longer than"), "{reply}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_client_leaving_mid_reply_does_not_hurt_the_server() {
    let mut backend = Backend::start("127.0.0.1:0", &["--cache-bytes", "1000000"]);
    for _ in 0..3 {
        let mut stream = connect(&backend).await;
        stream.write_all(br#"{"N": 50000}"#).await.expect("write");
        let mut some = vec![0u8; 100_000];
        stream
            .read_exact(&mut some)
            .await
            .expect("the start of a large reply");
        drop(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(backend.is_running());
    let mut stream = connect(&backend).await;
    stream.write_all(br#"{"N": 10}"#).await.expect("write");
    assert_eq!(read_reply(&mut stream).await, TEN);
}

#[tokio::test]
async fn connections_over_the_limit_are_told_and_closed() {
    let backend = Backend::start("127.0.0.1:0", &["--max-connections", "1"]);
    let mut first = connect(&backend).await;
    first.write_all(br#"{"N": 10}"#).await.expect("write");
    assert_eq!(read_reply(&mut first).await, TEN);
    let mut second = connect(&backend).await;
    let reply = read_reply(&mut second).await;
    assert!(reply.contains("too many connections"), "{reply}");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let backend = Backend::start("127.0.0.1:0", &["--idle-timeout", "1"]);
    let mut stream = connect(&backend).await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "closed after the idle timeout: {read:?}"
    );
}

#[tokio::test]
async fn the_rest_tier_answers_through_a_back_end_exactly() {
    let backend = Backend::start("127.0.0.1:0", &["--cache-bytes", "100000"]);
    let local = Portico::start(BIN, "").await.expect("portico starts");
    let remote = Portico::start(
        BIN,
        &format!(
            "[fib]\nbackends = [\"{}\"]\nclient_cache_bytes = 0\n",
            backend.addr
        ),
    )
    .await
    .expect("portico starts");
    // Small (read whole) and large (streamed through, past BUFFER_LIMIT) replies.
    for n in [1, 10, 100, 5000, 12_000] {
        let path = format!("/fib/{n}");
        let want = local
            .client()
            .get(local.url(&path))
            .send()
            .await
            .expect("local");
        let want = want.text().await.expect("body");
        let got = remote
            .client()
            .get(remote.url(&path))
            .send()
            .await
            .expect("remote");
        assert_eq!(got.status(), 200, "N = {n}");
        assert_eq!(got.text().await.expect("body"), want, "N = {n}");
    }
    let refused = remote
        .client()
        .get(remote.url("/fib/0"))
        .send()
        .await
        .expect("remote");
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn no_back_end_is_a_502_naming_it_and_the_failure_is_not_cached() {
    let mut backend = Backend::start("127.0.0.1:0", &[]);
    let addr = backend.addr;
    backend.kill();
    // The reply cache is on (default budget): it must not keep the failure.
    let server = Portico::start(BIN, &format!("[fib]\nbackends = [\"{addr}\"]\n"))
        .await
        .expect("portico starts");
    let response = server
        .client()
        .get(server.url("/fib/10"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 502);
    let body = response.text().await.expect("body");
    assert!(body.contains(&addr.to_string()), "{body}");

    let _backend = Backend::start(&addr.to_string(), &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = server
            .client()
            .get(server.url("/fib/10"))
            .send()
            .await
            .expect("answer");
        if response.status() == 200 {
            let body = response.text().await.expect("body");
            assert_eq!(
                body,
                "{\n  \"N\": 10,\n  \"result\": \"0 1 1 2 3 5 8 13 21 34\"\n}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "back end not used within 15 s of its start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `workers` request loops against `/fib/<n>` until `stop`; counts successes and any
/// failure (a failure is a lost request).
fn load(
    server: &Portico,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<Vec<String>>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let handles = (0..workers)
        .map(|worker| {
            let client = server.client();
            let base = server.url("/fib/");
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut problems = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = 100 + (worker as u64 * 37 + i * 11) % 400;
                    i += 1;
                    let answer = client.get(format!("{base}{n}")).send().await;
                    let good = match answer {
                        Ok(r) if r.status() == 200 => match r.text().await {
                            Ok(body) => body.starts_with(&format!(
                                "{{\n  \"N\": {n},\n  \"result\": \"0 1 1 2"
                            )),
                            Err(_) => false,
                        },
                        Ok(r) => {
                            problems.push(format!("N = {n}: {}", r.status()));
                            false
                        }
                        Err(e) => {
                            problems.push(format!("N = {n}: {e}"));
                            false
                        }
                    };
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                problems
            })
        })
        .collect();
    (ok, failed, handles)
}

#[tokio::test]
async fn a_back_end_whose_connections_are_all_busy_is_not_counted_as_failing() {
    let backend = Backend::start("127.0.0.1:0", &[]);
    let server = Portico::start(
        BIN,
        &format!(
            "[fib]\nbackends = [\"{}\"]\nclient_cache_bytes = 0\npool_size = 1\nbackend_timeout = \"1s\"\n",
            backend.addr
        ),
    )
    .await
    .expect("portico starts");
    // A reply of many megabytes, not read: its relay stalls and holds the one connection.
    let held = server
        .client()
        .get(server.url("/fib/12000"))
        .send()
        .await
        .expect("the large reply starts");
    assert_eq!(held.status(), 200);
    let busy = server
        .client()
        .get(server.url("/fib/7"))
        .send()
        .await
        .expect("answered");
    assert_eq!(busy.status(), 503, "{:?}", busy.text().await);
    let errors = format!(
        "portico_fib_backend_errors_total{{backend=\"{}\"",
        backend.addr
    );
    let text = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains("portico_fib_backend_calls_total"),
        "the back-end metrics are on this page:\n{text}"
    );
    assert!(
        !text.contains(&errors),
        "busy counted as a failure:\n{text}"
    );
    drop(held);
    let after = server
        .client()
        .get(server.url("/fib/7"))
        .send()
        .await
        .expect("answered");
    assert_eq!(after.status(), 200);
}

async fn backend_calls(server: &Portico, backend: SocketAddr) -> u64 {
    metric(
        server,
        &format!("portico_fib_backend_calls_total{{backend=\"{backend}\"}} "),
    )
    .await
}

async fn metric(server: &Portico, needle: &str) -> u64 {
    let metrics = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    let metrics = metrics.text().await.expect("body");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(needle))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test]
async fn killing_a_back_end_under_load_loses_no_request_and_it_returns_after_restart() {
    let mut a = Backend::start("127.0.0.1:0", &[]);
    let mut b = Backend::start("127.0.0.1:0", &[]);
    let a_addr = a.addr;
    let server = Portico::start(
        BIN,
        &format!(
            "[fib]\nbackends = [\"{}\", \"{}\"]\nclient_cache_bytes = 0\nbackend_timeout = \"2s\"\n",
            a.addr, b.addr
        ),
    )
    .await
    .expect("portico starts");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = load(&server, 16, stop.clone());

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before_kill = ok.load(Ordering::Relaxed);
    a.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        ok.load(Ordering::Relaxed) > before_kill,
        "requests go on while A is down"
    );

    let calls_while_down = backend_calls(&server, a_addr).await;
    a = Backend::start(&a_addr.to_string(), &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while backend_calls(&server, a_addr).await <= calls_while_down {
        assert!(
            Instant::now() < deadline,
            "A not used again within 15 s of its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Now B goes: everything must fall over to the restarted A.
    b.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut problems = Vec::new();
    for handle in handles {
        problems.extend(handle.await.expect("worker"));
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} requests lost of {}: {problems:?}",
        ok + failed
    );
    assert!(ok > 100, "only {ok} requests in the run");
    assert!(a.is_running());
    let retries = metric(&server, "portico_fib_backend_retries_total ").await;
    assert!(retries > 0, "the kills were felt and retried");
    eprintln!("retries: {retries}");
    eprintln!("failover run: {ok} requests, none lost");
}

#[tokio::test]
async fn sigterm_closes_idle_connections_and_exits_zero() {
    let mut backend = Backend::start("127.0.0.1:0", &[]);
    let mut idle = connect(&backend).await;
    idle.write_all(br#"{"N": 10}"#).await.expect("write");
    assert_eq!(read_reply(&mut idle).await, TEN);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(backend.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "idle connection closed: {closed:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = backend.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "fib-backend did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}
