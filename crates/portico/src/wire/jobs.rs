//! The job queue in the table of services (`[jobs]`), and its commands: `portico token`
//! (a token the gateway accepts, as the original's `python -m VestaRestPackage.jwt_`) and
//! `portico migrate servicegateway` (the original's Python config to `[jobs]` TOML).
//!
//! With no `[[jobs.service]]` in the config, the example service `echo` is mounted, so a
//! fresh `portico serve` shows a job end to end: its command is `sh -c` with the script
//! inline (no file to find, no working directory needed, so it runs as `nobody` from a
//! directory `nobody` cannot enter), reports three progress steps and answers its input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::jobs::config::{RawJobsConfig, RawService};
use service::Service;

use super::{BuiltIn, Context};

/// `[jobs]`: the ServiceGateway API and the job queue.
pub struct Jobs;

/// The example service mounted when the config names none.
const ECHO_SERVICE: &str = r#"
name = "echo"
version = "1.0"
noparams = true
command = ["sh", "-c", "input=$(cat); for p in 25 50 75; do echo \"progress $p\" >&2; sleep 0.3; done; printf '%s\n' \"$input\""]
[canarie]
name = "Echo"
synopsis = "Answers the task message it is given, after three progress steps (Portico's example job service)"
institution = "Portico"
category = "Example"
research_subject = "None"
tags = ["example"]
doc = "https://github.com/portico/portico#jobs"
"#;

/// `config` as it runs: the example `echo` service when it names none.
pub fn with_example(config: &RawJobsConfig) -> RawJobsConfig {
    let mut config = config.clone();
    if config.services.is_empty() {
        let echo: RawService = toml::from_str(ECHO_SERVICE).expect("the example service parses");
        config.services.push(echo);
    }
    config
}

/// Names a job service may not take: the job API's own paths and the other services'.
fn taken_names() -> Vec<&'static str> {
    let mut taken: Vec<&'static str> = jobs_api::api::RESERVED_NAMES.to_vec();
    taken.extend_from_slice(super::SERVICE_NAMES);
    taken.extend_from_slice(&["healthz", "readyz", "metrics", "regionInfo"]);
    taken
}

impl BuiltIn for Jobs {
    const NAME: &'static str = "jobs";
    type Config = RawJobsConfig;

    fn validate(config: &RawJobsConfig) -> Vec<String> {
        with_example(config)
            .validate_with(&taken_names())
            .err()
            .unwrap_or_default()
    }

    async fn open(config: &RawJobsConfig, context: Context<'_>) -> anyhow::Result<Service> {
        let config = with_example(config)
            .validate_with(&taken_names())
            .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
        if config.security.bypass {
            tracing::warn!("jobs.security.bypass is on: submissions and cancels need no token");
        }
        let jobs = ::jobs::Jobs::open(
            &config,
            context.data_dir,
            &context.background,
            context.readiness,
        )
        .await?;
        let _ = context.shared.jobs.set(jobs.clone());
        // Page files (`doc = "doc.html"`) are read now, relative to the working directory.
        let api = jobs_api::api::JobsApi::new(jobs.clone(), Path::new("."), context.data_dir)?;
        context
            .background
            .spawn("jobs-temporary-files", api.sweep_temporary_files());
        let (on_drain, on_stop) = (jobs.clone(), jobs);
        Ok(Service::new(Self::NAME, jobs_api::api::router(api))
            .with_background(context.background)
            .on_drain(move || async move { on_drain.drain().await })
            .on_stop(move || async move { on_stop.stop().await }))
    }
}

/// Flags of `portico token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Config file (its [jobs.security] and data_dir); default: the defaults
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long the token is valid (e.g. 10m, 12h); default: jobs.security.jwt_duration
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
}

/// `portico token`: prints a token the gateway with this config accepts.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let config = crate::config::Config::load(args.config.as_deref())?;
    let jobs_config = with_example(&config.services.jobs)
        .validate_with(&taken_names())
        .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
    let security = &jobs_config.security;
    let key = match &security.jwt_key {
        Some(key) => key.clone(),
        None => {
            let (data_dir, _) = service::DataDir::open_or_create(&config.data_dir)?;
            ::jobs::config::load_or_create_jwt_key(&data_dir)?
        }
    };
    let ttl = args.ttl.unwrap_or(security.jwt_duration);
    anyhow::ensure!(!ttl.is_zero(), "--ttl must be more than 0s");
    let algorithm = jobs_api::jwt::algorithm_of(security.jwt_algorithm);
    let token = jobs_api::jwt::sign(&key, &security.jwt_audience, algorithm, ttl)?;
    println!("{token}");
    Ok(())
}
