//! A full disk under the real binary: the data directory is a 4 MiB tmpfs, clients POST
//! distinct messages until the embedded store answers `507`, then the tmpfs is grown to
//! 16 MiB, and without a restart every message acknowledged before must be served again and
//! new POSTs must succeed. (Before the store could reopen itself, every request answered 500
//! from the first full write on, forever.) Needs root to mount the tmpfs: skipped without it,
//! unless `CI` is set, when that is a failure.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use testkit::{Portico, Tmpfs};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const MIB: u64 = 1 << 20;
/// About 40 KiB per message: the 4 MiB disk fills after some dozens.
const MESSAGE_BYTES: usize = 40 * 1024;
/// Bound on the POSTs tried before the disk must have filled up (4 MiB / 40 KiB ~ 100).
const MAX_POSTS: usize = 1000;
/// Longest the store may take to notice the space that came back (its reopen backoff tops
/// out at 5 s; generous for busy machines).
const HEAL_LIMIT: Duration = Duration::from_secs(60);

struct Answer {
    status: StatusCode,
    err_msg: String,
    json: serde_json::Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let json: serde_json::Value = response.json().await.unwrap_or_default();
    let err_msg = json["err_msg"].as_str().unwrap_or_default().to_string();
    Answer {
        status,
        err_msg,
        json,
    }
}

async fn post(server: &Portico, message: &str) -> Answer {
    let request = server
        .client()
        .post(server.url("/messages"))
        .json(&serde_json::json!({ "message": message }));
    answer(request.send().await.expect("POST")).await
}

async fn get(server: &Portico, digest: &str) -> Answer {
    let url = server.url(&format!("/messages/{digest}"));
    answer(server.client().get(url).send().await.expect("GET")).await
}

async fn readyz(server: &Portico) -> (StatusCode, String) {
    let response = server
        .client()
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

/// A distinct message of about [`MESSAGE_BYTES`].
fn message(label: &str, n: usize) -> String {
    let mut text = format!("{label} {n}: ");
    while text.len() < MESSAGE_BYTES {
        text.push_str(&format!("{n:x}-{} ", text.len()));
    }
    text
}

/// (digest, message) pairs answered 201.
type Acked = Vec<(String, String)>;

/// POSTs distinct messages until one answers 507; returns the acknowledged ones.
async fn fill_the_disk(server: &Portico) -> Acked {
    let mut acked = Vec::new();
    for n in 0..MAX_POSTS {
        let text = message("filling", n);
        let answer = post(server, &text).await;
        match answer.status {
            StatusCode::CREATED => {
                let digest = answer.json["digest"].as_str().expect("digest");
                acked.push((digest.to_string(), text));
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                assert!(
                    answer.err_msg.contains("out of disk space"),
                    "507 err_msg: {:?}",
                    answer.err_msg
                );
                return acked;
            }
            other => panic!(
                "POST {n} on a filling disk answered {other}: {:?}",
                answer.err_msg
            ),
        }
    }
    panic!("the 4 MiB disk never filled up after {MAX_POSTS} posts");
}

/// POSTs one new message until it is acknowledged; on the way only 507 and 503 are
/// acceptable answers.
async fn post_until_stored(server: &Portico, text: &str) -> String {
    let started = Instant::now();
    loop {
        let answer = post(server, text).await;
        match answer.status {
            StatusCode::CREATED => {
                return answer.json["digest"].as_str().expect("digest").to_string()
            }
            StatusCode::INSUFFICIENT_STORAGE | StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("POST while healing answered {other}: {:?}", answer.err_msg),
        }
        assert!(
            started.elapsed() < HEAL_LIMIT,
            "not healed {HEAL_LIMIT:?} after the disk grew: {} {:?}",
            answer.status,
            answer.err_msg
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_heals_without_a_restart_when_space_returns() {
    let Some(tmpfs) = Tmpfs::mount_or_skip(4 * MIB) else {
        return;
    };
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = { self_signed = true }\nservices = [\"messages\", \"admin\"]\n";
    let mut server = Portico::builder(BIN)
        .listeners_toml(listener)
        // No read cache: every GET below reads the database file.
        .toml("[messages]\nstore = \"embedded\"\ncache_bytes = 0\n")
        .data_dir(&tmpfs.path().join("data"))
        .start()
        .await
        .expect("start portico");

    let mut acked = fill_the_disk(&server).await;
    assert!(acked.len() >= 10, "only {} messages fit", acked.len());
    let (digest, _) = &acked[0];
    let status = get(&server, digest).await.status;
    assert!(
        [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(&status),
        "GET while the disk is full answered {status}"
    );
    let (status, body) = readyz(&server).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("messages") && body.contains("disk full"),
        "{body}"
    );

    tmpfs.resize(16 * MIB).expect("grow the tmpfs");
    let text = message("after growing", 0);
    let digest = post_until_stored(&server, &text).await;
    acked.push((digest, text));
    for (digest, text) in &acked {
        let answer = get(&server, digest).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.err_msg);
        assert_eq!(answer.json["message"], text.as_str());
    }
    for n in 1..10 {
        let answer = post(&server, &message("after growing", n)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.err_msg);
    }
    let (status, body) = readyz(&server).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eprintln!(
        "{} acknowledged messages served after the disk grew",
        acked.len()
    );
    // Stop the server before the tmpfs is unmounted.
    server.kill9();
}
