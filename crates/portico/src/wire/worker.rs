//! `portico worker --gateway URL --token T --service S [--cacert PEM] [--slots N] -- CMD...`:
//! runs the service's jobs on this machine, pulled from a gateway over HTTP(S), with the
//! same command contract as the gateway's local slots (the core's runner over
//! `jobs_api::worker::GatewaySource`). SIGTERM or SIGINT: stop taking jobs, give running
//! ones `--kill-grace`, then kill them (their leases run out; they run again elsewhere).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use jobs::config::{Canarie, Mode, ServiceConfig, Workers};
use jobs::runner::{Runner, RunnerSettings};
use jobs_api::worker::{GatewayOptions, GatewaySource};

/// Flags of `portico worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The gateway to pull from: https://HOST:PORT (or http://)
    #[arg(long, value_name = "URL")]
    pub gateway: String,
    /// A token the gateway accepts (see `portico token`)
    #[arg(long, value_name = "TOKEN")]
    pub token: String,
    /// The service whose jobs this worker runs
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// CA certificate (PEM) to trust for the gateway, e.g. its portico-data/tls/cert.pem
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// Jobs run at once [default: the machine's cores]
    #[arg(long, value_name = "N")]
    pub slots: Option<usize>,
    /// per_job (a process per job) or persistent (a process per slot, JSON lines)
    #[arg(long, value_name = "MODE", default_value = "per_job")]
    pub mode: String,
    /// Kill a job after this long (e.g. 1h); default: never
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// SIGTERM to SIGKILL for a job being stopped
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    pub kill_grace: Duration,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `portico worker`.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let _logs = gateway::logging::init(&gateway::LogConfig::default()).context("starting logs")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(work(args))
}

fn client(cacert: Option<&PathBuf>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false);
    if let Some(path) = cacert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().context("building the HTTP client")
}

async fn work(args: WorkerArgs) -> anyhow::Result<()> {
    let mode = match args.mode.as_str() {
        "per_job" => Mode::PerJob,
        "persistent" => Mode::Persistent,
        other => anyhow::bail!("--mode must be per_job or persistent, not {other:?}"),
    };
    let slots = args.slots.unwrap_or_else(jobs::config::default_workers);
    anyhow::ensure!(slots > 0, "--slots must be at least 1");
    let options = GatewayOptions {
        gateway: args.gateway.clone(),
        token: args.token.clone(),
        service: args.service.clone(),
    };
    let source = GatewaySource::new(client(args.cacert.as_ref())?, &options);
    let info = source
        .service_info()
        .await
        .with_context(|| format!("asking {} about service {:?}", args.gateway, args.service))?;
    let text = |key: &str| info[key].as_str().unwrap_or_default().to_string();
    let service = ServiceConfig {
        name: args.service.clone(),
        celery_task_name: text("celery_task_name"),
        celery_queue_name: text("celery_queue_name"),
        version: text("version"),
        noparams: info["noparams"].as_bool().unwrap_or(false),
        command: args.command.clone(),
        mode,
        workers: Workers::Fixed(slots),
        timeout: args.timeout,
        max_attempts: 1,
        canarie: Canarie::default(),
    };
    let settings = RunnerSettings {
        kill_grace: args.kill_grace,
        max_output: 16 * 1024 * 1024,
        host: jobs::runner::hostname(),
        // A killed worker's commands are not hunted down at its next start (it has no data
        // directory); their jobs run again elsewhere once the lease runs out.
        children: None,
    };
    let background = service::Background::new("worker");
    let runner = Runner::start(
        service,
        settings,
        source.clone(),
        &background,
        slots,
        Box::new(|_| {}),
    );
    println!(
        "portico: worker pulling {} from {} with {slots} slot(s)",
        args.service, args.gateway
    );
    crate::serve::shutdown_signal().await;
    tracing::info!(
        "stopping: no new jobs, running ones get {:?}",
        args.kill_grace
    );
    source.close();
    runner.stop(args.kill_grace).await;
    background.stop(Duration::from_secs(5)).await;
    Ok(())
}
