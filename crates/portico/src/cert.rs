//! `portico cert`: self-signed certificates for pinned clients, a replacement for the region
//! server's `genRegionServerCert` (RSA-4096/SHA-256, serial 1000, 10 years by default).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use gateway::certs::{self, CertRequest, KeyKind};

/// Flags of `portico cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// IP address or DNS name of the server: the CN and first subjectAltName.
    #[arg(long)]
    pub host: String,
    /// Another IP address the certificate is valid for (repeatable).
    #[arg(long = "san-ip", value_name = "IP")]
    pub san_ips: Vec<IpAddr>,
    /// Another DNS name the certificate is valid for (repeatable).
    #[arg(long = "san-dns", value_name = "NAME")]
    pub san_dns: Vec<String>,
    /// Country (C), two letters.
    #[arg(short = 'c', long)]
    pub country: Option<String>,
    /// State or province (ST).
    #[arg(short = 's', long)]
    pub state: Option<String>,
    /// Location (L).
    #[arg(short = 'l', long)]
    pub location: Option<String>,
    /// Organisation (O).
    #[arg(short = 'o', long)]
    pub org: Option<String>,
    /// Department (OU).
    #[arg(short = 'd', long)]
    pub department: Option<String>,
    /// Validity in years.
    #[arg(short = 'e', long = "expires", value_name = "YEARS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub years: u32,
    /// Key type: rsa (4096 bits, the original's) or ecdsa (P-256).
    #[arg(long = "key-type", value_enum, default_value_t = KeyType::Rsa)]
    pub key_type: KeyType,
    /// Directory to write HOST.crt, HOST.key and HOST.pem into.
    #[arg(long = "out", value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyType {
    Rsa,
    Ecdsa,
}

/// Generates and writes the files; refuses to overwrite.
pub fn run(args: CertArgs) -> anyhow::Result<()> {
    let paths = certs::output_paths(&args.out, &args.host);
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        anyhow::bail!(
            "{} already exists: refusing to overwrite it",
            existing.display()
        );
    }
    let request = request(&args);
    let generated = certs::generate(&request).context("making the certificate")?;
    let written = certs::write_files(&args.out, &args.host, &generated)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    println!(
        "clients pin {} (copy it to the clients' certificate directory)",
        written[2].display()
    );
    Ok(())
}

fn request(args: &CertArgs) -> CertRequest {
    let key = match args.key_type {
        KeyType::Rsa => KeyKind::Rsa4096,
        KeyType::Ecdsa => KeyKind::EcdsaP256,
    };
    CertRequest {
        host: args.host.clone(),
        san_ips: args.san_ips.clone(),
        san_dns: args.san_dns.clone(),
        country: args.country.clone(),
        state: args.state.clone(),
        locality: args.location.clone(),
        organization: args.org.clone(),
        department: args.department.clone(),
        years: args.years,
        key,
    }
}
