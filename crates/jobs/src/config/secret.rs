//! The JWT key Portico makes for itself when `jwt_key` is unset: 64 random bytes, base64,
//! written once to `jwt.key` in the data directory (mode 0600) and read back on every later
//! start (and by `portico token`), so tokens stay valid across restarts.
//!
//! Everything goes through the data directory handle: Portico may run as a user who cannot
//! resolve the directory's path.

use std::io::{ErrorKind, Write};

use base64::Engine;
use cap_std::fs::{OpenOptions, OpenOptionsExt};
use rand::RngCore;

use super::JwtKey;
use crate::Error;

/// The key file's name inside the data directory.
pub const JWT_KEY_FILE: &str = "jwt.key";
const KEY_BYTES: usize = 64;

/// The key in `jwt.key`, made (random, 0600) if the file does not exist yet. Two processes
/// starting at once agree: only one creates the file, the other reads it.
pub fn load_or_create_jwt_key(data_dir: &service::DataDir) -> Result<JwtKey, Error> {
    let dir = data_dir.dir();
    let path = data_dir.path().join(JWT_KEY_FILE);
    let failed = |doing: &str, e: std::io::Error| {
        Error::Failed(format!("{doing} the JWT key {}: {e}", path.display()))
    };
    let mut key = [0u8; KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    match dir.open_with(JWT_KEY_FILE, &options) {
        Ok(mut file) => {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| failed("writing", e))?;
            tracing::info!(file = %path.display(), "generated a JWT key (jobs.security.jwt_key is unset)");
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed("creating", e)),
    }
    let stored = dir
        .read_to_string(JWT_KEY_FILE)
        .map_err(|e| failed("reading", e))?;
    JwtKey::from_base64(&stored)
        .map_err(|problem| Error::Failed(format!("the JWT key {} {problem}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_private_and_read_back() {
        let temp = tempfile::tempdir().unwrap();
        let (data_dir, _) = service::DataDir::open_or_create(temp.path()).unwrap();
        let first = load_or_create_jwt_key(&data_dir).unwrap();
        assert_eq!(first.bytes.len(), KEY_BYTES);
        let second = load_or_create_jwt_key(&data_dir).unwrap();
        assert_eq!(first, second);
        let mode = std::fs::metadata(temp.path().join(JWT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join(JWT_KEY_FILE), "%%%").unwrap();
        let (data_dir, _) = service::DataDir::open_or_create(temp.path()).unwrap();
        let error = load_or_create_jwt_key(&data_dir).unwrap_err().to_string();
        assert!(
            error.contains("jwt.key") && error.contains("base64"),
            "{error}"
        );
    }
}
