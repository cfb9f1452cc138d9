//! `portico check URL`: the watchdog. Probes `/healthz` and each mounted service end to end,
//! prints what it checked, exits 0 when healthy and 1 with the reason otherwise.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Flags of `portico check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Base URL of a listener, e.g. https://localhost:8443.
    pub url: String,
    /// PEM certificate to trust (the one `portico serve` printed).
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// Region the region probe asks for.
    #[arg(long = "region-hint", value_name = "REGION")]
    pub region_hint: Option<String>,
    /// Timeout of each request.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime_duration)]
    pub timeout: Duration,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
}

/// Runs the probes; `Ok(true)` when everything passed.
pub fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let base = reqwest::Url::parse(&args.url).with_context(|| format!("URL {:?}", args.url))?;
    let pem = match &args.cacert {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("reading --cacert {}", path.display()))?,
        ),
        None => None,
    };
    let client = check::client(pem.as_deref(), args.timeout)?;
    let target = check::Target {
        base,
        client,
        region_hint: args.region_hint,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut done = Vec::new();
    let result = runtime.block_on(check::run(&target, &mut done));
    for line in &done {
        println!("ok: {line}");
    }
    match result {
        Ok(()) => {
            println!("all checks passed");
            Ok(true)
        }
        Err(error) => {
            eprintln!("FAILED: {error}");
            Ok(false)
        }
    }
}
