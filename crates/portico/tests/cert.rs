//! `portico cert`: the files it writes, the certificate's fields parsed back, and a TLS
//! handshake with a client that pins the `.pem`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use testkit::Portico;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn cert(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("cert")
        .args(args)
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap()
}

fn sans(pem: &[u8]) -> Vec<String> {
    let (_, pem) = parse_x509_pem(pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let ext = cert.subject_alternative_name().unwrap().unwrap();
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::IPAddress(bytes) => format!("IP:{bytes:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn default_certificate_is_rsa_4096_sha256_serial_1000_ten_years() {
    let dir = tempfile::tempdir().unwrap();
    let out = cert(
        dir.path(),
        &[
            "--host",
            "10.1.2.3",
            "--san-dns",
            "region.example.net",
            "--san-ip",
            "::1",
            "-c",
            "DE",
            "-o",
            "SUSE",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(dir.path().join("10.1.2.3.pem")).unwrap();
    assert_eq!(pem, std::fs::read(dir.path().join("10.1.2.3.crt")).unwrap());
    let key_mode = std::fs::metadata(dir.path().join("10.1.2.3.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let (_, parsed) = parse_x509_pem(&pem).unwrap();
    let cert = parsed.parse_x509().unwrap();
    assert_eq!(cert.raw_serial_as_string(), "03:e8", "serial 1000");
    assert_eq!(
        cert.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA
    );
    match cert.public_key().parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 4096),
        other => panic!("expected RSA, got {other:?}"),
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "10.1.2.3");
    assert_eq!(
        cert.subject()
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "SUSE"
    );
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert_eq!(days, 3650);
    assert_eq!(
        sans(&pem),
        [
            "IP:[10, 1, 2, 3]",
            "IP:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]",
            "DNS:region.example.net"
        ]
    );
}

#[test]
fn ecdsa_option_and_validity_years() {
    let dir = tempfile::tempdir().unwrap();
    let out = cert(
        dir.path(),
        &["--host", "localhost", "--key-type", "ecdsa", "-e", "2"],
    );
    assert!(out.status.success());
    let pem = std::fs::read(dir.path().join("localhost.pem")).unwrap();
    let (_, parsed) = parse_x509_pem(&pem).unwrap();
    let cert = parsed.parse_x509().unwrap();
    assert_eq!(
        cert.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );
    let validity = cert.validity();
    assert_eq!(
        (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400,
        730
    );
    assert_eq!(sans(&pem), ["DNS:localhost"]);
}

#[test]
fn existing_files_are_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("localhost.key"), "precious").unwrap();
    let out = cert(dir.path(), &["--host", "localhost", "--key-type", "ecdsa"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("localhost.key")).unwrap(),
        "precious"
    );
    assert!(!dir.path().join("localhost.crt").exists());
}

#[test]
fn bad_values_exit_2_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let out = cert(dir.path(), &["--host", "h", "--san-ip", "not-an-ip"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--san-ip"));
}

#[tokio::test]
async fn a_client_pinning_the_pem_completes_a_tls_handshake_by_ip() {
    let dir = tempfile::tempdir().unwrap();
    assert!(cert(dir.path(), &["--host", "127.0.0.1"]).status.success());
    let crt = dir.path().join("127.0.0.1.crt").display().to_string();
    let key = dir.path().join("127.0.0.1.key").display().to_string();
    let listener = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {crt:?}, key = {key:?} }}\nservices = [\"admin\"]\n"
    );
    let server = Portico::builder(BIN)
        .listeners_toml(&listener)
        .start()
        .await
        .unwrap();
    let pem = std::fs::read(dir.path().join("127.0.0.1.pem")).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/healthz", server.addr().port());
    assert_eq!(client.get(url).send().await.unwrap().status(), 200);
}
