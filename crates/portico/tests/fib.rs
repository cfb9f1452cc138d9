//! The fib service over real HTTPS through `portico serve`: exact bodies, every number up to
//! N = 5,000 against num-bigint, the 400s, a streamed /fib/100000 with bounded memory, metrics
//! and the `portico check` probe.

use std::time::Duration;

use num_bigint::BigUint;
use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// F(0) .. F(n-1) by num-bigint: an implementation independent of the service's.
fn reference(n: usize) -> Vec<String> {
    let (mut a, mut b) = (BigUint::from(0u32), BigUint::from(1u32));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(a.to_string());
        let next = &a + &b;
        a = std::mem::replace(&mut b, next);
    }
    out
}

fn body_for(n: usize) -> String {
    format!(
        "{{\n  \"N\": {n},\n  \"result\": \"{}\"\n}}",
        reference(n).join(" ")
    )
}

async fn get(server: &Portico, path: &str) -> (u16, String, String) {
    let response = server
        .client()
        .get(server.url(path))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.expect("body"))
}

#[tokio::test]
async fn small_answers_are_the_originals_bytes() {
    let server = Portico::start(BIN, "").await.expect("portico starts");
    let literal = [
        (1, "{\n  \"N\": 1,\n  \"result\": \"0\"\n}"),
        (2, "{\n  \"N\": 2,\n  \"result\": \"0 1\"\n}"),
        (3, "{\n  \"N\": 3,\n  \"result\": \"0 1 1\"\n}"),
        (
            10,
            "{\n  \"N\": 10,\n  \"result\": \"0 1 1 2 3 5 8 13 21 34\"\n}",
        ),
    ];
    for (n, expected) in literal {
        let (status, content_type, body) = get(&server, &format!("/fib/{n}")).await;
        assert_eq!(status, 200, "N = {n}");
        assert_eq!(content_type, "application/json");
        assert_eq!(body, expected, "N = {n}");
    }
    let (_, _, body) = get(&server, "/fib/100").await;
    assert_eq!(body, body_for(100));
    assert!(
        body.contains(" 218922995834555169026\""),
        "F(99) ends the list"
    );
    let (_, _, body) = get(&server, "/fib/0010").await;
    assert_eq!(body, body_for(10), "leading zeros");
}

#[tokio::test]
async fn every_number_up_to_5000_matches_num_bigint() {
    // A small cache budget, so part of the answer comes from the cache and the rest from the
    // streaming producer: both paths are checked number by number.
    let server = Portico::start(BIN, "[fib]\ncache_bytes = 1000000\n")
        .await
        .expect("portico starts");
    let expected = reference(5000);
    let (status, _, body) = get(&server, "/fib/5000").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["N"], 5000);
    let got: Vec<&str> = json["result"]
        .as_str()
        .expect("string")
        .split(' ')
        .collect();
    assert_eq!(got.len(), 5000);
    for (n, (got, want)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "F({n})");
    }
    assert_eq!(body, body_for(5000), "exact bytes");
    // Every smaller N is a prefix of the same sequence (cache slices at every boundary).
    for n in (1..=5000).step_by(97) {
        let (_, _, body) = get(&server, &format!("/fib/{n}")).await;
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            json["result"].as_str().expect("string"),
            expected[..n].join(" "),
            "N = {n}"
        );
    }
}

#[tokio::test]
async fn bad_n_is_a_json_400_naming_the_problem_and_the_limit() {
    let server = Portico::start(BIN, "").await.expect("portico starts");
    let cases = [
        ("/fib/0", "at least 1"),
        ("/fib/-1", "ASCII digits"),
        ("/fib/abc", "ASCII digits"),
        ("/fib/1.5", "ASCII digits"),
        ("/fib/+1", "ASCII digits"),
        ("/fib/1/", "ASCII digits"),
        ("/fib/123456789012345678901234567890", "over the limit"),
        ("/fib/100001", "over the limit"),
        ("/fib/", "missing"),
    ];
    for (path, problem) in cases {
        let (status, content_type, body) = get(&server, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(content_type.starts_with("application/json"), "{path}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        let message = json["error"].as_str().expect("error string");
        assert!(message.contains(problem), "{path}: {message}");
        assert!(
            message.contains("100000"),
            "{path}: names the limit: {message}"
        );
    }
}

#[tokio::test]
async fn the_limit_comes_from_the_config() {
    let server = Portico::start(BIN, "[fib]\nlimit = 50\n")
        .await
        .expect("portico starts");
    assert_eq!(get(&server, "/fib/50").await.0, 200);
    let (status, _, body) = get(&server, "/fib/51").await;
    assert_eq!(status, 400);
    assert!(body.contains("50"), "{body}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn fib_100000_streams_exactly_in_bounded_memory() {
    let server = Portico::start(BIN, "").await.expect("portico starts");
    let pid = server.pid();
    let mut response = server
        .client()
        .get(server.url("/fib/100000"))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let announced: u64 = response
        .headers()
        .get("content-length")
        .expect("content-length")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    let mut total = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    let mut peak_rss = 0;
    let mut chunks = 0u64;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        total += chunk.len() as u64;
        tail.extend_from_slice(&chunk);
        if tail.len() > 64 * 1024 {
            tail.drain(..tail.len() - 32 * 1024);
        }
        chunks += 1;
        if chunks % 64 == 0 {
            peak_rss = peak_rss.max(rss_kib(pid));
        }
    }
    peak_rss = peak_rss.max(rss_kib(pid));
    assert_eq!(total, announced);
    assert!(
        total > 1_040_000_000 && total < 1_060_000_000,
        "{total} bytes"
    );
    let last = {
        let (mut a, mut b) = (BigUint::from(0u32), BigUint::from(1u32));
        for _ in 0..99_999 {
            let next = &a + &b;
            a = std::mem::replace(&mut b, next);
        }
        a.to_string()
    };
    let tail = String::from_utf8(tail).expect("ascii");
    assert!(
        tail.ends_with(&format!(" {last}\"\n}}")),
        "ends with F(99999)"
    );
    assert!(peak_rss > 0, "RSS was sampled");
    assert!(peak_rss < 200 * 1024, "server RSS peaked at {peak_rss} KiB");
    eprintln!("fib/100000: {total} bytes, server RSS peak {peak_rss} KiB");
}

#[tokio::test]
async fn metrics_count_requests_by_bucket_and_cache_use() {
    let server = Portico::start(BIN, "").await.expect("portico starts");
    for path in ["/fib/5", "/fib/50", "/fib/500", "/fib/abc"] {
        get(&server, path).await;
    }
    let (_, _, metrics) = get(&server, "/metrics").await;
    for needle in [
        "portico_fib_requests_total{bucket=\"1-10\",outcome=\"ok\"} 1",
        "portico_fib_requests_total{bucket=\"11-100\",outcome=\"ok\"} 1",
        "portico_fib_requests_total{bucket=\"101-1000\",outcome=\"ok\"} 1",
        "portico_fib_requests_total{bucket=\"invalid\",outcome=\"bad_request\"} 1",
        "portico_fib_cache_hits_total 3",
        "portico_fib_cache_numbers 1024",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
}

#[tokio::test]
async fn portico_check_runs_the_fib_probe() {
    let server = Portico::start(BIN, "").await.expect("portico starts");
    let cert = server.cert_path().expect("certificate").to_path_buf();
    let url = server.url("");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["check", &url, "--cacert"])
            .arg(cert)
            .output()
            .expect("runs")
    })
    .await
    .expect("joins");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("first 10 Fibonacci numbers"), "{stdout}");
}
