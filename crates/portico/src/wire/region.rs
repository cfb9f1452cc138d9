//! Wires the region service into the gateway, its reloads (SIGHUP and data file changes) and
//! the legacy `portico regioninfo` entry point, which reads the original `regionInfo.cfg`
//! and runs the same gateway with only the region service mounted.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use gateway::{ListenerConfig, TlsConfig};
use region::legacy::{self, LegacyOptions};
use region::RegionService;
use service::{Background, Service};

use super::{BuiltIn, Context};
use crate::config::{env_override, EnvKind, EnvOverride};
use tokio::signal::unix::{signal, SignalKind};

/// Flags of the original region server (`-f -l -r -h`) plus Portico's listener options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The original's flags -f, -l, -r and -h keep their meaning; \
    the others choose the listener, TLS certificate and user."
)]
pub struct LegacyArgs {
    /// Service config file (regionInfo.cfg) [default: /etc/regionService/regionInfo.cfg]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Log file; overrides logFile of the service config
    #[arg(short = 'l', long = "log", value_name = "LOG")]
    pub log: Option<PathBuf>,
    /// Region data file; overrides regionConfig of the service config
    #[arg(short = 'r', long = "regiondata", value_name = "DATA")]
    pub regiondata: Option<PathBuf>,
    /// Address to listen on ([::]:443 is dual-stack)
    #[arg(long, value_name = "ADDR", default_value = "[::]:443")]
    pub listen: String,
    /// TLS certificate (PEM), e.g. the HOST.crt of `portico cert` or genRegionServerCert
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM) of --cert
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Serve plain HTTP (behind a TLS-terminating proxy) instead of HTTPS
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    pub plain_http: bool,
    /// Switch to this user after binding (the original ran as regionsrv)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Keep running as root when no --user is given
    #[arg(long)]
    pub allow_root: bool,
    /// Directory for Portico's own state (a generated certificate when --cert is not given)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/portico")]
    pub data_dir: PathBuf,
    /// Network of a reverse proxy whose X-Forwarded-For/Forwarded is believed (repeatable)
    #[arg(long = "trusted-proxy", value_name = "NET")]
    pub trusted_proxies: Vec<String>,
    /// Print SMTserverIP="None" for IPv6-only servers, as the original does
    #[arg(long)]
    pub ipv6_only_server_ip_none: bool,
    /// Log level (error, warn, info, debug, trace)
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `[region]`: the cloud region server (`/regionInfo`).
pub struct Region;

impl BuiltIn for Region {
    const NAME: &'static str = "region";
    const ENV: &'static [EnvOverride] = &[env_override(
        "PORTICO_REGION_DATA",
        "region",
        "data",
        EnvKind::Text,
    )];
    const PROBE: Option<check::Probe> = Some(check::region_probe);
    type Config = region::Config;

    fn validate(config: &region::Config) -> Vec<String> {
        config.validate()
    }

    async fn open(config: &region::Config, context: Context<'_>) -> anyhow::Result<Service> {
        open_region(config, context.background)
    }
}

/// Opens the region service with its reload triggers (SIGHUP, changes of the data file) as
/// background tasks.
fn open_region(config: &region::Config, background: Background) -> anyhow::Result<Service> {
    let region = RegionService::open(config)?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let on_signal = region.clone();
    background.spawn("reload on SIGHUP", async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading region data");
            // A failed reload is logged by `reload` and the old data keeps serving.
            let _ = on_signal.reload().await;
        }
    });
    if let Some(interval) = config.watch_interval() {
        background.spawn(
            "watch the data file",
            region::watch::watch(region.clone(), interval),
        );
    }
    Ok(Service::new("region", region.router()).with_background(background))
}

/// `portico regioninfo`: exit 1 with the original's messages on a start-up error.
pub fn legacy_main(args: LegacyArgs) -> ExitCode {
    match run_legacy(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_legacy(args: LegacyArgs) -> anyhow::Result<()> {
    let options = LegacyOptions {
        file: args.file.clone(),
        log: args.log.clone(),
        region_data: args.regiondata.clone(),
    };
    let paths = legacy::resolve(&options)?;
    let log_file = legacy::open_log(&paths.log_file)?;
    let _log = legacy::init_logging(log_file, &args.log_level)
        .map_err(|e| anyhow::anyhow!("starting logs: {e}"))?;
    tracing::info!(log = %paths.log_file.display(), data = %paths.region_data.display(), "regioninfo starting");
    let config = legacy_config(&args, paths.region_data)?;
    let result = crate::serve::serve_blocking(config, false, &[]);
    if let Err(error) = &result {
        tracing::error!(error = %format!("{error:#}"), "regioninfo stopped");
    }
    result
}

/// The Portico config equivalent to the legacy flags: one listener with only `region`.
fn legacy_config(args: &LegacyArgs, data: PathBuf) -> anyhow::Result<crate::config::Config> {
    let mut config = crate::config::Config::parse("", std::iter::empty())?;
    config.data_dir = args.data_dir.clone();
    config.user = args.user.clone();
    config.allow_root = args.allow_root;
    let tls = if args.plain_http {
        None
    } else if args.cert.is_some() {
        Some(TlsConfig {
            cert: args.cert.clone(),
            key: args.key.clone(),
            self_signed: false,
        })
    } else {
        Some(TlsConfig::self_signed())
    };
    let mut listener = ListenerConfig::new(&args.listen, tls);
    listener.services = vec!["region".to_string()];
    config.listeners = vec![listener];
    config.services.region = region::Config {
        data: Some(data),
        trusted_proxies: args.trusted_proxies.clone(),
        ipv6_only_server_ip_none: args.ipv6_only_server_ip_none,
        ..region::Config::default()
    };
    let problems = config.validate();
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    Ok(config)
}
