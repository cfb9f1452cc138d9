//! Started as root: Portico binds, opens what it needs, then runs as an unprivileged user,
//! from any directory (a clone in root's 0700 home included), and never hands that user a
//! directory it did not create. These tests need root: with `CI` set they fail without it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use testkit::{have_root, Portico};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody")
        .expect("reading the user database")
        .expect("user nobody exists")
}

/// A directory only root can enter, as root's home is.
fn private_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("temporary directory");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod 0700");
    home
}

fn uids_of(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace()
        .skip(1)
        .map(|u| u.parse().expect("uid"))
        .collect()
}

async fn post_and_get(client: &reqwest::Client, base: &str, text: &str) {
    let posted = client
        .post(format!("{base}/messages"))
        .json(&serde_json::json!({ "message": text }))
        .send()
        .await
        .expect("POST /messages");
    assert_eq!(
        posted.status(),
        201,
        "{}",
        posted.text().await.unwrap_or_default()
    );
    let body: serde_json::Value = posted.json().await.expect("JSON");
    let digest = body["digest"].as_str().expect("digest").to_string();
    let got = client
        .get(format!("{base}/messages/{digest}"))
        .send()
        .await
        .expect("GET /messages");
    assert_eq!(got.status(), 200);
    let body: serde_json::Value = got.json().await.expect("JSON");
    assert_eq!(body["message"], text);
}

/// The example job service `echo` runs its command as nobody, from a working directory
/// nobody cannot enter, with a token `portico token` made from the generated key.
async fn echo_job_succeeds(client: &reqwest::Client, base: &str, dir: &Path) {
    let output = std::process::Command::new(BIN)
        .arg("token")
        .current_dir(dir)
        .output()
        .expect("portico token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let submitted: serde_json::Value = client
        .post(format!("{base}/echo/annotate"))
        .header("Authorization", token)
        .form(&[("text", "as nobody")])
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("JSON");
    let uuid = submitted["uuid"].as_str().expect("a uuid").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status: serde_json::Value = client
            .get(format!("{base}/echo/status?uuid={uuid}"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        if status["status"] == "SUCCESS" {
            assert_eq!(status["result"]["service"]["misc"]["text"], "as nobody");
            return;
        }
        assert_ne!(status["status"], "FAILURE", "{status}");
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Finding 1 of issue 9: the README's first command, as root in a clone under a 0700 home,
/// stopped with "creating data directory ...: Permission denied" after switching to nobody.
#[tokio::test]
async fn zero_config_as_root_serves_from_a_clone_in_a_private_home() {
    if !have_root("the zero-config privilege drop") {
        return;
    }
    let home = private_home();
    let clone = home.path().join("clone");
    std::fs::create_dir(&clone).expect("mkdir clone");
    let server = Portico::builder(BIN)
        .zero_config_in(&clone)
        .start()
        .await
        .expect("zero-config start (are 127.0.0.1:8080 and :8443 free?)");
    let base = server.url_on(false, "").expect("a plain HTTP listener");
    assert_eq!(base, "http://127.0.0.1:8080");
    post_and_get(&server.client(), &base, "from a private home").await;
    let https = server.url_on(true, "").expect("an HTTPS listener");
    post_and_get(&server.client(), &https, "over TLS").await;
    assert_eq!(uids_of(server.pid()), vec![nobody().uid.as_raw(); 4]);
    echo_job_succeeds(&server.client(), &base, &clone).await;
    let data = std::fs::metadata(clone.join("portico-data")).expect("data dir");
    assert_eq!(
        data.uid(),
        nobody().uid.as_raw(),
        "the data dir it created is nobody's"
    );
    assert_eq!(data.mode() & 0o777, 0o700, "and private");
}

/// With a config naming `user`, the data dir (created by this start) is handed over and
/// reached through the handle opened before the switch; a restart finds it owned by the
/// user and accepts it.
#[tokio::test]
async fn a_data_dir_it_created_in_a_private_home_works_across_restarts() {
    if !have_root("the privilege drop") {
        return;
    }
    let home = private_home();
    let data_dir = home.path().join("data");
    let mut server = Portico::builder(BIN)
        .top_level("user = \"nobody\"")
        .data_dir(&data_dir)
        .listeners_toml(
            "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"messages\", \"admin\"]\n",
        )
        .start()
        .await
        .expect("start");
    let base = server.url("");
    post_and_get(&server.client(), &base, "first start").await;
    server.restart().await.expect("restart");
    let base = server.url("");
    post_and_get(&server.client(), &base, "first start").await;
    post_and_get(&server.client(), &base, "second start").await;
}

fn refused_with(config: &str, dir: &Path) -> String {
    let config_path = dir.join("portico.toml");
    std::fs::write(&config_path, config).expect("write config");
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config_path)
        .output()
        .expect("run portico");
    assert_eq!(output.status.code(), Some(1), "it must refuse to start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Finding 6 of issue 9: `data_dir = "/var/lib"` or `log.dir = "/var/log"` would have been
/// chowned to the service user.
#[test]
fn a_directory_it_did_not_create_is_never_handed_over() {
    if !have_root("the privilege drop") {
        return;
    }
    let temp = tempfile::tempdir().expect("temporary directory");
    let existing = temp.path().join("existing");
    std::fs::create_dir(&existing).expect("mkdir");
    let before = std::fs::metadata(&existing).expect("stat");

    let data_dir_config = format!(
        "user = \"nobody\"\ndata_dir = {:?}\n[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\"]\n",
        existing.display().to_string()
    );
    let stderr = refused_with(&data_dir_config, temp.path());
    assert!(stderr.contains(&existing.display().to_string()), "{stderr}");
    assert!(stderr.contains("did not create"), "{stderr}");

    let log_dir_config = format!(
        "user = \"nobody\"\ndata_dir = {:?}\n[log]\ndir = {:?}\n[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"admin\"]\n",
        temp.path().join("fresh-data").display().to_string(),
        existing.display().to_string()
    );
    let stderr = refused_with(&log_dir_config, temp.path());
    assert!(stderr.contains(&existing.display().to_string()), "{stderr}");
    assert!(stderr.contains("did not create"), "{stderr}");

    let after = std::fs::metadata(&existing).expect("stat");
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(after.uid(), 0, "still root's");
}
