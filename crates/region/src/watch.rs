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

/// Polls a data file and reloads the service when it changes.
#[derive(Debug)]
pub struct Watcher {
    path: std::path::PathBuf,
    interval: Duration,
    last: Option<Stamp>,
}

impl Watcher {
    /// Notes the file's current version. Make it *before* the service loads the file: a
    /// change between this and the load is reloaded once more (harmless), while a stamp taken
    /// after the load (or when the watch task first runs) would miss a change made meanwhile.
    pub fn before_load(path: &Path, interval: Duration) -> Watcher {
        Watcher {
            path: path.to_path_buf(),
            interval,
            last: stamp(path),
        }
    }

    /// Polls the file every `interval` and reloads `service` when the file changed. Runs
    /// until the task is dropped.
    pub async fn run(mut self, service: RegionService) {
        let path = self.path;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = stamp(&path);
            if now == self.last {
                continue;
            }
            self.last = now;
            if now.is_none() {
                tracing::warn!(file = %path.display(), "region data file is gone; still serving the previous data");
                continue;
            }
            tracing::info!(file = %path.display(), "region data file changed; reloading");
            // Errors are logged by reload; the old data keeps serving.
            let _ = service.reload().await;
        }
    }
}
