//! The embedded registry's catalog on disk: one JSON file (a list of specs) in the data
//! directory, replaced atomically (write a temporary file, fsync, rename over, fsync the
//! directory) so a crash leaves the old catalog or the new one, never half of one. Opened
//! through the directory handle, never by path (Portico may have switched to `nobody`).
//! Blocking: callers run these functions on a blocking thread.

use std::io::Write;

use service::DataDir;

use crate::{Error, ServiceSpec};

/// The catalog file's name in its directory.
pub const CATALOG_FILE: &str = "catalog.json";
const TEMPORARY_FILE: &str = "catalog.json.tmp";

/// Reads the catalog; a missing file is an empty catalog.
pub fn read(dir: &DataDir) -> Result<Vec<ServiceSpec>, Error> {
    let bytes = match dir.dir().read(CATALOG_FILE) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(catalog_error(dir, format!("reading: {error}"))),
    };
    serde_json::from_slice(&bytes).map_err(|error| catalog_error(dir, format!("parsing: {error}")))
}

/// Replaces the catalog with `specs`.
pub fn write(dir: &DataDir, specs: &[ServiceSpec]) -> Result<(), Error> {
    let mut text =
        serde_json::to_vec_pretty(specs).expect("specs always serialize (strings and numbers)");
    text.push(b'\n');
    let fail = |what: &str, error: std::io::Error| catalog_error(dir, format!("{what}: {error}"));
    let mut file = dir
        .dir()
        .create(TEMPORARY_FILE)
        .map_err(|e| fail("creating the temporary file", e))?;
    file.write_all(&text)
        .map_err(|e| fail("writing the temporary file", e))?;
    file.sync_all()
        .map_err(|e| fail("syncing the temporary file", e))?;
    drop(file);
    dir.dir()
        .rename(TEMPORARY_FILE, dir.dir(), CATALOG_FILE)
        .map_err(|e| fail("replacing the catalog", e))?;
    // A read-only descriptor of the directory itself (a `Dir` handle may not allow fsync).
    let directory = dir
        .dir()
        .open(".")
        .map_err(|e| fail("opening its directory", e))?;
    directory
        .sync_all()
        .map_err(|e| fail("syncing its directory", e))
}

fn catalog_error(dir: &DataDir, reason: String) -> Error {
    Error::Catalog {
        path: dir.path().join(CATALOG_FILE).display().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_catalog_is_read_back_and_a_missing_one_is_empty() {
        let temp = tempfile::tempdir().unwrap();
        let (dir, _) = DataDir::open_or_create(temp.path()).unwrap();
        assert!(read(&dir).unwrap().is_empty());
        let specs = vec![ServiceSpec::new("a", &["x"]), ServiceSpec::new("b", &["y"])];
        write(&dir, &specs).unwrap();
        assert_eq!(read(&dir).unwrap(), specs);
        assert!(!temp.path().join(TEMPORARY_FILE).exists());
    }

    #[test]
    fn a_damaged_catalog_names_its_file() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join(CATALOG_FILE), "[{").unwrap();
        let (dir, _) = DataDir::open_or_create(temp.path()).unwrap();
        let error = read(&dir).unwrap_err().to_string();
        assert!(
            error.contains("catalog.json") && error.contains("parsing"),
            "{error}"
        );
    }
}
