//! Self-signed certificates: what `portico cert` writes for pinned clients (the region
//! server's `genRegionServerCert`) and what a zero-config start generates once and reuses.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use rsa::pkcs8::EncodePrivateKey;

/// Serial number of every certificate `portico cert` makes, as the original generator does.
pub const SERIAL: u64 = 1000;

/// Key algorithm of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 4096 bits, SHA-256 signature: the original generator's choice.
    Rsa4096,
    /// ECDSA P-256, SHA-256: small and fast.
    EcdsaP256,
}

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// CN and first subjectAltName (an IP address or a DNS name).
    pub host: String,
    pub san_ips: Vec<IpAddr>,
    pub san_dns: Vec<String>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub locality: Option<String>,
    pub organization: Option<String>,
    pub department: Option<String>,
    /// Validity in years (365 days each).
    pub years: u32,
    pub key: KeyKind,
}

impl CertRequest {
    /// A request for `host` with no subject fields, 10 years, the given key kind.
    pub fn new(host: &str, key: KeyKind) -> Self {
        CertRequest {
            host: host.to_string(),
            san_ips: Vec::new(),
            san_dns: Vec::new(),
            country: None,
            state: None,
            locality: None,
            organization: None,
            department: None,
            years: 10,
            key,
        }
    }
}

/// A generated certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct GeneratedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Errors making or writing certificates. Each prints its cause and exposes none as
/// `source()`, so a chain printed with `{:#}` names it once.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid certificate field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("generating the key: {0}")]
    Key(String),
    #[error("signing the certificate: {0}")]
    Sign(rcgen::Error),
    #[error("{path} already exists: refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("writing {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl From<rcgen::Error> for CertError {
    fn from(error: rcgen::Error) -> Self {
        CertError::Sign(error)
    }
}

/// Makes a self-signed certificate (serial 1000, CA:FALSE) for `request`.
pub fn generate(request: &CertRequest) -> Result<GeneratedCert, CertError> {
    let key_pair = key_pair(request.key)?;
    let params = params(request)?;
    let cert = params.self_signed(&key_pair)?;
    Ok(GeneratedCert {
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
    })
}

fn key_pair(kind: KeyKind) -> Result<KeyPair, CertError> {
    match kind {
        KeyKind::EcdsaP256 => Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?),
        KeyKind::Rsa4096 => {
            let mut rng = rand::rngs::OsRng;
            let key = rsa::RsaPrivateKey::new(&mut rng, 4096)
                .map_err(|e| CertError::Key(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| CertError::Key(e.to_string()))?;
            Ok(KeyPair::from_pkcs8_pem_and_sign_algo(
                &pem,
                &PKCS_RSA_SHA256,
            )?)
        }
    }
}

fn params(request: &CertRequest) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from(SERIAL));
    params.distinguished_name = subject(request);
    params.subject_alt_names = subject_alt_names(request)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(request.years));
    Ok(params)
}

fn subject(request: &CertRequest) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, request.host.as_str());
    let optional = [
        (DnType::CountryName, &request.country),
        (DnType::StateOrProvinceName, &request.state),
        (DnType::LocalityName, &request.locality),
        (DnType::OrganizationName, &request.organization),
        (DnType::OrganizationalUnitName, &request.department),
    ];
    for (kind, value) in optional {
        if let Some(value) = value {
            name.push(kind, value.as_str());
        }
    }
    name
}

fn subject_alt_names(request: &CertRequest) -> Result<Vec<SanType>, CertError> {
    let mut sans = vec![san(&request.host)?];
    sans.extend(request.san_ips.iter().map(|ip| SanType::IpAddress(*ip)));
    for name in &request.san_dns {
        sans.push(dns_san(name, "--san-dns")?);
    }
    Ok(sans)
}

/// An IP address becomes an IP SAN, anything else a DNS SAN.
fn san(host: &str) -> Result<SanType, CertError> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => dns_san(host, "--host"),
    }
}

fn dns_san(name: &str, field: &'static str) -> Result<SanType, CertError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
    if !valid {
        return Err(CertError::Field {
            field,
            problem: format!("{name:?} is not an IP address or DNS name"),
        });
    }
    let ia5 = name
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| CertError::Field {
            field,
            problem: e.to_string(),
        })?;
    Ok(SanType::DnsName(ia5))
}

/// Paths `portico cert` writes for `host` in `dir`.
pub fn output_paths(dir: &Path, host: &str) -> [PathBuf; 3] {
    ["crt", "key", "pem"].map(|ext| dir.join(format!("{host}.{ext}")))
}

/// Writes `<host>.crt`, `<host>.key` (mode 0600) and `<host>.pem` (the certificate clients
/// pin) into `dir`; refuses when any of them exists.
pub fn write_files(
    dir: &Path,
    host: &str,
    cert: &GeneratedCert,
) -> Result<[PathBuf; 3], CertError> {
    let paths = output_paths(dir, host);
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(CertError::Exists {
            path: existing.clone(),
        });
    }
    let [crt, key, pem] = &paths;
    write_new(crt, &cert.cert_pem, 0o644)?;
    write_new(key, &cert.key_pem, 0o600)?;
    write_new(pem, &cert.cert_pem, 0o644)?;
    Ok(paths)
}

/// Creates `path` (never overwriting) with `mode` and writes `contents`.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |error| CertError::Write {
        path: path.to_path_buf(),
        error,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => CertError::Exists {
                path: path.to_path_buf(),
            },
            _ => io(source),
        })?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_host_becomes_an_ip_san_and_names_become_dns_sans() {
        let mut request = CertRequest::new("10.1.2.3", KeyKind::EcdsaP256);
        request.san_dns = vec!["region.example.net".into()];
        let sans = subject_alt_names(&request).unwrap();
        assert!(matches!(sans[0], SanType::IpAddress(_)));
        assert!(matches!(sans[1], SanType::DnsName(_)));
    }

    #[test]
    fn a_bad_dns_name_is_refused_with_its_flag() {
        let mut request = CertRequest::new("ok.example", KeyKind::EcdsaP256);
        request.san_dns = vec!["bad name".into()];
        let err = generate(&request).unwrap_err().to_string();
        assert!(err.contains("--san-dns"), "{err}");
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let cert = generate(&CertRequest::new("localhost", KeyKind::EcdsaP256)).unwrap();
        write_files(dir.path(), "localhost", &cert).unwrap();
        let err = write_files(dir.path(), "localhost", &cert).unwrap_err();
        assert!(matches!(err, CertError::Exists { .. }), "{err}");
    }
}
