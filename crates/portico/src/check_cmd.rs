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
    /// Timeout of each request (at most a day): 10s, 500ms, 1m 30s, ...
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// The longest `--timeout` accepted. A probe that needs more is not a health check, and a
/// bound keeps every deadline computed from it (reqwest's, tokio's timers) far from overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// `--timeout`: a humantime duration (`10s`, `500ms`, `1m 30s`) above zero and at most
/// [`MAX_TIMEOUT`]. Clap names the flag in front of the message.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let too_long = || {
        format!(
            "at most {} is allowed",
            humantime::format_duration(MAX_TIMEOUT)
        )
    };
    let duration = humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_long(),
        e => format!("not a duration like 10s, 500ms or 1m 30s ({e})"),
    })?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    if duration > MAX_TIMEOUT {
        return Err(too_long());
    }
    Ok(duration)
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
    let result = runtime.block_on(check::run(&target, &crate::wire::probes(), &mut done));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_reads_human_durations() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("1day"), Ok(MAX_TIMEOUT));
    }

    #[test]
    fn timeout_refuses_garbage_zero_and_bare_numbers() {
        for bad in ["", "ten seconds", "10", "-5s", "0s", "0ms"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn huge_timeouts_are_refused_not_overflowed() {
        for huge in [
            "1day 1ns",
            "999999999999999999s",
            "999999999999999999m",
            "18446744073709551615s",
            "18446744073709551616s",
            "99999999999999999999999999999h",
        ] {
            let error = parse_timeout(huge).unwrap_err();
            assert_eq!(error, "at most 1day is allowed", "{huge}");
        }
    }
}
