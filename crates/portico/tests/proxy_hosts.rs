//! The service manager on many hosts, made on this machine: three network namespaces joined
//! by a bridge, a private Redis on the bridge, `portico agent` in each namespace and
//! `portico serve` with the proxy in two of them (agents off there; each proxy's own host is
//! its namespace's agent). Needs root (with `CI` set, no root is a failure).
//!
//! One test, in phases on one topology (making it takes seconds; the phases build on each
//! other's instances):
//! 1. a cold request through proxy B starts an instance on B's host; made slower than
//!    `soft_latency`, it makes proxy A ask for one more, on A's own host;
//! 2. an instance made slower than `hard_latency` stops getting A's traffic, and gets it
//!    again once it is fast again (its health probe after the backoff);
//! 3. host B's agent and its instances are SIGKILLed: they leave both proxies' views within
//!    the lease (and a re-read), and a bounded load through both proxies sees no failed GET.
//!
//! The namespaces, the bridge and every process in them are removed when the test ends,
//! failed or not (`Hosts`' drop), and leftovers of an earlier run that died are removed first.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;
use testkit::{have_root, server_missing, Portico, PrivateRedis};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const IP: &str = "/usr/sbin/ip";
/// Host names of the namespaces (and their agents' ids, `host-a` ...).
const HOSTS: [&str; 3] = ["a", "b", "c"];
const LEASE: Duration = Duration::from_secs(2);

// ------------------------------------------------------------------------------ topology

/// Three namespaces on a bridge; removed (with every process in them) on drop.
struct Hosts {
    pid: u32,
    subnet: u8,
    temp: tempfile::TempDir,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(IP).args(args).output().context("running ip")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> String {
    Command::new(IP)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn namespace(pid: u32, host: &str) -> String {
    format!("pt{pid}{host}")
}

fn bridge(pid: u32) -> String {
    format!("ptb{pid}")
}

impl Hosts {
    fn create() -> anyhow::Result<Hosts> {
        remove_leftovers();
        let pid = std::process::id();
        let hosts = Hosts {
            pid,
            subnet: (pid % 250 + 1) as u8,
            temp: tempfile::tempdir()?,
        };
        let bridge = bridge(pid);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", hosts.bridge_ip()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (index, host) in HOSTS.iter().enumerate() {
            hosts.add_host(index, host)?;
        }
        Ok(hosts)
    }

    fn add_host(&self, index: usize, host: &str) -> anyhow::Result<()> {
        let (ns, outside, inside) = (
            namespace(self.pid, host),
            format!("ptv{}{host}", self.pid),
            format!("ptn{}{host}", self.pid),
        );
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ])?;
        ip(&["link", "set", &inside, "netns", &ns])?;
        ip(&["link", "set", &outside, "master", &bridge(self.pid)])?;
        ip(&["link", "set", &outside, "up"])?;
        let address = format!("{}/24", self.host_ip(index));
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", &inside, "name", "eth0"],
            vec!["addr", "add", &address, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
        ] {
            let mut full = vec!["netns", "exec", &ns, IP];
            full.extend(args);
            ip(&full)?;
        }
        Ok(())
    }

    fn bridge_ip(&self) -> IpAddr {
        IpAddr::from([10, 231, self.subnet, 1])
    }

    fn host_ip(&self, index: usize) -> IpAddr {
        IpAddr::from([10, 231, self.subnet, 2 + index as u8])
    }

    fn dir(&self) -> &Path {
        self.temp.path()
    }

    /// `portico ARGS` run inside host `index`'s namespace.
    async fn portico(&self, index: usize, args: &[&str]) -> Portico {
        let ns = namespace(self.pid, HOSTS[index]);
        let mut all = vec!["netns", "exec", ns.as_str(), BIN];
        all.extend_from_slice(args);
        Portico::builder(IP)
            .command(&all)
            .start()
            .await
            .unwrap_or_else(|error| panic!("portico {args:?} in {ns}: {error:#}"))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in HOSTS {
            remove_namespace(&namespace(self.pid, host));
        }
        let _ = ip(&["link", "del", &bridge(self.pid)]);
    }
}

/// Kills every process in the namespace, then removes it (its veth pair goes with it).
fn remove_namespace(ns: &str) {
    for pid in ip_output(&["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Namespaces and bridges of earlier runs whose test process is gone.
fn remove_leftovers() {
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    for line in ip_output(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = name
            .strip_prefix("pt")
            .and_then(|rest| rest.strip_suffix(['a', 'b', 'c']))
        {
            if pid.chars().all(|c| c.is_ascii_digit()) && !alive(pid) {
                remove_namespace(name);
            }
        }
    }
    for line in ip_output(&["-o", "link", "show", "type", "bridge"]).lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        if let Some(pid) = name.strip_prefix("ptb") {
            if pid.chars().all(|c| c.is_ascii_digit()) && !alive(pid) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

// ------------------------------------------------------------------------------- helpers

fn testserver() -> String {
    testkit::testserver_bin().unwrap().display().to_string()
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    let root = if nix::unistd::Uid::effective().is_root() {
        "allow_root = true\n"
    } else {
        ""
    };
    let data = dir.join(format!("{name}-data"));
    let full = format!("data_dir = {:?}\n{root}{text}", data.display().to_string());
    std::fs::write(&path, full).expect("config");
    path.display().to_string()
}

fn agent_data(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!(
        "agent-{}-data/agent/host-{}",
        HOSTS[index], HOSTS[index]
    ))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_json(url: &str) -> (u16, Value) {
    match client().get(url).send().await {
        Ok(answer) => {
            let status = answer.status().as_u16();
            (status, answer.json().await.unwrap_or(Value::Null))
        }
        Err(error) => (0, Value::String(error.to_string())),
    }
}

/// The registry's instances of `echo`, through a proxy's management API.
async fn instances(proxy: &Portico) -> Vec<Value> {
    let (_, body) = get_json(&format!("{}/manager/instances", proxy.listeners()[0].url)).await;
    body.as_array()
        .map(|list| {
            list.iter()
                .filter(|i| i["service"] == "echo")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Polls until an instance of `echo` on `agent` is ready; returns it.
async fn ready_on(proxy: &Portico, agent: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let all = instances(proxy).await;
        if let Some(found) = all
            .iter()
            .find(|i| i["agent"] == agent && i["state"] == "ready")
        {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no ready instance on {agent} within {limit:?}: {all:?}\nproxy log:\n{}",
            tail(&proxy.stderr())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The proxy's decisions in a log (allocations, ejections), for failure messages.
fn events(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("allocat") || l.contains("eject") || l.contains("rotation"))
        .collect();
    lines.join("\n")
}

/// The last lines of a log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("/manager/instances"))
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn addr_of(instance: &Value) -> SocketAddr {
    instance["addr"]
        .as_str()
        .expect("addr")
        .parse()
        .expect("address")
}

async fn set_delay(instance: &Value, delay: &str) {
    let url = format!("http://{}/_delay", addr_of(instance));
    let answer = client().put(url).body(delay.to_string()).send().await;
    assert_eq!(answer.expect("PUT /_delay").status(), 200);
}

/// One GET of `/echo/` through `proxy`: the id of the instance that answered.
async fn served_by(proxy: &Portico) -> String {
    let (status, body) = get_json(&format!("{}/echo/", proxy.listeners()[0].url)).await;
    assert_eq!(status, 200, "{body}");
    body["server"].as_str().expect("server").to_string()
}

/// The proxy's view, from its `/metrics`: ready instances of `echo`, and the agents of the
/// instances it has measured.
async fn proxy_view(proxy: &Portico) -> (u64, Vec<String>) {
    let url = format!("{}/metrics", proxy.listeners()[0].url);
    let text = match client().get(url).send().await {
        Ok(answer) => answer.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let ready = text
        .lines()
        .find_map(|l| l.strip_prefix("portico_proxy_instances{service=\"echo\",state=\"ready\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(u64::MAX);
    let agents = text
        .lines()
        .filter(|l| l.starts_with("portico_proxy_instance_latency_seconds{service=\"echo\""))
        .filter_map(|l| l.split("agent=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    (ready, agents)
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The pids of the instances an agent recorded.
fn instance_pids(agent_dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(agent_dir.join("pids")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .filter_map(|record| record["pid"].as_i64())
        .map(|pid| pid as i32)
        .collect()
}

// ---------------------------------------------------------------------------------- test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hosts_soft_limit_hard_limit_and_a_killed_agent() {
    if !have_root("network namespaces") {
        return;
    }
    if let Err(error) = Command::new(IP).arg("-V").output() {
        return server_missing("ip (iproute2)", error);
    }
    let hosts = Hosts::create().expect("namespaces on a bridge");
    let redis_port = testkit::free_port().expect("port");
    let Some(_redis) = start_redis(&hosts, redis_port) else {
        return;
    };
    let registry = format!("redis://{}:{redis_port}/0", hosts.bridge_ip());

    let mut agents = Vec::new();
    for index in 0..HOSTS.len() {
        agents.push(start_agent(&hosts, index, &registry).await);
    }
    let proxy_a = start_proxy(&hosts, 0, &registry).await;
    let proxy_b = start_proxy(&hosts, 1, &registry).await;

    let (slow_b, fast_a) =
        soft_limit_starts_an_instance_on_the_proxy_s_own_host(&proxy_a, &proxy_b).await;
    over_the_hard_limit_an_instance_gets_no_traffic_until_it_recovers(&proxy_a, &fast_a, &slow_b)
        .await;
    let agent_b = agents.remove(1);
    a_killed_agent_s_instances_leave_every_view_and_no_get_fails(
        &hosts, agent_b, &proxy_a, &proxy_b,
    )
    .await;
}

fn start_redis(hosts: &Hosts, port: u16) -> Option<PrivateRedis> {
    let dir = hosts.dir().join("redis");
    std::fs::create_dir_all(&dir).expect("redis dir");
    match PrivateRedis::start_on(hosts.bridge_ip(), port, &dir) {
        Ok(redis) => Some(redis),
        Err(error) => {
            server_missing("redis-server", error);
            None
        }
    }
}

async fn start_agent(hosts: &Hosts, index: usize, registry: &str) -> Portico {
    let name = format!("agent-{}", HOSTS[index]);
    let config = write_config(
        hosts.dir(),
        &name,
        &format!(
            "[manager]\nlease = \"{}ms\"\ndrain = \"200ms\"\nstop_timeout = \"1s\"\n",
            LEASE.as_millis()
        ),
    );
    let ip = hosts.host_ip(index).to_string();
    let id = format!("host-{}", HOSTS[index]);
    let listen = format!("{ip}:8090");
    let args = [
        "agent",
        "--registry",
        registry,
        "--advertise",
        &ip,
        "--id",
        &id,
        "--listen",
        &listen,
        "--config",
        &config,
    ];
    hosts.portico(index, &args).await
}

async fn start_proxy(hosts: &Hosts, index: usize, registry: &str) -> Portico {
    let name = format!("proxy-{}", HOSTS[index]);
    let text = format!(
        "[[listener]]\naddr = \"{}:8080\"\nservices = [\"proxy\", \"admin\"]\n\
         [manager]\nregistry = {registry:?}\nagent = false\nagent_id = \"host-{}\"\n\
         [[manager.service]]\nname = \"echo\"\ncommand = [{:?}, \"--port\", \"{{port}}\"]\n\
         health = \"/_health\"\nmax = 2\nsoft_latency = \"100ms\"\nhard_latency = \"400ms\"\n",
        hosts.host_ip(index),
        HOSTS[index],
        testserver()
    );
    let config = write_config(hosts.dir(), &name, &text);
    hosts.portico(index, &["serve", "--config", &config]).await
}

/// Phase 1. Returns the instance on host B (slow, 150 ms) and the one on host A.
async fn soft_limit_starts_an_instance_on_the_proxy_s_own_host(
    proxy_a: &Portico,
    proxy_b: &Portico,
) -> (Value, Value) {
    // Cold through B: placed on B's own host.
    let first = served_by(proxy_b).await;
    let on_b = ready_on(proxy_b, "host-b", Duration::from_secs(10)).await;
    assert_eq!(on_b["id"], first.as_str());
    assert_eq!(instances(proxy_a).await.len(), 1);
    // Slower than soft_latency: A, serving with only it, asks for one more on its own host
    // (the pick after the first slow answer sees the estimate over the limit).
    set_delay(&on_b, "150ms").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !instances(proxy_a)
        .await
        .iter()
        .any(|i| i["agent"] == "host-a")
    {
        assert_eq!(
            served_by(proxy_a).await,
            first,
            "served meanwhile by what there is"
        );
        assert!(Instant::now() < deadline, "no allocation on host A");
    }
    let on_a = ready_on(proxy_a, "host-a", Duration::from_secs(15)).await;
    let all = instances(proxy_a).await;
    assert_eq!(all.len(), 2, "one more, not more: {all:?}");
    assert!(all.iter().all(|i| i["agent"] != "host-c"), "{all:?}");
    // A now sends its traffic to the fast instance on its own host.
    let mut local = 0;
    for _ in 0..20 {
        if served_by(proxy_a).await == on_a["id"].as_str().unwrap() {
            local += 1;
        }
    }
    assert!(local >= 15, "{local} of 20 on the fast local instance");
    (on_b, on_a)
}

/// Phase 2.
async fn over_the_hard_limit_an_instance_gets_no_traffic_until_it_recovers(
    proxy_a: &Portico,
    fast_a: &Value,
    slow_b: &Value,
) {
    set_delay(slow_b, "0s").await;
    set_delay(fast_a, "600ms").await; // past hard_latency (400 ms)
    let slow_id = fast_a["id"].as_str().unwrap().to_string();
    // Requests until one reaches it and ejects it (it is the cheaper one until then).
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_by(proxy_a).await != slow_id {
        assert!(Instant::now() < deadline, "the instance was never tried");
    }
    let ejected_at = Instant::now();
    for _ in 0..30 {
        assert_ne!(
            served_by(proxy_a).await,
            slow_id,
            "traffic reached the ejected instance"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Fast again before its probe (10 s after the ejection): the probe brings it back.
    set_delay(fast_a, "0s").await;
    let deadline = ejected_at + Duration::from_secs(20);
    while served_by(proxy_a).await != slow_id {
        assert!(
            Instant::now() < deadline,
            "the recovered instance got no traffic"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Phase 3.
async fn a_killed_agent_s_instances_leave_every_view_and_no_get_fails(
    hosts: &Hosts,
    mut agent_b: Portico,
    proxy_a: &Portico,
    proxy_b: &Portico,
) {
    for proxy in [proxy_a, proxy_b] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy_view(proxy).await.0 != 2 {
            assert!(
                Instant::now() < deadline,
                "both instances in every view first"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for proxy in [proxy_a, proxy_b] {
        for _ in 0..2 {
            let url = format!("{}/echo/load", proxy.listeners()[0].url);
            let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
            load.push(tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let outcome = client.get(&url).send().await;
                    let failed = match outcome {
                        Ok(answer) if answer.status() == 200 => None,
                        Ok(answer) => Some(format!("{url}: {}", answer.status())),
                        Err(error) => Some(format!("{url}: {error}")),
                    };
                    if let Some(failure) = failed {
                        failures.lock().unwrap().push(failure);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Host B goes down: its agent and its instances, at once.
    let pids = instance_pids(&agent_data(hosts.dir(), 1));
    assert!(!pids.is_empty(), "host B's agent recorded its instance");
    agent_b.kill9();
    pids.into_iter().for_each(kill);
    let killed = Instant::now();
    for proxy in [proxy_a, proxy_b] {
        loop {
            let (ready, agents) = proxy_view(proxy).await;
            let in_registry = instances(proxy).await;
            let gone = in_registry.iter().all(|i| i["agent"] != "host-b");
            if gone && ready == in_registry.len() as u64 && !agents.iter().any(|a| a == "host-b") {
                break;
            }
            let limit = LEASE + registry::REREAD_INTERVAL + Duration::from_secs(1);
            assert!(
                killed.elapsed() < limit,
                "host B's instance still in a view after {limit:?}: {ready} ready, {agents:?}, \
                 registry {in_registry:?}\nA: {}\nB: {}",
                events(&proxy_a.stderr()),
                events(&proxy_b.stderr())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load");
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed GETs: {failures:?}");
    assert!(sent.load(Ordering::Relaxed) > 50, "the load ran");
}
