//! Reload on data file change: polls the file's size, mtime and inode (a replaced file — the
//! usual `mv new regionData.cfg` — has a new inode) and reloads when they differ from the last
//! load attempted. Polling needs no inotify and works on every file system; the interval is
//! configurable.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::service::RegionService;

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// Polls the service's data file every `interval` and reloads it when it changes. Runs until
/// the task is dropped; returns at once when the service has no data file.
pub async fn watch(service: RegionService, interval: Duration) {
    let Some(path) = service.data_path().map(Path::to_path_buf) else {
        return;
    };
    let mut last = stamp(&path);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        if now.is_none() {
            tracing::warn!(file = %path.display(), "region data file is gone; still serving the previous data");
            continue;
        }
        tracing::info!(file = %path.display(), "region data file changed; reloading");
        // Errors are logged by reload; the old data keeps serving.
        let _ = service.reload().await;
    }
}
