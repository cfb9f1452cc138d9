//! `portico serve`: load and validate the config, start logs, bind, drop privileges, open the
//! services, print where everything is, serve until SIGTERM/SIGINT, drain, exit 0.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gateway::privilege::{self, PrivilegeConfig};
use gateway::{Gateway, ListenerInfo};

use crate::config::Config;

/// User a zero-config start switches to when started as root.
const ZERO_CONFIG_ROOT_USER: &str = "nobody";

/// Runs the gateway until a shutdown signal.
pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let _logs = gateway::logging::init(&config.log).context("starting logs")?;
    serve_blocking(config, config_path.is_none())
}

/// `serve` on the main runtime. Requests are served by the gateway's own per-core workers;
/// this runtime runs start-up and services' background tasks (Redis drivers, reload
/// watchers), which one thread carries. Shared with legacy entry points.
pub fn serve_blocking(config: Config, zero_config: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, zero_config))
}

/// Binds, drops privileges, opens services and serves.
async fn serve(mut config: Config, zero_config: bool) -> anyhow::Result<()> {
    let data_dir = prepare_data_dir(&config.data_dir)?;
    config.data_dir = data_dir.clone();
    let gateway = Gateway::bind(&config.gateway()).context("binding listeners")?;
    let owned = owned_paths(&config, &data_dir);
    let owned: Vec<&Path> = owned.iter().map(PathBuf::as_path).collect();
    let user = privilege::drop_privileges(&privileges(&config, zero_config), &owned)?;
    let services = crate::wire::build(&config, &data_dir).await?;
    announce(&gateway.listeners(), &services, &user);
    gateway.serve(services, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// What the unprivileged user must own: the data directory, and the log directory with the
/// log files already opened (rotation renames them and creates new ones).
fn owned_paths(config: &Config, data_dir: &Path) -> Vec<PathBuf> {
    let mut paths = vec![data_dir.to_path_buf()];
    if let Some(dir) = &config.log.dir {
        paths.push(dir.clone());
        for name in ["app.log", "access.log"] {
            let file = dir.join(name);
            if file.exists() {
                paths.push(file);
            }
        }
    }
    paths
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

fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data_dir {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolving data_dir {}", dir.display()))
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
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let _hangup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
