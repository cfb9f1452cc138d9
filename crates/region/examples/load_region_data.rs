//! Times loading a `regionData.cfg` (read + parse + build the tables) and prints the memory
//! the process holds afterwards; `bench/region/run.sh` uses it for the start-up target.
//!
//! ```text
//! cargo run --release -p region --example load_region_data -- FILE [ROUNDS]
//! ```

use std::time::Instant;

use region::{BuildOptions, RegionData};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: load_region_data FILE [ROUNDS]")?;
    let rounds: usize = args.get(1).map_or(Ok(5), |r| r.parse())?;
    let rss_before = status_kib("VmRSS:");
    let mut best = f64::MAX;
    let mut kept = None;
    for _ in 0..rounds.max(1) {
        // Free the previous round's data first so the peak is one copy.
        drop(kept.take());
        let start = Instant::now();
        let data = RegionData::load(std::path::Path::new(path), BuildOptions::default())?;
        best = best.min(start.elapsed().as_secs_f64() * 1000.0);
        kept = Some(data);
    }
    let data = kept.ok_or("nothing loaded")?;
    let (v4, v6) = data.prefix_counts();
    println!(
        "regions={} v4_prefixes={} v6_prefixes={} skipped={} load_ms_best={best:.1} \
         rss_before_kib={} rss_after_kib={} peak_rss_kib={}",
        data.regions().len(),
        v4,
        v6,
        data.warnings.len(),
        rss_before,
        status_kib("VmRSS:"),
        status_kib("VmHWM:"),
    );
    Ok(())
}

/// A `kB` line of `/proc/self/status` (0 where there is none).
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
