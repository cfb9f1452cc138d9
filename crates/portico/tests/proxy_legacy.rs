//! `portico proxy PORT [SERVICE IP[:PORT]] [--configfile conf.json] [--registry URL]`, the
//! original proxy's entry point, through the real binary and the test Redis: a server-mode
//! proxy registers an instance it did not start for as long as it runs, a client-mode proxy
//! on the same registry finds it, conf.json's limits are read and its Bootstraps declined.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{server_missing, test_redis_url, unique_key_prefix, Portico, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// Whether the test Redis answers (else the `CI` rule: fail, or skip saying why).
fn redis_usable() -> bool {
    let url = test_redis_url();
    let reachable = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        .map(|_| ());
    match reachable {
        Ok(()) => true,
        Err(error) => {
            server_missing("the test Redis", error);
            false
        }
    }
}

/// A Portico config (for `--config`) with its own data directory and the registry prefix.
fn config_file(dir: &std::path::Path, name: &str, prefix: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    let data = dir.join(format!("{name}-data"));
    let root = if nix::unistd::Uid::effective().is_root() {
        "allow_root = true\n"
    } else {
        ""
    };
    let text = format!(
        "data_dir = {:?}\n{root}[manager]\nkey_prefix = {prefix:?}\nagent_id = \"{name}\"\n",
        data.display().to_string()
    );
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

async fn legacy(args: &[&str]) -> Portico {
    let mut all = vec!["proxy"];
    all.extend_from_slice(args);
    Portico::builder(BIN)
        .command(&all)
        .start()
        .await
        .expect("portico proxy starts")
}

async fn get(url: &str) -> (u16, Value) {
    let answer = reqwest::get(url).await.expect("GET");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_mode_proxy_registers_its_instance_and_a_client_mode_proxy_finds_it() {
    if !redis_usable() {
        return;
    }
    let registry = test_redis_url();
    let prefix = unique_key_prefix("legacy-proxy");
    let temp = tempfile::tempdir().expect("temp");
    let instance = TestServer::start(&["--id", "the-existing-instance"]).expect("test server");
    let conf_json = temp.path().join("conf.json");
    std::fs::write(
        &conf_json,
        r#"{"Perf":{"SoftReq":{"RTT":50},"HardReq":{"RTT":2000}},"Bootstraps":["/ip4/10.11.17.32/tcp/4001/p2p/12D3KooW"]}"#,
    )
    .expect("conf.json");

    let server_port = testkit::free_port().expect("port").to_string();
    let server_config = config_file(temp.path(), "server-host", &prefix);
    let target = format!("127.0.0.1:{}", instance.port());
    let mut server_mode = legacy(&[
        &server_port,
        "hello-world-server",
        &target,
        "--registry",
        &registry,
        "--config",
        &server_config,
        "--configfile",
        conf_json.to_str().unwrap(),
    ])
    .await;
    let said = server_mode.stdout();
    assert!(said.contains("soft limit 50ms, hard limit 2s"), "{said}");
    assert!(said.contains("Bootstraps (1 in"), "{said}");
    assert!(said.contains("are not used"), "{said}");
    assert_eq!(
        server_mode.addr().to_string(),
        format!("127.0.0.1:{server_port}")
    );

    let client_port = testkit::free_port().expect("port").to_string();
    let client_config = config_file(temp.path(), "client-host", &prefix);
    let client_mode = legacy(&[
        &client_port,
        "--registry",
        &registry,
        "--config",
        &client_config,
    ])
    .await;

    // Found through the registry (the view fills within its 2 s re-read).
    let url = format!("http://127.0.0.1:{client_port}/hello-world-server/hello");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = get(&url).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["server"], "the-existing-instance");
    assert_eq!(body["path"], "/hello");

    // The server-mode proxy stops: its registration goes with it; nobody can start another.
    let status = server_mode
        .terminate(Duration::from_secs(15))
        .await
        .expect("stops");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&url).await;
        if status == 503 {
            let message = body["error"].as_str().unwrap_or_default().to_string();
            assert!(message.contains("hello-world-server"), "{message}");
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client_mode);
}
