//! `portico serve`: load and validate the config, start logs, open the data directory, bind,
//! drop privileges, open the services, print where everything is, serve until SIGTERM/SIGINT,
//! drain, stop the services, exit 0.
//!
//! Started as root, Portico must keep working after it becomes an unprivileged user who may
//! not be able to reach the data directory by its path (a clone in root's 0700 home):
//! everything under the data directory is opened through the handle opened here, before the
//! switch (`service::DataDir`); the data directory is handed to that user only when this
//! start created it (made private, 0700), else it must already be the user's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gateway::privilege::{self, Handover, PrivilegeConfig};
use gateway::{Gateway, ListenerInfo};
use service::{DataDir, Readiness};

use crate::config::Config;

/// User a zero-config start switches to when started as root.
const ZERO_CONFIG_ROOT_USER: &str = "nobody";

/// Runs the gateway until a shutdown signal.
pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let logs = gateway::logging::init(&config.log).context("starting logs")?;
    serve_blocking(config, config_path.is_none(), logs.handover())
}

/// `serve` with a config another command built (`portico agent`).
pub fn run_with(config: Config) -> anyhow::Result<()> {
    let logs = gateway::logging::init(&config.log).context("starting logs")?;
    serve_blocking(config, false, logs.handover())
}

/// `serve` on the main runtime. Requests are served by the gateway's own per-core workers;
/// this runtime runs start-up and services' background tasks (Redis drivers, reload
/// watchers), which one thread carries. Shared with legacy entry points.
pub fn serve_blocking(
    config: Config,
    zero_config: bool,
    log_files: &[Handover],
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, zero_config, log_files))
}

/// Opens the data directory, binds, drops privileges, opens services and serves.
async fn serve(
    mut config: Config,
    zero_config: bool,
    log_files: &[Handover],
) -> anyhow::Result<()> {
    let (data_dir, created) = open_data_dir(&config.data_dir)?;
    config.data_dir = data_dir.path().to_path_buf();
    let gateway = Gateway::bind(&config.gateway()).context("binding listeners")?;
    let mut handover = vec![Handover {
        path: config.data_dir.clone(),
        created,
    }];
    handover.extend_from_slice(log_files);
    let user = privilege::drop_privileges(&privileges(&config, zero_config), &handover)?;
    let readiness = Readiness::new();
    let services = crate::wire::build(&config, &data_dir, &readiness).await?;
    let shutdown = shutdown_signal();
    announce(&gateway.listeners(), &services, &user);
    gateway.serve(services, readiness, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

fn privileges(config: &Config, zero_config: bool) -> PrivilegeConfig {
    let as_root = nix::unistd::Uid::effective().is_root();
    let fallback = (zero_config && as_root).then(|| ZERO_CONFIG_ROOT_USER.to_string());
    PrivilegeConfig {
        user: config.user.clone().or(fallback),
        group: config.group.clone(),
        allow_root: config.allow_root,
    }
}

/// Opens (creating when missing) the data directory; one this start created is private to
/// the user Portico will run as (0700).
fn open_data_dir(path: &Path) -> anyhow::Result<(DataDir, bool)> {
    let (data_dir, created) = DataDir::open_or_create(path)?;
    if created {
        let private = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(data_dir.path(), private)
            .with_context(|| format!("making data_dir {} private", data_dir.path().display()))?;
    }
    Ok((data_dir, created))
}

/// One line per listener and the certificate to trust, on stdout (scripts and the test
/// harness read these lines).
fn announce(listeners: &[ListenerInfo], services: &gateway::Services, user: &str) {
    for listener in listeners {
        let kind = if listener.tls {
            "TLS, HTTP/1.1 and HTTP/2"
        } else {
            "plain HTTP"
        };
        let mounted = services.expand(&listener.services).join(", ");
        println!(
            "portico: listening on {} ({kind}; services: {mounted})",
            listener.url()
        );
    }
    let mut certs: Vec<&PathBuf> = listeners
        .iter()
        .filter_map(|l| l.cert_path.as_ref())
        .collect();
    certs.dedup();
    for cert in certs {
        println!("portico: clients should trust {}", cert.display());
    }
    println!("portico: ready (pid {}, user {user})", std::process::id());
    tracing::info!(user, "ready");
}

/// Completes on the first SIGTERM or SIGINT. SIGHUP never ends the process: services that
/// reload on it (region) listen for it; without them it is ignored.
///
/// The handlers are installed when this is called, not when the future is first polled: the
/// caller calls it before announcing "ready", so a signal sent on that line is never met by
/// the default action (which, for SIGHUP, would end the process).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let hangup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    async move {
        let _hangup = hangup;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
