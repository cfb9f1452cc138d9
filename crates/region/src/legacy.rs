//! The original service config, `regionInfo.cfg`, and the checks the original `regionInfo`
//! makes of its `-f -l -r` options, with its defaults and messages:
//!
//! ```text
//! [server]
//! logFile = /var/log/regionService/regionInfo.log
//! regionConfig = /etc/regionService/regionData.cfg
//! ```

use std::path::{Path, PathBuf};

use crate::ini;

/// Default of `-f`.
pub const DEFAULT_SERVICE_CONFIG: &str = "/etc/regionService/regionInfo.cfg";
/// Log file when neither `-l` nor `logFile` says.
pub const DEFAULT_LOG_FILE: &str = "/var/log/regionService/regionInfo.log";
/// Region data when neither `-r` nor `regionConfig` says.
pub const DEFAULT_REGION_DATA: &str = "/etc/regionService/regionData.cfg";

/// The legacy flags.
#[derive(Debug, Clone, Default)]
pub struct LegacyOptions {
    /// `-f`: service config; `None` uses [`DEFAULT_SERVICE_CONFIG`].
    pub file: Option<PathBuf>,
    /// `-l`: log file, overrides `logFile`.
    pub log: Option<PathBuf>,
    /// `-r`: region data, overrides `regionConfig`.
    pub region_data: Option<PathBuf>,
}

/// Where the legacy service logs and reads its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyPaths {
    /// Log file.
    pub log_file: PathBuf,
    /// regionData.cfg.
    pub region_data: PathBuf,
}

/// The original's start-up errors, with its wording (and the details it left out). The
/// wording is the original's, so an I/O cause is not printed in the message but exposed as
/// `source()`: `portico regioninfo` prints the chain (`{:#}`), which names it once, after it.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("Could not find specified configuration file \"{0}\"")]
    NotFound(String),
    #[error("Log directory \"{0}\" is not writable")]
    LogDir(String),
    #[error("Error parsing configuration file \"{path}\"")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Could not parse configuration file \"{path}\"\n{}", .problems.join("\n"))]
    Parse { path: String, problems: Vec<String> },
    #[error("Configuration file \"{path}\" has no option {key} in section [server]")]
    Missing { path: String, key: &'static str },
    #[error("Default configuration file \"{0}\" not found")]
    DefaultNotFound(String),
    #[error("Could not open log file \"{path}\" for writing.")]
    LogFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Resolves the log file and data file the way the original does, in its order of checks.
pub fn resolve(options: &LegacyOptions) -> Result<LegacyPaths, LegacyError> {
    if let Some(file) = &options.file {
        if !file.is_file() {
            return Err(LegacyError::NotFound(shown(file)));
        }
    }
    if let Some(log) = &options.log {
        check_log_dir(log)?;
    }
    if let Some(data) = &options.region_data {
        if !data.is_file() {
            return Err(LegacyError::NotFound(shown(data)));
        }
    }
    let file = options
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVICE_CONFIG));
    let config = read_service_config(&file)?;
    let log_file = match &options.log {
        Some(log) => log.clone(),
        None => config_value(&config, &file, "logfile", "logFile")?,
    };
    let region_data = match &options.region_data {
        Some(data) => data.clone(),
        None => {
            let data = config_value(&config, &file, "regionconfig", "regionConfig")?;
            if !data.is_file() {
                return Err(LegacyError::DefaultNotFound(shown(&data)));
            }
            data
        }
    };
    Ok(LegacyPaths {
        log_file,
        region_data,
    })
}

/// Opens (creates) the log file for appending, as the original's `logging.basicConfig` does.
pub fn open_log(path: &Path) -> Result<std::fs::File, LegacyError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LegacyError::LogFile {
            path: shown(path),
            source,
        })
}

/// Keeps the log writer alive; dropping it flushes the log.
pub struct LogGuard {
    _guard: tracing_appender::non_blocking::WorkerGuard,
}

/// Sends every log line (the service's and the gateway's access log) to `file`, appended, at
/// `level` (a tracing filter such as `info`), as the original's single log file. Lines go
/// through a background writer and are never dropped. Rotation is left to logrotate
/// (`copytruncate` works: the file is opened for appending).
pub fn init_logging(file: std::fs::File, level: &str) -> Result<LogGuard, String> {
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("log level {level:?}: {e}"))?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(file);
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(filter)
        .finish()
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(LogGuard { _guard: guard })
}

fn check_log_dir(log: &Path) -> Result<(), LegacyError> {
    let absolute = std::path::absolute(log).unwrap_or_else(|_| log.to_path_buf());
    let dir = absolute.parent().unwrap_or(Path::new("/"));
    let writable = std::fs::metadata(dir)
        .map(|m| m.is_dir() && !m.permissions().readonly())
        .unwrap_or(false);
    if writable {
        Ok(())
    } else {
        Err(LegacyError::LogDir(shown(dir)))
    }
}

fn read_service_config(file: &Path) -> Result<ini::Ini, LegacyError> {
    let bytes = std::fs::read(file).map_err(|source| LegacyError::Read {
        path: shown(file),
        source,
    })?;
    ini::parse_bytes(&bytes).map_err(|problems| LegacyError::Parse {
        path: shown(file),
        problems: problems.iter().map(ToString::to_string).collect(),
    })
}

fn config_value(
    config: &ini::Ini,
    file: &Path,
    key: &str,
    written: &'static str,
) -> Result<PathBuf, LegacyError> {
    config
        .section("server")
        .and_then(|s| s.get(config, key))
        .filter(|e| !e.value.is_empty())
        .map(|e| PathBuf::from(&e.value))
        .ok_or(LegacyError::Missing {
            path: shown(file),
            key: written,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn paths_come_from_the_service_config() {
        let dir = tempfile::tempdir().unwrap();
        let data = write(dir.path(), "regionData.cfg", "[r]\n");
        let log = dir.path().join("regionInfo.log");
        let text = format!(
            "[server]\nlogFile = {}\nregionConfig = {}\n",
            log.display(),
            data.display()
        );
        let file = write(dir.path(), "regionInfo.cfg", &text);
        let options = LegacyOptions {
            file: Some(file),
            ..LegacyOptions::default()
        };
        let paths = resolve(&options).unwrap();
        assert_eq!(
            paths,
            LegacyPaths {
                log_file: log,
                region_data: data
            }
        );
    }

    #[test]
    fn flags_override_the_service_config() {
        let dir = tempfile::tempdir().unwrap();
        let data = write(dir.path(), "other.cfg", "[r]\n");
        let file = write(dir.path(), "regionInfo.cfg", "[server]\n");
        let log = dir.path().join("x.log");
        let options = LegacyOptions {
            file: Some(file),
            log: Some(log.clone()),
            region_data: Some(data.clone()),
        };
        assert_eq!(
            resolve(&options).unwrap(),
            LegacyPaths {
                log_file: log,
                region_data: data
            }
        );
    }

    #[test]
    fn missing_files_use_the_original_messages() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.cfg");
        let options = LegacyOptions {
            file: Some(missing.clone()),
            ..LegacyOptions::default()
        };
        assert_eq!(
            resolve(&options).unwrap_err().to_string(),
            format!(
                "Could not find specified configuration file \"{}\"",
                missing.display()
            )
        );
        let text = format!(
            "[server]\nlogFile = {0}/l.log\nregionConfig = {0}/gone.cfg\n",
            dir.path().display()
        );
        let file = write(dir.path(), "regionInfo.cfg", &text);
        let options = LegacyOptions {
            file: Some(file),
            ..LegacyOptions::default()
        };
        assert_eq!(
            resolve(&options).unwrap_err().to_string(),
            format!(
                "Default configuration file \"{}/gone.cfg\" not found",
                dir.path().display()
            )
        );
    }

    #[test]
    fn unwritable_log_directory_is_refused() {
        let options = LegacyOptions {
            log: Some(PathBuf::from("/nonexistent-dir/x.log")),
            ..LegacyOptions::default()
        };
        assert_eq!(
            resolve(&options).unwrap_err().to_string(),
            "Log directory \"/nonexistent-dir\" is not writable"
        );
    }

    #[test]
    fn missing_key_and_bad_syntax_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "regionInfo.cfg",
            "[server]\nlogFile = /tmp/x.log\n",
        );
        let options = LegacyOptions {
            file: Some(file.clone()),
            ..LegacyOptions::default()
        };
        assert_eq!(
            resolve(&options).unwrap_err().to_string(),
            format!(
                "Configuration file \"{}\" has no option regionConfig in section [server]",
                file.display()
            )
        );
        let bad = write(dir.path(), "bad.cfg", "logFile = x\n");
        let options = LegacyOptions {
            file: Some(bad),
            ..LegacyOptions::default()
        };
        let message = resolve(&options).unwrap_err().to_string();
        assert!(
            message.starts_with("Could not parse configuration file"),
            "{message}"
        );
        assert!(message.contains("line 1"), "{message}");
    }
}
