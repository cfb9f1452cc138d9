//! `portico worker`: runs a service's jobs on this machine with the same command contract
//! as the gateway's local slots (the core's runner), from one of two sources:
//!
//! - `--gateway URL --token T --service S [--cacert PEM]`: pulled from a gateway over
//!   HTTP(S) (`jobs_api::worker::GatewaySource`); its leases run out if the worker dies.
//! - `--broker amqp://... --queue Q [--result-backend rpc|redis://...]`: consumed from
//!   RabbitMQ as a Celery worker does (`jobs::broker::amqp::consumer::CelerySource`: late
//!   acks, prefetch = slots, Celery-format states, pidbox revoke and `active_queues`), so it
//!   can share a queue with Python Celery workers.
//!
//! SIGTERM or SIGINT: stop taking jobs, give running ones `--kill-grace`, then kill them
//! (their leases run out, or their messages go back to the queue; they run again
//! elsewhere).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use jobs::broker::amqp::consumer::{CelerySource, ConsumerConfig};
use jobs::config::{Canarie, Mode, ResultBackend, ServiceConfig, Workers};
use jobs::runner::{Runner, RunnerSettings};
use jobs_api::worker::{GatewayOptions, GatewaySource};

/// Flags of `portico worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The gateway to pull from: https://HOST:PORT (or http://)
    #[arg(long, value_name = "URL", required_unless_present = "broker", conflicts_with = "broker", requires_all = ["token", "service"])]
    pub gateway: Option<String>,
    /// A token the gateway accepts (see `portico token`)
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The service whose jobs this worker runs (with --gateway)
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// RabbitMQ to consume Celery task messages from: amqp://user:pass@host:5672/vhost
    #[arg(long, value_name = "URL", requires = "queue")]
    pub broker: Option<String>,
    /// The Celery queue to consume (with --broker; the service's celery_queue_name)
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Where states go (with --broker): rpc (the task's reply_to), amqp (Celery 4's
    /// per-task queues on celeryresults) or redis://HOST:PORT/DB
    #[arg(long, value_name = "BACKEND", default_value = "rpc")]
    pub result_backend: String,
    /// The worker_id_version put in PROGRESS metas (with --broker; the service's version)
    #[arg(long = "service-version", value_name = "VERSION", default_value = "")]
    pub service_version: String,
    /// x-expires of amqp result queues: the gateway's result_expires (with --broker)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2h")]
    pub result_expires: Duration,
    /// Runs of one job before it fails "worker lost" (with --broker)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_attempts: u32,
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

fn parse_mode(mode: &str) -> anyhow::Result<Mode> {
    match mode {
        "per_job" => Ok(Mode::PerJob),
        "persistent" => Ok(Mode::Persistent),
        other => anyhow::bail!("--mode must be per_job or persistent, not {other:?}"),
    }
}

async fn work(args: WorkerArgs) -> anyhow::Result<()> {
    let mode = parse_mode(&args.mode)?;
    let slots = args.slots.unwrap_or_else(jobs::config::default_workers);
    anyhow::ensure!(slots > 0, "--slots must be at least 1");
    if let Some(broker) = args.broker.clone() {
        return work_on_broker(args, &broker, mode, slots).await;
    }
    let (Some(gateway), Some(token), Some(service_name)) = (
        args.gateway.clone(),
        args.token.clone(),
        args.service.clone(),
    ) else {
        anyhow::bail!("give --gateway URL --token T --service S, or --broker URL --queue Q");
    };
    let options = GatewayOptions {
        gateway: gateway.clone(),
        token,
        service: service_name.clone(),
    };
    let source = GatewaySource::new(client(args.cacert.as_ref())?, &options);
    let info = source
        .service_info()
        .await
        .with_context(|| format!("asking {gateway} about service {service_name:?}"))?;
    let text = |key: &str| info[key].as_str().unwrap_or_default().to_string();
    let service = ServiceConfig {
        name: service_name.clone(),
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
    let background = service::Background::new("worker");
    let runner = Runner::start(
        service,
        settings(&args),
        source.clone(),
        &background,
        slots,
        Box::new(|_| {}),
    );
    let shutdown = crate::serve::shutdown_signal();
    println!("portico: worker pulling {service_name} from {gateway} with {slots} slot(s)");
    shutdown.await;
    tracing::info!(
        "stopping: no new jobs, running ones get {:?}",
        args.kill_grace
    );
    source.close();
    runner.stop(args.kill_grace).await;
    background.stop(Duration::from_secs(5)).await;
    Ok(())
}

/// `portico worker --broker`: a Celery worker running the command contract.
async fn work_on_broker(
    args: WorkerArgs,
    broker: &str,
    mode: Mode,
    slots: usize,
) -> anyhow::Result<()> {
    let queue = args.queue.clone().context("--broker needs --queue")?;
    let backend = match args.result_backend.as_str() {
        "rpc" => ResultBackend::Rpc,
        "amqp" => ResultBackend::Amqp,
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            ResultBackend::Redis { url: url.into() }
        }
        other => anyhow::bail!("--result-backend must be rpc, amqp or redis://..., not {other:?}"),
    };
    let node = format!("portico@{}", jobs::runner::hostname());
    let source = CelerySource::new(ConsumerConfig {
        url: broker.to_string(),
        queue: queue.clone(),
        service: queue.clone(),
        prefetch: u16::try_from(slots).unwrap_or(u16::MAX),
        backend,
        node: node.clone(),
        max_attempts: args.max_attempts.max(1),
        connect_timeout: Duration::from_secs(10),
        result_expires: args.result_expires,
    });
    let service = ServiceConfig {
        name: queue.clone(),
        celery_task_name: queue.clone(),
        celery_queue_name: queue.clone(),
        version: args.service_version.clone(),
        noparams: false,
        command: args.command.clone(),
        mode,
        workers: Workers::Fixed(slots),
        timeout: args.timeout,
        max_attempts: args.max_attempts.max(1),
        canarie: Canarie::default(),
    };
    let background = service::Background::new("worker");
    let runner = Runner::start(
        service,
        settings(&args),
        source.clone(),
        &background,
        slots,
        Box::new(|_| {}),
    );
    let shutdown = crate::serve::shutdown_signal();
    println!("portico: worker {node} consuming {queue} with {slots} slot(s)");
    shutdown.await;
    tracing::info!(
        "stopping: no new jobs, running ones get {:?}",
        args.kill_grace
    );
    source.close();
    runner.stop(args.kill_grace).await;
    background.stop(Duration::from_secs(5)).await;
    Ok(())
}

fn settings(args: &WorkerArgs) -> RunnerSettings {
    RunnerSettings {
        kill_grace: args.kill_grace,
        max_output: 16 * 1024 * 1024,
        host: jobs::runner::hostname(),
        // A killed worker's commands are not hunted down at its next start (it has no data
        // directory); their jobs run again elsewhere.
        children: None,
    }
}
