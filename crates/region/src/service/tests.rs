use super::*;
use crate::data::tests::EXAMPLE;
use axum::body::to_bytes;
use tower::ServiceExt;

fn service_with(text: &str, config: Config) -> (RegionService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regionData.cfg");
    std::fs::write(&path, text).unwrap();
    let config = Config {
        data: Some(path),
        ..config
    };
    (RegionService::open(&config).unwrap(), dir)
}

async fn call(
    service: &RegionService,
    method: Method,
    uri: &str,
    peer: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut request = builder.body(Body::empty()).unwrap();
    if let Some(peer) = peer {
        let addr: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(addr));
    }
    let response = service.router().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn get(service: &RegionService, uri: &str, peer: &str) -> (StatusCode, String) {
    let (status, _, body) = call(service, Method::GET, uri, Some(peer), &[]).await;
    (status, body)
}

fn regions_of(body: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(body).unwrap();
    doc.root_element()
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.attribute("region").unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn hint_wins_over_ip() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (status, body) = get(&svc, "/regionInfo?regionHint=v6only", "3.80.0.1:5000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(regions_of(&body), vec!["v6only"]);
}

#[tokio::test]
async fn unknown_hint_falls_back_to_client_ip() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (status, body) = get(&svc, "/regionInfo?regionHint=mars", "3.80.0.1:5000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(regions_of(&body), vec!["us-east-1", "us-east-1"]);
}

#[tokio::test]
async fn hint_is_case_insensitive_but_not_trimmed() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (status, _) = get(&svc, "/regionInfo?regionHint=V6ONLY", "9.9.9.9:1").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&svc, "/regionInfo?regionHint=v6only%20", "9.9.9.9:1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_client_gets_exactly_not_found() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (status, headers, body) =
        call(&svc, Method::GET, "/regionInfo", Some("9.9.9.9:1"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "Not found");
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn v4_mapped_peer_matches_ipv4_ranges() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (status, body) = get(&svc, "/regionInfo", "[::ffff:52.1.9.9]:443").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(regions_of(&body)[0], "us-east-1");
}

#[tokio::test]
async fn ipv6_client_matches_ipv6_ranges() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (status, body) = get(&svc, "/regionInfo", "[2a05:d014::77]:443").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(regions_of(&body), vec!["v6only"]);
}

#[tokio::test]
async fn missing_connect_info_means_hint_only() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (status, _, _) = call(&svc, Method::GET, "/regionInfo", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        &svc,
        Method::GET,
        "/regionInfo?regionHint=v6only",
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn options_and_other_methods_carry_allow() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (status, headers, body) =
        call(&svc, Method::OPTIONS, "/regionInfo", Some("9.9.9.9:1"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::ALLOW], "GET, HEAD, OPTIONS");
    assert!(body.is_empty());
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let (status, headers, _) = call(&svc, method, "/regionInfo", Some("9.9.9.9:1"), &[]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET, HEAD, OPTIONS");
    }
}

#[tokio::test]
async fn other_paths_are_not_this_service() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    for uri in ["/regionInfo/", "/regioninfo", "/"] {
        let (status, _, _) = call(&svc, Method::GET, uri, Some("3.80.0.1:1"), &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn forwarded_for_only_from_trusted_proxies() {
    let config = Config {
        trusted_proxies: vec!["127.0.0.0/8".into()],
        ..Config::default()
    };
    let (svc, _dir) = service_with(EXAMPLE, config);
    let xff = [("x-forwarded-for", "3.80.0.9")];
    let (status, _, _) = call(&svc, Method::GET, "/regionInfo", Some("127.0.0.1:9"), &xff).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&svc, Method::GET, "/regionInfo", Some("9.9.9.9:9"), &xff).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn xml_answer_parses_with_attributes_in_order_and_no_declaration() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (_, headers, body) = call(&svc, Method::GET, "/regionInfo", Some("3.80.0.1:1"), &[]).await;
    assert_eq!(headers[header::CONTENT_TYPE], "text/xml; charset=utf-8");
    assert!(body.starts_with("<regionSMTdata>\n<smtInfo "));
    assert!(body.ends_with("/>\n</regionSMTdata>"));
    let doc = roxmltree::Document::parse(&body).unwrap();
    assert!(!doc.descendants().any(|n| n.is_comment() || n.is_pi()));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "regionSMTdata");
    let mut ips = Vec::new();
    for server in root.children().filter(|n| n.is_element()) {
        let names: Vec<&str> = server.attributes().map(|a| a.name()).collect();
        assert_eq!(
            names,
            [
                "SMTserverIP",
                "SMTserverIPv6",
                "SMTserverName",
                "SMTregistryName",
                "fingerprint",
                "region"
            ]
        );
        assert_eq!(
            server.attribute("SMTserverName"),
            Some("smt-ec2.example.net")
        );
        assert_eq!(
            server.attribute("SMTregistryName"),
            Some("registry-ec2.example.net")
        );
        assert_eq!(server.attribute("fingerprint"), Some("A1:B2:C3"));
        let pair = (
            server.attribute("SMTserverIP").unwrap(),
            server.attribute("SMTserverIPv6").unwrap(),
        );
        ips.push(pair);
    }
    ips.sort();
    assert_eq!(
        ips,
        [
            ("52.1.2.3", "2600:1f18:aaaa::1"),
            ("54.4.5.6", "2600:1f18:aaaa::2")
        ]
    );
}

#[tokio::test]
async fn answer_is_byte_exact_for_one_server() {
    let (svc, _dir) = service_with(EXAMPLE, Config::default());
    let (_, body) = get(&svc, "/regionInfo?regionHint=v6only", "9.9.9.9:1").await;
    assert_eq!(
        body,
        "<regionSMTdata>\n<smtInfo SMTserverIPv6=\"2a05:d014::10\" \
         SMTserverName=\"smt-ec2.example.net\" fingerprint=\"AA:BB\" region=\"v6only\"/>\n\
         </regionSMTdata>"
    );
    let config = Config {
        ipv6_only_server_ip_none: true,
        ..Config::default()
    };
    let (svc, _dir) = service_with(EXAMPLE, config);
    let (_, body) = get(&svc, "/regionInfo?regionHint=v6only", "9.9.9.9:1").await;
    assert!(body.contains("<smtInfo SMTserverIP=\"None\" SMTserverIPv6=\"2a05:d014::10\" "));
}

#[tokio::test]
async fn reload_swaps_good_data_and_keeps_old_on_bad() {
    let (svc, dir) = service_with(EXAMPLE, Config::default());
    let path = dir.path().join("regionData.cfg");
    let new = "[eu]\npublic-ips = 9.9.0.0/16\nsmt-server-ip = 5.5.5.5\nsmt-server-name = n\nsmt-fingerprint = f\n";
    std::fs::write(&path, new).unwrap();
    let summary = svc.reload().await.unwrap();
    assert_eq!(summary.regions, 1);
    let (status, body) = get(&svc, "/regionInfo", "9.9.9.9:1").await;
    assert_eq!(
        (status, regions_of(&body)),
        (StatusCode::OK, vec!["eu".to_string()])
    );
    std::fs::write(&path, "[broken]\nsmt-server-name = n\n").unwrap();
    let err = svc.reload().await.unwrap_err().to_string();
    assert!(err.contains("section [broken]"), "{err}");
    let (status, _) = get(&svc, "/regionInfo", "9.9.9.9:1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn open_reports_every_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regionData.cfg");
    std::fs::write(
        &path,
        "[a]\nsmt-server-ip = 1.1.1.1\n[b]\nsmt-server-name = n\nsmt-fingerprint = f\n",
    )
    .unwrap();
    let config = Config {
        data: Some(path),
        ..Config::default()
    };
    let message = RegionService::open(&config).err().unwrap().to_string();
    assert!(
        message.contains("section [a], key smt-server-name: missing"),
        "{message}"
    );
    assert!(
        message.contains("section [a], key smt-fingerprint: missing"),
        "{message}"
    );
    assert!(
        message.contains("section [b], key smt-server-ip: no update server"),
        "{message}"
    );
}

#[tokio::test]
async fn bad_config_is_refused_by_open() {
    let config = Config {
        trusted_proxies: vec!["x".into()],
        ..Config::default()
    };
    let message = RegionService::open(&config).err().unwrap().to_string();
    assert!(message.contains("region.trusted_proxies"), "{message}");
}

#[tokio::test]
async fn no_data_file_answers_404() {
    let svc = RegionService::open(&Config::default()).unwrap();
    let (status, _) = get(&svc, "/regionInfo?regionHint=x", "3.80.0.1:1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn watcher_reloads_when_the_file_changes() {
    let config = Config {
        watch_interval_secs: 1,
        ..Config::default()
    };
    let (svc, dir) = service_with(EXAMPLE, config);
    let path = dir.path().join("regionData.cfg");
    let watcher = crate::watch::Watcher::before_load(&path, Duration::from_secs(1));
    let task = tokio::spawn(watcher.run(svc.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let new = "[eu]\nsmt-server-ip = 5.5.5.5\nsmt-server-name = n\nsmt-fingerprint = f\n";
    std::fs::write(&path, new).unwrap();
    // The reload runs on the blocking pool (real time): give it bounded chances (~5 s).
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if svc.data().by_name("eu").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(svc.data().by_name("eu").is_some());
    task.abort();
}

/// Regression: the watcher took its first look at the file when its task first ran, so a
/// change made between the load and that moment was never noticed (seen under a loaded test
/// machine: `data_file_change_is_picked_up_without_a_signal` timed out).
#[tokio::test(start_paused = true)]
async fn a_change_before_the_watch_task_first_runs_is_not_missed() {
    let config = Config {
        watch_interval_secs: 1,
        ..Config::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regionData.cfg");
    std::fs::write(&path, EXAMPLE).unwrap();
    let watcher = crate::watch::Watcher::before_load(&path, Duration::from_secs(1));
    let svc = RegionService::open(&Config {
        data: Some(path.clone()),
        ..config
    })
    .unwrap();
    let new = "[eu]\nsmt-server-ip = 5.5.5.5\nsmt-server-name = n\nsmt-fingerprint = f\n";
    std::fs::write(&path, new).unwrap();
    let task = tokio::spawn(watcher.run(svc.clone()));
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if svc.data().by_name("eu").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(svc.data().by_name("eu").is_some(), "the change was missed");
    task.abort();
}

use std::time::Duration;
