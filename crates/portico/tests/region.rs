//! The region service over real HTTPS: selection, methods, client addresses, the XML answer
//! checked with a real XML parser, start-up errors and reloads under load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::Portico;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// Loopback clients match `local`; `::1` matches `local6`; `wide` and `narrow` test longest
/// prefix; `first`/`second` list the same prefix.
const DATA: &str = "\
[local]
public-ips = 127.0.0.0/8
smt-server-ip = 52.1.2.3,54.4.5.6
smt-server-ipv6 = 2600:1f18:aaaa::1,2600:1f18:aaaa::2
smt-server-name = smt-ec2.example.net
smt-registry-name = registry-ec2.example.net
smt-fingerprint = A1:B2:C3

[local6]
public-ipsv6 = ::1
smt-server-ipv6 = 2a05:d014::10
smt-server-name = smt6.example.net
smt-fingerprint = AA:BB

[EU-West]
public-ips = 52.0.0.0/15
smt-server-ip = 18.1.1.1
smt-server-name = smt-eu.example.net
smt-fingerprint = EU:FP
";

fn write_data(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("regionData.cfg");
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes the new data next to the file and renames it over (what operators should do).
fn replace_data(path: &Path, text: &str) {
    let temp = path.with_extension("new");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn region_toml(path: &Path, extra: &str) -> String {
    format!("[region]\ndata = {:?}\n{extra}", path.display().to_string())
}

async fn start(data: &str, extra: &str) -> (Portico, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_data(dir.path(), data);
    let server = Portico::start(BIN, &region_toml(&path, extra))
        .await
        .unwrap();
    (server, dir)
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let answer = client.get(url).send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

/// Parses the answer with a real XML parser; returns the `region` of every server.
fn regions(body: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    doc.root_element()
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.attribute("region").unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn hint_wins_over_ip_and_unknown_hint_falls_back() {
    let (server, _dir) = start(DATA, "").await;
    let client = server.client();
    let (status, body) = get(&client, &server.url("/regionInfo?regionHint=eu-west")).await;
    assert_eq!((status, regions(&body)), (200, vec!["eu-west".to_string()]));
    let (status, body) = get(&client, &server.url("/regionInfo?regionHint=mars")).await;
    assert_eq!(status, 200);
    assert_eq!(regions(&body), ["local", "local"]);
    let (_, body) = get(&client, &server.url("/regionInfo")).await;
    assert_eq!(regions(&body), ["local", "local"]);
}

#[tokio::test]
async fn repeated_and_empty_hints() {
    let (server, _dir) = start(DATA, "").await;
    let client = server.client();
    let url = server.url("/regionInfo?regionHint=EU-WEST&regionHint=local6");
    assert_eq!(regions(&get(&client, &url).await.1), ["eu-west"]);
    // Empty counts as absent: the client address decides.
    let url = server.url("/regionInfo?regionHint=&regionHint=eu-west");
    assert_eq!(regions(&get(&client, &url).await.1), ["local", "local"]);
    // The name is case-sensitive.
    let url = server.url("/regionInfo?regionhint=eu-west");
    assert_eq!(regions(&get(&client, &url).await.1), ["local", "local"]);
    // The value is not trimmed.
    let url = server.url("/regionInfo?regionHint=%20eu-west");
    assert_eq!(regions(&get(&client, &url).await.1), ["local", "local"]);
}

#[tokio::test]
async fn unknown_client_gets_404_not_found() {
    let data = DATA.replace("127.0.0.0/8", "10.0.0.0/8");
    let (server, _dir) = start(&data, "").await;
    let answer = server
        .client()
        .get(server.url("/regionInfo?regionHint=nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    assert_eq!(answer.bytes().await.unwrap().as_ref(), b"Not found");
}

#[tokio::test]
async fn head_options_and_post() {
    let (server, _dir) = start(DATA, "").await;
    let client = server.client();
    let url = server.url("/regionInfo");
    let get_len = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.content_length(), Some(get_len as u64));
    assert!(head.bytes().await.unwrap().is_empty());
    let options = client
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 200);
    assert_eq!(options.headers()["allow"], "GET, HEAD, OPTIONS");
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let answer = client.request(method, &url).body("x").send().await.unwrap();
        assert_eq!(answer.status(), 405);
        assert_eq!(answer.headers()["allow"], "GET, HEAD, OPTIONS");
    }
    let (status, _) = get(&client, &server.url("/regionInfo/")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn ipv6_client_matches_ipv6_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_data(dir.path(), DATA);
    let server = Portico::builder(BIN)
        .listeners_toml("[[listener]]\naddr = \"[::1]:0\"\ntls = { self_signed = true }\nservices = [\"region\"]\n")
        .toml(&region_toml(&path, ""))
        .start()
        .await
        .unwrap();
    let (status, body) = get(&server.client(), &server.url("/regionInfo")).await;
    assert_eq!((status, regions(&body)), (200, vec!["local6".to_string()]));
}

#[tokio::test]
async fn v4_mapped_client_on_dual_stack_listener_is_an_ipv4_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_data(dir.path(), DATA);
    let server = Portico::builder(BIN)
        .listeners_toml("[[listener]]\naddr = \"[::]:0\"\ntls = { self_signed = true }\nservices = [\"region\"]\n")
        .toml(&region_toml(&path, ""))
        .start()
        .await
        .unwrap();
    let port = server.addr().port();
    let v4 = server
        .client_builder()
        .unwrap()
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let (status, body) = get(&v4, &server.url("/regionInfo")).await;
    assert_eq!(
        (status, regions(&body)),
        (200, vec!["local".to_string(); 2])
    );
    let v6 = server
        .client_builder()
        .unwrap()
        .resolve("localhost", (std::net::Ipv6Addr::LOCALHOST, port).into())
        .build()
        .unwrap();
    let (_, body) = get(&v6, &server.url("/regionInfo")).await;
    assert_eq!(regions(&body), ["local6"]);
}

#[tokio::test]
async fn longest_prefix_across_regions_and_same_prefix_later_wins() {
    let data = format!(
        "{DATA}\n[narrow]\npublic-ips = 127.0.0.0/24\nsmt-server-ip = 1.1.1.1\n\
         smt-server-name = n\nsmt-fingerprint = f\n\
         [narrow-again]\npublic-ips = 127.0.0.0/24\nsmt-server-ip = 1.1.1.2\n\
         smt-server-name = n\nsmt-fingerprint = f\n"
    );
    let (server, _dir) = start(&data, "").await;
    let (_, body) = get(&server.client(), &server.url("/regionInfo")).await;
    assert_eq!(regions(&body), ["narrow-again"]);
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_trusted() {
    let headers = [
        ("x-forwarded-for", "52.0.0.9"),
        ("forwarded", "for=52.0.0.9"),
    ];
    for (trusted, expected) in [
        ("", "local"),
        ("trusted_proxies = [\"127.0.0.0/8\"]\n", "eu-west"),
    ] {
        let (server, _dir) = start(DATA, trusted).await;
        let mut request = server.client().get(server.url("/regionInfo"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let body = request.send().await.unwrap().text().await.unwrap();
        assert_eq!(regions(&body)[0], expected, "config {trusted:?}");
    }
}

#[tokio::test]
async fn xml_answer_has_every_attribute_in_order_and_nothing_else() {
    let (server, _dir) = start(DATA, "").await;
    let answer = server
        .client()
        .get(server.url("/regionInfo"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["content-type"], "text/xml; charset=utf-8");
    let body = answer.text().await.unwrap();
    assert!(body.starts_with("<regionSMTdata>\n<smtInfo "), "{body}");
    assert!(body.ends_with("/>\n</regionSMTdata>"), "{body}");
    let doc = roxmltree::Document::parse(&body).unwrap();
    assert!(!doc.descendants().any(|n| n.is_comment() || n.is_pi()));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "regionSMTdata");
    assert_eq!(root.attributes().len(), 0);
    let mut pairs = Vec::new();
    for server in root.children().filter(|n| n.is_element()) {
        assert_eq!(server.tag_name().name(), "smtInfo");
        let attributes: Vec<(&str, &str)> =
            server.attributes().map(|a| (a.name(), a.value())).collect();
        let names: Vec<&str> = attributes.iter().map(|a| a.0).collect();
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
        assert_eq!(attributes[2].1, "smt-ec2.example.net");
        assert_eq!(attributes[3].1, "registry-ec2.example.net");
        assert_eq!(attributes[4].1, "A1:B2:C3");
        assert_eq!(attributes[5].1, "local");
        pairs.push((attributes[0].1.to_string(), attributes[1].1.to_string()));
    }
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("52.1.2.3".to_string(), "2600:1f18:aaaa::1".to_string()),
            ("54.4.5.6".to_string(), "2600:1f18:aaaa::2".to_string())
        ]
    );
    // IPv6-only servers: no SMTserverIP unless the compatibility switch is on.
    let (_, body) = get(
        &server.client(),
        &server.url("/regionInfo?regionHint=local6"),
    )
    .await;
    let doc = roxmltree::Document::parse(&body).unwrap();
    let names: Vec<&str> = doc
        .root_element()
        .first_element_child()
        .unwrap()
        .attributes()
        .map(|a| a.name())
        .collect();
    assert_eq!(
        names,
        ["SMTserverIPv6", "SMTserverName", "fingerprint", "region"]
    );
    let (compat, _dir2) = start(DATA, "ipv6_only_server_ip_none = true\n").await;
    let (_, body) = get(
        &compat.client(),
        &compat.url("/regionInfo?regionHint=local6"),
    )
    .await;
    let doc = roxmltree::Document::parse(&body).unwrap();
    let first = doc.root_element().first_element_child().unwrap();
    assert_eq!(
        first.attributes().next().map(|a| (a.name(), a.value())),
        Some(("SMTserverIP", "None"))
    );
}

#[tokio::test]
async fn server_order_is_shuffled() {
    let (server, _dir) = start(DATA, "").await;
    let client = server.client();
    let (_, first) = get(&client, &server.url("/regionInfo")).await;
    let mut differs = false;
    for _ in 0..40 {
        if get(&client, &server.url("/regionInfo")).await.1 != first {
            differs = true;
            break;
        }
    }
    assert!(differs, "40 answers in the same order");
}

/// Each start-up error stops `portico serve` with exit status 1 and a message naming the
/// section and key.
#[tokio::test]
async fn every_start_up_error_is_reported_with_section_and_key() {
    let ok = "smt-server-ip = 1.1.1.1\nsmt-server-name = n\nsmt-fingerprint = f\n";
    let cases = [
        ("[a]\nsmt-server-name = n\nsmt-fingerprint = f\n", "section [a], key smt-server-ip: no update server address"),
        ("[a]\nsmt-server-ip = 1.1.1.1\nsmt-fingerprint = f\n", "section [a], key smt-server-name: missing"),
        ("[a]\nsmt-server-ip = 1.1.1.1\nsmt-server-name = n\n", "section [a], key smt-fingerprint: missing"),
        ("[a]\nsmt-server-ip = 1.1.1.1,1.1.1.2\nsmt-server-ipv6 = ::1\nsmt-server-name = n\nsmt-fingerprint = f\n",
         "section [a], key smt-server-ipv6: 1 IPv6 addresses but smt-server-ip has 2"),
        ("[a]\nsmt-server-ip = 1.1.1.1,1.1.1.2\nsmt-server-name = n,m,o\nsmt-fingerprint = f\n",
         "section [a], key smt-server-name: 3 values for 2 servers"),
        ("[a]\nsmt-server-ip = 1.1.1.1,1.1.1.2\nsmt-server-name = n\nsmt-fingerprint = f,g,h\n",
         "section [a], key smt-fingerprint: 3 values for 2 servers"),
        ("[a]\nsmt-server-ip = 1.1.1.1,1.1.1.2\nsmt-server-name = n\nsmt-fingerprint = f\nsmt-registry-name = r,s,t\n",
         "section [a], key smt-registry-name: 3 values for 2 servers"),
        ("[a]\nsmt-server-ip = 1.1.1.x\nsmt-server-name = n\nsmt-fingerprint = f\n",
         "section [a], key smt-server-ip: \"1.1.1.x\" is not an IPv4 address"),
        (&format!("[a]\n{ok}[a]\n"), "line 5, section [a]: section already defined on line 1"),
        (&format!("[a]\n{ok}smt-server-name = m\n"), "section [a], key smt-server-name: option already set on line 3"),
        (&format!("[a]\n{ok}[A]\n{ok}"), "section [A]: region name \"a\" is already used by section [a]"),
        ("smt-server-ip = 1.1.1.1\n", "line 1: no section header"),
    ];
    for (data, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write_data(dir.path(), data);
        let error = Portico::start(BIN, &region_toml(&path, ""))
            .await
            .err()
            .expect(expected);
        let message = format!("{error:#}");
        assert!(message.contains("exit status: 1"), "{message}");
        assert!(
            message.contains(expected),
            "expected {expected:?} in:\n{message}"
        );
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
    let missing = tempfile::tempdir().unwrap().path().join("gone.cfg");
    let error = Portico::start(BIN, &region_toml(&missing, ""))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains("cannot read region data") && message.matches("No such file").count() == 1,
        "{message}"
    );
}

#[tokio::test]
async fn malformed_client_ranges_are_logged_and_skipped() {
    let data = DATA.replace("127.0.0.0/8", "127.0.0.0/8, 10.0.0.0/8,10.0.0.1/8");
    let (server, _dir) = start(&data, "").await;
    let (_, body) = get(&server.client(), &server.url("/regionInfo")).await;
    assert_eq!(regions(&body)[0], "local");
    let logs = server.stderr();
    assert!(
        logs.contains("client range \\\" 10.0.0.0/8\\\" skipped")
            || logs.contains("client range \" 10.0.0.0/8\" skipped"),
        "{logs}"
    );
    assert!(logs.contains("host bits set"), "{logs}");
}

/// Runs `workers` request loops until `stop`; counts answers that are not a 200 with servers.
fn load(
    server: &Portico,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..workers {
        let client = server.client();
        let url = if i % 2 == 0 {
            server.url("/regionInfo")
        } else {
            server.url("/regionInfo?regionHint=eu-west")
        };
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match client.get(&url).send().await {
                    Ok(a) if a.status() == 200 => {
                        let body = a.text().await.unwrap_or_default();
                        if roxmltree::Document::parse(&body).is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    (ok, failed, tasks)
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_under_load_fails_no_request_and_bad_file_keeps_old_data() {
    let (server, dir) = start(DATA, "watch_interval_secs = 0\n").await;
    let path = dir.path().join("regionData.cfg");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed, tasks) = load(&server, 8, stop.clone());
    let client = server.client();
    for round in 0..10 {
        let fingerprint = format!("ROUND:{round}");
        replace_data(&path, &DATA.replace("EU:FP", &fingerprint));
        server.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
        let url = server.url("/regionInfo?regionHint=eu-west");
        wait_for("the reload", async || {
            get(&client, &url).await.1.contains(&fingerprint)
        })
        .await;
    }
    // A bad file: logged with its errors, the old data keeps serving.
    replace_data(&path, "[broken]\nsmt-server-name = n\n");
    server.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for("the failed reload in the log", async || {
        server.stderr().contains("region data reload failed")
    })
    .await;
    let (status, body) = get(&client, &server.url("/regionInfo?regionHint=eu-west")).await;
    assert_eq!(status, 200);
    assert!(body.contains("ROUND:9"), "{body}");
    assert!(server
        .stderr()
        .contains("section [broken], key smt-server-ip: no update server address"));
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "only {} requests",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn data_file_change_is_picked_up_without_a_signal() {
    let (server, dir) = start(DATA, "watch_interval_secs = 1\n").await;
    let path = dir.path().join("regionData.cfg");
    replace_data(&path, &DATA.replace("EU:FP", "CHANGED:FP"));
    let client = server.client();
    let url = server.url("/regionInfo?regionHint=eu-west");
    wait_for("the file change", async || {
        get(&client, &url).await.1.contains("CHANGED:FP")
    })
    .await;
    // An in-place write of a bad file is also noticed, logged and survived.
    std::fs::write(&path, "[x]\njunk\n").unwrap();
    wait_for("the failed reload", async || {
        server.stderr().contains("region data reload failed")
    })
    .await;
    assert!(get(&client, &url).await.1.contains("CHANGED:FP"));
}

#[tokio::test]
async fn check_command_probes_the_region_service() {
    let (server, _dir) = start(DATA, "").await;
    let cert = server.cert_path().unwrap().to_path_buf();
    let base = server.url("");
    let run = |hint: &str| {
        std::process::Command::new(BIN)
            .args(["check", &base, "--cacert"])
            .arg(&cert)
            .args(["--region-hint", hint])
            .output()
            .unwrap()
    };
    let good = run("eu-west");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(stdout.contains("answered 1 server(s)"), "{stdout}");
    // An unknown hint falls back to the client address: a region, but not the one asked for.
    let wrong = run("mars");
    assert!(!wrong.status.success());
}

/// The `[region]` block of `portico.example.toml` and of `deploy/region/portico.toml` is
/// valid and states the defaults.
#[test]
fn example_configs_region_sections_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in ["portico.example.toml", "deploy/region/portico.toml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let section = table["region"].clone();
        let config: region::Config = section.try_into().unwrap();
        assert!(config.validate().is_empty(), "{file}");
        assert!(
            config.log_requests && !config.ipv6_only_server_ip_none,
            "{file}"
        );
        assert_eq!(
            config.watch_interval_secs,
            region::DEFAULT_WATCH_INTERVAL_SECS,
            "{file}"
        );
    }
}
