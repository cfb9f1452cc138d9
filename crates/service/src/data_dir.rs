//! `DataDir`: Portico's data directory as an open handle.
//!
//! Started as root, Portico opens what it needs and then switches to an unprivileged user,
//! who may not be able to reach the directory by its path at all (a clone in root's 0700
//! home). Everything under the data directory is therefore opened relative to this handle
//! (cap-std's `Dir`, `openat` underneath), never by path: stores reopen their files after a
//! disk error, the agent writes instance logs, long after the switch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// Why the data directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("creating data directory {path}: {error}")]
    Create {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("opening data directory {path}: {error}")]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// An open directory and the path it was opened at (for messages and logs).
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
    dir: Arc<Dir>,
}

impl DataDir {
    /// Opens the directory at `path`, creating it (and missing parents) first; also says
    /// whether this call created it, which decides whether Portico may change its owner.
    pub fn open_or_create(path: &Path) -> Result<(DataDir, bool), DataDirError> {
        let existed = path.exists();
        std::fs::create_dir_all(path).map_err(|error| DataDirError::Create {
            path: path.to_path_buf(),
            error,
        })?;
        let path = path.canonicalize().map_err(|error| DataDirError::Open {
            path: path.to_path_buf(),
            error,
        })?;
        let dir = Dir::open_ambient_dir(&path, ambient_authority()).map_err(|error| {
            DataDirError::Open {
                path: path.clone(),
                error,
            }
        })?;
        let data_dir = DataDir {
            path,
            dir: Arc::new(dir),
        };
        Ok((data_dir, !existed))
    }

    /// The directory's (canonical) path, for messages; do not open files by it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle to open files relative to.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The subdirectory `name` (created when missing), as a handle of its own.
    pub fn subdir(&self, name: &str) -> Result<DataDir, DataDirError> {
        let path = self.path.join(name);
        self.dir
            .create_dir_all(name)
            .map_err(|error| DataDirError::Create {
                path: path.clone(),
                error,
            })?;
        let dir = self
            .dir
            .open_dir(name)
            .map_err(|error| DataDirError::Open {
                path: path.clone(),
                error,
            })?;
        Ok(DataDir {
            path,
            dir: Arc::new(dir),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creating_reports_whether_it_created_and_subdirs_work_through_the_handle() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("a/b");
        let (dir, created) = DataDir::open_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(dir.path(), path.canonicalize().unwrap());
        let (_, created_again) = DataDir::open_or_create(&path).unwrap();
        assert!(!created_again);
        let tls = dir.subdir("tls").unwrap();
        tls.dir().write("x.pem", b"pem").unwrap();
        assert_eq!(std::fs::read(path.join("tls/x.pem")).unwrap(), b"pem");
        // The handle keeps working when the path no longer leads there.
        let moved = temp.path().join("moved");
        std::fs::rename(temp.path().join("a"), &moved).unwrap();
        assert_eq!(tls.dir().read("x.pem").unwrap(), b"pem");
    }

    #[test]
    fn a_path_under_a_file_names_the_path_and_the_cause() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("file"), b"").unwrap();
        let error = DataDir::open_or_create(&temp.path().join("file/data")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("file/data"), "{text}");
        assert!(text.contains("Not a directory"), "{text}");
    }
}
