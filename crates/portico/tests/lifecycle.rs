//! Shutdown as a load balancer sees it: on SIGTERM `/readyz` turns 503 for `drain_delay`
//! while everything still serves, then accepting stops, in-flight work drains and the
//! services stop.

use std::time::{Duration, Instant};

use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

#[tokio::test]
async fn after_sigterm_readyz_is_503_for_the_drain_delay_while_requests_are_still_served() {
    let mut server = Portico::builder(BIN)
        .listeners_toml("[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"*\"]\n")
        .toml("[limits]\ndrain_delay = \"2s\"\n")
        .start()
        .await
        .expect("start");
    let client = server.client();
    let readyz = server.url("/readyz");
    let ready = client.get(&readyz).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.text().await.expect("body"),
        "{\"status\":\"ready\"}\n"
    );

    let signalled = Instant::now();
    server
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections, not only pooled ones: a balancer's health checker opens its own.
    let fresh = reqwest::Client::new();
    let draining = fresh
        .get(&readyz)
        .send()
        .await
        .expect("readyz while draining");
    assert_eq!(draining.status(), 503);
    assert_eq!(
        draining.text().await.expect("body"),
        "{\"status\":\"draining\"}\n"
    );
    let fib = fresh
        .get(server.url("/fib/10"))
        .send()
        .await
        .expect("a request during the drain delay");
    assert_eq!(fib.status(), 200, "still serving during the delay");
    assert!(signalled.elapsed() < Duration::from_secs(2));

    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exit");
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "exited {:?} after SIGTERM, before the drain delay",
        signalled.elapsed()
    );
}
