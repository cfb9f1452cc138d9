//! The fib client's choice of back end, against real TCP servers speaking the back-end
//! protocol in this test: each answers after a delay of its own and counts what it answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fib::client::BackendClient;
use fib::protocol::{self, Event, RequestScanner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A `fib-backend`-like server that waits `delay` before each reply (F(0..n) for n <= 150).
struct DelayedBackend {
    addr: String,
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayedBackend {
    async fn start(delay: Duration) -> DelayedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let answered = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&answered);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, delay, Arc::clone(&counter)));
            }
        });
        DelayedBackend {
            addr,
            answered,
            task,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for DelayedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut conn: TcpStream, delay: Duration, answered: Arc<AtomicU64>) {
    let mut scanner = RequestScanner::new();
    let mut buf = [0u8; 1024];
    loop {
        let read = match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        scanner.push(&buf[..read]);
        while let Some(event) = scanner.next_event() {
            let Event::Request(object) = event else {
                return;
            };
            let n = protocol::parse_request(&object, 150).expect("a valid request");
            tokio::time::sleep(delay).await;
            if conn.write_all(&reply(n)).await.is_err() {
                return;
            }
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The framed reply for the first `n` Fibonacci numbers.
fn reply(n: u64) -> Vec<u8> {
    let (mut a, mut b) = (0u128, 1u128);
    let mut numbers = Vec::new();
    for _ in 0..n {
        numbers.push(a.to_string());
        (a, b) = (b, a + b);
    }
    let text = numbers.join(" ");
    let mut out = protocol::reply_start(n, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(protocol::REPLY_TAIL);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_back_end_gets_less_traffic_than_a_fast_one() {
    let fast = DelayedBackend::start(Duration::ZERO).await;
    let slow = DelayedBackend::start(Duration::from_millis(20)).await;
    let client = Arc::new(BackendClient::new(
        &[slow.addr.clone(), fast.addr.clone()],
        Duration::from_secs(5),
        8,
        0, // no reply cache: every call goes to a back end
    ));
    let callers: Vec<_> = (0..8u64)
        .map(|caller| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                for i in 0..60u64 {
                    let n = 1 + (caller * 7 + i) % 90;
                    let mut text = client.text(n).await.expect("answered");
                    while let Some(chunk) = text.next_chunk().await {
                        chunk.expect("whole reply");
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    let (fast, slow) = (fast.answered(), slow.answered());
    eprintln!("fast back end answered {fast}, slow (20 ms) {slow}");
    assert_eq!(fast + slow, 8 * 60);
    // Round robin would split them evenly; by latency × in flight the slow one gets little.
    assert!(
        slow * 5 < fast,
        "slow back end got {slow} calls, fast one {fast}"
    );
}
