//! A start-up failure names its cause once. The binary prints errors with their chain
//! (`{:#}`); an error that both printed its cause and exposed it as its source printed it
//! twice (`...: Not a directory (os error 20): Not a directory (os error 20)`).
//!
//! Each case points a path under a regular file (ENOTDIR, which root meets too).

use std::path::{Path, PathBuf};

use testkit::{Portico, PorticoBuilder};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const ENOTDIR: &str = "Not a directory (os error 20)";

/// A temporary directory holding the regular file `plain`; returns both.
fn plain_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "a file, not a directory").unwrap();
    (dir, file)
}

/// The `portico: error:` line of a start that must fail.
async fn error_line(builder: PorticoBuilder) -> String {
    let Err(error) = builder.start().await else {
        panic!("portico started although it should not");
    };
    let text = format!("{error:#}");
    text.lines()
        .find(|line| line.starts_with("portico: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{text}"))
        .to_string()
}

fn assert_cause_once(line: &str, path: &Path) {
    assert_eq!(line.matches(ENOTDIR).count(), 1, "{line}");
    assert!(line.contains(&path.display().to_string()), "{line}");
}

#[tokio::test]
async fn data_dir_under_a_file_names_the_cause_once() {
    let (_dir, file) = plain_file();
    let data_dir = file.join("data");
    let builder = Portico::builder(BIN)
        .data_dir(&data_dir)
        .listeners_toml("[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"messages\"]\n")
        .toml("[messages]\nstore = \"embedded\"\n");
    assert_cause_once(&error_line(builder).await, &data_dir);
}

#[tokio::test]
async fn log_dir_under_a_file_names_the_cause_once() {
    let (_dir, file) = plain_file();
    let log_dir = file.join("logs");
    let builder = Portico::builder(BIN).toml(&format!("[log]\ndir = {:?}\n", log_dir));
    assert_cause_once(&error_line(builder).await, &log_dir);
}

#[tokio::test]
async fn certificate_under_a_file_names_the_cause_once() {
    let (_dir, file) = plain_file();
    let cert = file.join("cert.pem");
    let key = file.join("key.pem");
    let listener = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\nservices = [\"messages\"]\ntls = {{ cert = {cert:?}, key = {key:?} }}\n"
    );
    let builder = Portico::builder(BIN).listeners_toml(&listener);
    assert_cause_once(&error_line(builder).await, &cert);
}
