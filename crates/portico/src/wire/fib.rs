//! Wires the fib service and the `fib-backend` mode (the original RPC back end's wire protocol
//! on TCP, default port 2003).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use service::Service;

use super::{BuiltIn, Context};
use crate::config::{env_override, EnvKind, EnvOverride};

/// Flags of `portico fib-backend`.
#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "0.0.0.0:2003")]
    pub listen: String,
    /// Largest N answered.
    #[arg(long, default_value_t = fib::DEFAULT_LIMIT)]
    pub limit: u64,
    /// Bytes of decimal text the number cache may hold.
    #[arg(long, default_value_t = fib::DEFAULT_CACHE_BYTES)]
    pub cache_bytes: u64,
    /// Connections served at once; more are answered with an error and closed.
    #[arg(long, default_value_t = fib::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a connection may stay idle (or stall a reply) before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = fib::server::DEFAULT_IDLE_TIMEOUT.as_secs())]
    pub idle_timeout: u64,
}

/// `[fib]`: the first N Fibonacci numbers (`/fib/<n>`).
pub struct Fib;

impl BuiltIn for Fib {
    const NAME: &'static str = "fib";
    const ENV: &'static [EnvOverride] = &[env_override(
        "PORTICO_FIB_LIMIT",
        "fib",
        "limit",
        EnvKind::Integer,
    )];
    const PROBE: Option<check::Probe> = Some(check::fib_probe);
    type Config = fib::Config;

    fn validate(config: &fib::Config) -> Vec<String> {
        config.validate()
    }

    async fn open(config: &fib::Config, context: Context<'_>) -> anyhow::Result<Service> {
        let fib = fib::FibService::open(config)?;
        Ok(Service::new(Self::NAME, fib.router()).with_background(context.background))
    }
}

/// `portico fib-backend`: exit 2 on bad flags, 1 when it cannot listen, 0 after a signal.
pub fn backend_main(args: BackendArgs) -> ExitCode {
    if let Some(problem) = check_args(&args) {
        eprintln!("portico fib-backend: {problem}");
        return ExitCode::from(2);
    }
    match run_backend(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portico fib-backend: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_args(args: &BackendArgs) -> Option<String> {
    if args.limit == 0 || args.limit > fib::length::MAX_N {
        return Some(format!(
            "--limit must be from 1 to {}, got {}",
            fib::length::MAX_N,
            args.limit
        ));
    }
    if args.max_connections == 0 {
        return Some("--max-connections must be at least 1".into());
    }
    if args.idle_timeout == 0 {
        return Some("--idle-timeout must be at least 1 second".into());
    }
    None
}

fn run_backend(args: BackendArgs) -> anyhow::Result<()> {
    let _logs = gateway::logging::init(&gateway::LogConfig::default()).context("starting logs")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|error| fib::Error::Bind {
                address: args.listen.clone(),
                error,
            })?;
        let bound = listener.local_addr().context("reading the bound address")?;
        // Scripts and tests read this line to learn the port (with --listen ...:0).
        let shutdown = crate::serve::shutdown_signal();
        println!("portico: fib-backend listening on {bound}");
        let _ = std::io::stdout().flush();
        let options = fib::ServerOptions {
            limit: args.limit,
            max_connections: args.max_connections,
            idle_timeout: Duration::from_secs(args.idle_timeout),
        };
        let cache = Arc::new(fib::FibCache::new(args.cache_bytes));
        fib::serve_backend(listener, cache, options, shutdown).await;
        tracing::info!("fib-backend stopped");
        Ok(())
    })
}
