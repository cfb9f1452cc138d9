//! `portico regioninfo`: the original's `-f -l -r -h` with its defaults and messages, serving
//! the original files unchanged over HTTPS.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

const DATA: &str = "\
[us-east-1]
public-ips = 127.0.0.0/8
smt-server-ip = 52.1.2.3
smt-server-name = smt-ec2.example.net
smt-fingerprint = A1:B2:C3
";

struct Files {
    dir: tempfile::TempDir,
    info: PathBuf,
    data: PathBuf,
    log: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("regionData.cfg");
    let log = dir.path().join("regionInfo.log");
    std::fs::write(&data, DATA).unwrap();
    let info = dir.path().join("regionInfo.cfg");
    std::fs::write(
        &info,
        format!(
            "[server]\nlogFile = {}\nregionConfig = {}\n",
            log.display(),
            data.display()
        ),
    )
    .unwrap();
    Files {
        dir,
        info,
        data,
        log,
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("regioninfo")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_lists_the_original_flags() {
    for flag in ["-h", "--help"] {
        let output = run(&[flag]);
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stdout);
        for expected in [
            "-f, --file",
            "-l, --log",
            "-r, --regiondata",
            "--listen",
            "--cert",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }
    assert_eq!(run(&["--bogus"]).status.code(), Some(2));
}

#[test]
fn original_error_messages_and_exit_status_one() {
    let f = files();
    let gone = f.dir.path().join("gone.cfg");
    let output = run(&["-f", path(&gone)]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        format!(
            "Could not find specified configuration file \"{}\"",
            gone.display()
        )
    );
    let output = run(&["-f", path(&f.info), "-r", path(&gone)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("Could not find specified configuration file"));
    let output = run(&["-f", path(&f.info), "-l", "/nonexistent-dir/x.log"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        "Log directory \"/nonexistent-dir\" is not writable"
    );
    std::fs::remove_file(&f.data).unwrap();
    let output = run(&["-f", path(&f.info)]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        format!(
            "Default configuration file \"{}\" not found",
            f.data.display()
        )
    );
}

#[test]
fn bad_region_data_exits_one_with_section_and_key() {
    let f = files();
    std::fs::write(&f.data, "[r]\nsmt-server-ip = 1.1.1.1\n").unwrap();
    let output = run(&[
        "-f",
        path(&f.info),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        path(&f.dir.path().join("state")),
        "--allow-root",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("section [r], key smt-server-name: missing"),
        "{text}"
    );
}

/// Starts `portico regioninfo` and returns it with its HTTPS port once it is ready.
fn start(args: &[&str]) -> (Child, u16) {
    let mut child = Command::new(BIN)
        .arg("regioninfo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut port = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("portico: listening on https://") {
            let addr = rest.split_whitespace().next().unwrap();
            port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if line.starts_with("portico: ready") || Instant::now() > deadline {
            break;
        }
    }
    (child, port.expect("announced port"))
}

#[tokio::test]
async fn serves_the_original_files_over_https_and_logs_to_the_log_file() {
    let f = files();
    let state = f.dir.path().join("state");
    let (mut child, port) = start(&[
        "-f",
        path(&f.info),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        path(&state),
        "--allow-root",
    ]);
    let pem = std::fs::read(state.join("tls/cert.pem")).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/regionInfo");
    let body = client.get(&url).send().await.unwrap().text().await.unwrap();
    // Close the keep-alive connection first, so the graceful stop does not wait for it.
    drop(client);
    // SIGTERM: a graceful stop flushes the log.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Poll without blocking the runtime, which still has to close the client's connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "regioninfo did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert_eq!(
        body,
        "<regionSMTdata>\n<smtInfo SMTserverIP=\"52.1.2.3\" SMTserverName=\"smt-ec2.example.net\" \
         fingerprint=\"A1:B2:C3\" region=\"us-east-1\"/>\n</regionSMTdata>"
    );
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert!(log.contains("region data loaded"), "{log}");
    assert!(
        log.contains("provided") && log.contains("client=127.0.0.1"),
        "{log}"
    );
}
