//! TLS for listeners: rustls server configs (HTTP/2 and HTTP/1.1 by ALPN) from PEM files, and
//! the self-signed certificate of a zero-config start, generated once in `data_dir/tls/` and
//! reused after.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::certs::{self, CertRequest, KeyKind};
use crate::config::TlsConfig;
use crate::Error;

/// A loaded TLS setting: the rustls config and the certificate file clients should trust.
#[derive(Clone)]
pub struct LoadedTls {
    pub server_config: Arc<ServerConfig>,
    pub cert_path: PathBuf,
}

/// Loads the TLS setting of one listener (generating the self-signed one when asked).
pub fn load(tls: &TlsConfig, data_dir: &Path) -> Result<LoadedTls, Error> {
    let (cert_path, key_path) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => ensure_self_signed(data_dir)?,
    };
    let chain = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let server_config = server_config(chain, key).map_err(|e| Error::Tls {
        path: cert_path.clone(),
        problem: e.to_string(),
    })?;
    Ok(LoadedTls {
        server_config: Arc::new(server_config),
        cert_path,
    })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The self-signed pair in `data_dir/tls/`, generated on first use (SAN `localhost`,
/// `127.0.0.1`, `::1`).
pub fn ensure_self_signed(data_dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    fs::create_dir_all(&dir).map_err(|error| Error::Io {
        what: format!("creating {}", dir.display()),
        error,
    })?;
    let mut request = CertRequest::new("localhost", KeyKind::EcdsaP256);
    request.san_ips = vec![
        "127.0.0.1".parse().expect("literal"),
        "::1".parse().expect("literal"),
    ];
    let generated = certs::generate(&request).map_err(|e| Error::Tls {
        path: cert_path.clone(),
        problem: e.to_string(),
    })?;
    let write = |path: &Path, pem: &str, mode| {
        let _ = fs::remove_file(path);
        certs::write_new(path, pem, mode).map_err(|e| Error::Tls {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })
    };
    write(&key_path, &generated.key_pem, 0o600)?;
    write(&cert_path, &generated.cert_pem, 0o644)?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate");
    Ok((cert_path, key_path))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let mut reader = BufReader::new(open(path)?);
    let chain = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e.to_string()))?;
    if chain.is_empty() {
        return Err(tls_error(path, "no PEM certificate in the file".into()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let mut reader = BufReader::new(open(path)?);
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| tls_error(path, e.to_string()))?
        .ok_or_else(|| tls_error(path, "no PEM private key in the file".into()))
}

fn open(path: &Path) -> Result<fs::File, Error> {
    fs::File::open(path).map_err(|error| Error::Io {
        what: format!("opening {}", path.display()),
        error,
    })
}

fn tls_error(path: &Path, problem: String) -> Error {
    Error::Tls {
        path: path.to_path_buf(),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load(&TlsConfig::self_signed(), dir.path()).unwrap();
        let pem = fs::read(&first.cert_path).unwrap();
        let second = load(&TlsConfig::self_signed(), dir.path()).unwrap();
        assert_eq!(first.cert_path, second.cert_path);
        assert_eq!(pem, fs::read(&second.cert_path).unwrap());
        assert_eq!(first.server_config.alpn_protocols[0], b"h2");
    }

    #[test]
    fn a_missing_key_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = ensure_self_signed(dir.path()).unwrap();
        let config = TlsConfig {
            cert: Some(cert),
            key: Some(dir.path().join("absent.key")),
            self_signed: false,
        };
        let err = load(&config, dir.path()).err().unwrap().to_string();
        assert!(err.contains("absent.key"), "{err}");
    }
}
