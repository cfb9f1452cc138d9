//! Temporary files (`GET /temporary_upload_path`, `POST/GET /temporary_file[/<name>]`): bytes a
//! client uploads so a job can read them by URL (`doc_url`), as the original's storage URLs.
//!
//! Files live in `temporary_files/` under the data directory, opened through its [`DataDir`]
//! handle, never by a path built from client input: a name is 32 lowercase hex digits (128
//! random bits, generated here, or given back by the client and checked against exactly that
//! alphabet and length). The name is the capability: downloads need no token.
//!
//! On disk, `<name>` holds the bytes and `<name>.json` its [`Meta`] (content type, size,
//! upload time). A file exists for readers only once its meta does, and both are written
//! under temporary names, fsync'd, then linked or renamed into place and the directory
//! fsync'd: a crash or a full disk leaves no half-written file that would be served later.
//! `<name>` is linked (not renamed) into place, so an existing name is never overwritten
//! (409). Uploads are bounded by the gateway's body limit (413), by
//! `jobs.temporary_files_max_bytes` for all files together (507), and kept for
//! `jobs.temporary_files_ttl`; [`TempFiles::sweep`] removes expired files, leftovers of
//! interrupted uploads, and a file past its time answers 404 even before the sweep.
//! Blocking file calls run on tokio's blocking threads.

use std::io::{ErrorKind, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use service::DataDir;

use crate::vesta::ApiError;

/// The subdirectory of the data directory that holds them.
pub const DIRECTORY: &str = "temporary_files";
/// Length of a name (hex digits of 128 random bits).
pub const NAME_LENGTH: usize = 32;
/// Prefix of files being written (never a valid name: names are hex only).
const PARTIAL: &str = ".part-";
/// A partial file or a meta-less file older than this is a leftover of a dead upload.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);
/// The content type of a raw upload that names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// What is known of a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub content_type: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch (a ttl of seconds expires to the millisecond).
    pub created_ms: u64,
    /// The multipart part's file name, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// One stored file, opened for reading.
#[derive(Debug)]
pub struct Download {
    pub meta: Meta,
    pub file: std::fs::File,
}

/// The store of temporary files.
#[derive(Debug)]
pub struct TempFiles {
    dir: DataDir,
    ttl: Duration,
    max_bytes: u64,
    /// Bytes of stored files plus uploads in progress.
    used: Mutex<u64>,
}

/// Whether `name` is a valid temporary file name (32 lowercase hex digits).
pub fn valid_name(name: &str) -> bool {
    name.len() == NAME_LENGTH && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh, unguessable name (the thread RNG is a CSPRNG seeded from the OS).
pub fn new_name() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "A temporary file name is {NAME_LENGTH} lowercase hexadecimal digits, as \
         GET /temporary_upload_path gives them; {:?} is not one",
        name.chars().take(80).collect::<String>()
    )))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn io_error(what: &str, error: std::io::Error) -> ApiError {
    // ENOSPC and EDQUOT: the disk (or the user's quota) is full.
    if matches!(error.raw_os_error(), Some(28) | Some(122)) {
        return ApiError::DiskFull(format!("{what}: {error}"));
    }
    ApiError::Internal(format!("temporary files: {what}: {error}"))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("temporary files: {e}")))?
}

impl TempFiles {
    /// Opens (creates) `temporary_files/` under `data_dir`, removes leftovers of uploads a
    /// previous run did not finish, and counts the bytes stored.
    pub fn open(data_dir: &DataDir, ttl: Duration, max_bytes: u64) -> std::io::Result<TempFiles> {
        let dir = data_dir
            .subdir(DIRECTORY)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let files = TempFiles {
            dir,
            ttl,
            max_bytes,
            used: Mutex::new(0),
        };
        let scan = files.scan(Duration::ZERO)?;
        *files.lock_used() = scan.kept;
        Ok(files)
    }

    fn lock_used(&self) -> std::sync::MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a file is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Bytes held now (stored files and uploads in progress).
    pub fn used(&self) -> u64 {
        *self.lock_used()
    }

    /// Stores `bytes` under `name` (a new name when `None`); durable when this returns.
    pub async fn store(
        self: &Arc<Self>,
        name: Option<&str>,
        bytes: Bytes,
        content_type: &str,
        filename: Option<String>,
    ) -> Result<String, ApiError> {
        let name = match name {
            Some(name) => {
                check_name(name)?;
                name.to_string()
            }
            None => new_name(),
        };
        let size = bytes.len() as u64;
        self.reserve(size).await?;
        let meta = Meta {
            content_type: content_type.to_string(),
            size,
            created_ms: now_ms(),
            filename,
        };
        let files = self.clone();
        let stored_name = name.clone();
        let result = blocking(move || files.write(&stored_name, &bytes, &meta)).await;
        if result.is_err() {
            let mut used = self.lock_used();
            *used = used.saturating_sub(size);
        }
        result.map(|()| name)
    }

    /// Counts `size` bytes against the quota, sweeping expired files first when they would
    /// not fit.
    async fn reserve(self: &Arc<Self>, size: u64) -> Result<(), ApiError> {
        if size > self.max_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "The file has {size} bytes; a temporary file may have at most {} \
                 (jobs.temporary_files_max_bytes)",
                self.max_bytes
            )));
        }
        if self.try_reserve(size) {
            return Ok(());
        }
        self.sweep().await;
        if self.try_reserve(size) {
            return Ok(());
        }
        Err(ApiError::InsufficientStorage(format!(
            "The temporary files hold {} of their {} bytes (jobs.temporary_files_max_bytes); \
             {size} more do not fit until some expire",
            self.used(),
            self.max_bytes
        )))
    }

    fn try_reserve(&self, size: u64) -> bool {
        let mut used = self.lock_used();
        if used.saturating_add(size) > self.max_bytes {
            return false;
        }
        *used += size;
        true
    }

    /// Writes the bytes and the meta under partial names, fsyncs them, links the bytes into
    /// place (failing on an existing name), renames the meta, fsyncs the directory.
    fn write(&self, name: &str, bytes: &[u8], meta: &Meta) -> Result<(), ApiError> {
        let dir = self.dir.dir();
        let suffix = new_name();
        let data_part = format!("{PARTIAL}{name}-{suffix}");
        let meta_part = format!("{PARTIAL}{name}-{suffix}.json");
        let result = (|| {
            write_synced(dir, &data_part, bytes).map_err(|e| io_error("writing", e))?;
            let meta_text = serde_json::to_vec(meta).expect("meta serializes");
            write_synced(dir, &meta_part, &meta_text).map_err(|e| io_error("writing", e))?;
            match dir.hard_link(&data_part, dir, name) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                    return Err(ApiError::Conflict(format!(
                        "The temporary file {name} exists already; files are never replaced \
                         (GET /temporary_upload_path gives a new name)"
                    )))
                }
                Err(error) => return Err(io_error("linking", error)),
            }
            dir.rename(&meta_part, dir, format!("{name}.json"))
                .map_err(|e| io_error("renaming", e))?;
            sync_dir(dir).map_err(|e| io_error("syncing the directory", e))
        })();
        let _ = dir.remove_file(&data_part);
        if result.is_err() {
            let _ = dir.remove_file(&meta_part);
        }
        result
    }

    /// The file `name`, opened, or 404 (unknown or expired) / 400 (not a name).
    pub async fn open_file(self: &Arc<Self>, name: &str) -> Result<Download, ApiError> {
        check_name(name)?;
        let files = self.clone();
        let name = name.to_string();
        blocking(move || files.open_blocking(&name)).await
    }

    fn open_blocking(&self, name: &str) -> Result<Download, ApiError> {
        let not_found = || {
            ApiError::NotFound(format!(
                "There is no temporary file {name} (never uploaded, or expired after {})",
                humantime::format_duration(self.ttl)
            ))
        };
        let meta = match self.read_meta(name) {
            Ok(meta) => meta,
            Err(error) if error.kind() == ErrorKind::NotFound => return Err(not_found()),
            Err(error) => return Err(io_error("reading", error)),
        };
        if self.expired(&meta, now_ms()) {
            return Err(not_found());
        }
        let file = match self.dir.dir().open(name) {
            Ok(file) => file.into_std(),
            Err(error) if error.kind() == ErrorKind::NotFound => return Err(not_found()),
            Err(error) => return Err(io_error("opening", error)),
        };
        Ok(Download { meta, file })
    }

    fn read_meta(&self, name: &str) -> std::io::Result<Meta> {
        let text = self.dir.dir().read(format!("{name}.json"))?;
        serde_json::from_slice(&text).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
    }

    fn expired(&self, meta: &Meta, now: u64) -> bool {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        meta.created_ms.saturating_add(ttl) <= now
    }

    /// Removes expired files and leftovers of dead uploads; logs what it could not.
    pub async fn sweep(self: &Arc<Self>) {
        let files = self.clone();
        let result = tokio::task::spawn_blocking(move || files.scan(LEFTOVER_AGE)).await;
        match result {
            Ok(Ok(scan)) => {
                let mut used = self.lock_used();
                *used = used.saturating_sub(scan.freed);
            }
            Ok(Err(error)) => tracing::warn!(%error, "sweeping temporary files failed"),
            Err(error) => tracing::warn!(%error, "sweeping temporary files failed"),
        }
    }

    /// Sweeps every `period` until the process stops.
    pub async fn sweep_every(self: Arc<Self>, period: Duration) {
        loop {
            tokio::time::sleep(period).await;
            self.sweep().await;
        }
    }

    /// Removes expired files, partial files and meta-less files older than `leftover_age`;
    /// the bytes of the files kept and of those removed (only a scan removes stored files,
    /// so the count of bytes used goes down by exactly what it freed).
    fn scan(&self, leftover_age: Duration) -> std::io::Result<Scan> {
        let dir = self.dir.dir();
        let now = now_ms();
        let mut kept = 0u64;
        let mut removed = 0u64;
        let mut freed = 0u64;
        for entry in dir.entries()? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let old = || {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.into_std().elapsed().ok())
                    .is_some_and(|age| age >= leftover_age)
            };
            if file_name.starts_with(PARTIAL) {
                if old() {
                    let _ = dir.remove_file(file_name);
                }
                continue;
            }
            if let Some(name) = file_name.strip_suffix(".json") {
                match self.read_meta(name) {
                    Ok(meta) if !self.expired(&meta, now) => kept += meta.size,
                    Ok(meta) => {
                        let _ = dir.remove_file(name);
                        dir.remove_file(file_name)?;
                        removed += 1;
                        freed += meta.size;
                    }
                    Err(error) => {
                        tracing::warn!(file = file_name, %error, "unreadable temporary file meta")
                    }
                }
                continue;
            }
            let has_meta = dir.exists(format!("{file_name}.json"));
            if !has_meta && old() {
                let _ = dir.remove_file(file_name);
            }
        }
        if removed > 0 {
            tracing::info!(removed, freed, "swept expired temporary files");
        }
        Ok(Scan { kept, freed })
    }
}

/// What a scan of the directory found.
struct Scan {
    kept: u64,
    freed: u64,
}

fn write_synced(dir: &cap_std::fs::Dir, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = dir.create(name)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &cap_std::fs::Dir) -> std::io::Result<()> {
    dir.open(".")?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(ttl: Duration, max: u64) -> (tempfile::TempDir, Arc<TempFiles>) {
        let temp = tempfile::tempdir().unwrap();
        let (data_dir, _) = DataDir::open_or_create(temp.path()).unwrap();
        let files = TempFiles::open(&data_dir, ttl, max).unwrap();
        (temp, Arc::new(files))
    }

    #[test]
    fn names_are_32_lowercase_hex_digits_and_nothing_else_passes() {
        let name = new_name();
        assert!(valid_name(&name), "{name}");
        assert_ne!(new_name(), name);
        for bad in [
            "",
            "../../etc/passwd",
            &name.to_uppercase(),
            &name[1..],
            &format!("{name}0"),
            &format!("{}.json", &name[..27]),
            "0123456789abcdef0123456789abcde/",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_stored_file_reads_back_with_its_meta_and_is_never_replaced() {
        let (temp, files) = store(Duration::from_secs(60), 1000);
        let name = files
            .store(None, Bytes::from_static(b"hello"), "text/plain", None)
            .await
            .unwrap();
        let download = files.open_file(&name).await.unwrap();
        assert_eq!(download.meta.content_type, "text/plain");
        assert_eq!(download.meta.size, 5);
        let bytes = std::fs::read(temp.path().join(DIRECTORY).join(&name)).unwrap();
        assert_eq!(bytes, b"hello");
        let again = files
            .store(
                Some(&name),
                Bytes::from_static(b"other"),
                "text/plain",
                None,
            )
            .await;
        assert!(matches!(again, Err(ApiError::Conflict(_))), "{again:?}");
        assert_eq!(files.used(), 5, "the refused upload gave its bytes back");
        let leftovers: Vec<_> = std::fs::read_dir(temp.path().join(DIRECTORY))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(PARTIAL))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn the_quota_counts_every_file_and_expired_ones_are_swept_to_make_room() {
        let (temp, files) = store(Duration::from_secs(1), 10);
        let big = files
            .store(None, Bytes::from(vec![1u8; 11]), "a/b", None)
            .await;
        assert!(matches!(big, Err(ApiError::PayloadTooLarge(_))), "{big:?}");
        let first = files
            .store(None, Bytes::from(vec![1u8; 6]), "a/b", None)
            .await
            .unwrap();
        let full = files
            .store(None, Bytes::from(vec![1u8; 6]), "a/b", None)
            .await;
        assert!(
            matches!(full, Err(ApiError::InsufficientStorage(_))),
            "{full:?}"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let gone = files.open_file(&first).await;
        assert!(matches!(gone, Err(ApiError::NotFound(_))), "{gone:?}");
        files
            .store(None, Bytes::from(vec![1u8; 6]), "a/b", None)
            .await
            .unwrap();
        assert!(!temp.path().join(DIRECTORY).join(&first).exists());
        assert_eq!(files.used(), 6);
    }

    #[test]
    fn a_restart_removes_partial_uploads_and_counts_what_is_stored() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join(DIRECTORY);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{PARTIAL}x")), b"half").unwrap();
        let name = new_name();
        std::fs::write(dir.join(&name), b"abc").unwrap();
        let meta = Meta {
            content_type: "x/y".into(),
            size: 3,
            created_ms: now_ms(),
            filename: None,
        };
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        let orphan = new_name();
        std::fs::write(dir.join(&orphan), b"no meta").unwrap();
        let (data_dir, _) = DataDir::open_or_create(temp.path()).unwrap();
        let files = TempFiles::open(&data_dir, Duration::from_secs(60), 100).unwrap();
        assert_eq!(files.used(), 3);
        assert!(!dir.join(format!("{PARTIAL}x")).exists());
        assert!(!dir.join(&orphan).exists());
        assert!(dir.join(&name).exists());
    }
}
