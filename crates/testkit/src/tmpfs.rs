//! A small real filesystem for tests that fill a disk: a tmpfs of a given size mounted on a
//! fresh temporary directory, resized while mounted (`mount -o remount,size=...`), unmounted
//! on drop. Mounting needs root: [`Tmpfs::mount_or_skip`] follows the rule for missing
//! servers (a failure when `CI` is set, otherwise a skip with the reason).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::server_missing;

/// A mounted tmpfs; unmounted (and its mount point removed) on drop.
#[derive(Debug)]
pub struct Tmpfs {
    /// Holds the mount point; removed after the unmount.
    _parent: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` bytes on a new temporary directory.
    pub fn mount(bytes: u64) -> io::Result<Tmpfs> {
        let euid = nix::unistd::Uid::effective();
        if !euid.is_root() {
            return Err(io::Error::other(format!(
                "mounting a tmpfs needs root; running as uid {euid}"
            )));
        }
        let parent = tempfile::tempdir()?;
        let path = parent.path().join("tmpfs");
        std::fs::create_dir(&path)?;
        let options = format!("size={bytes},mode=0755");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "portico-test"])
            .arg(&path))?;
        Ok(Tmpfs {
            _parent: parent,
            path,
        })
    }

    /// [`Tmpfs::mount`], or `None` (the test skips, saying why) when it cannot be mounted and
    /// `CI` is not set; with `CI` set that is a failure (panic).
    pub fn mount_or_skip(bytes: u64) -> Option<Tmpfs> {
        match Tmpfs::mount(bytes) {
            Ok(tmpfs) => Some(tmpfs),
            Err(error) => {
                server_missing("a tmpfs mount", error);
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Grows or shrinks the mounted filesystem to `bytes` bytes; its files stay.
    pub fn resize(&self, bytes: u64) -> io::Result<()> {
        let options = format!("remount,size={bytes}");
        run(Command::new("mount").args(["-o", &options]).arg(&self.path))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A process still using it (a server that was not stopped) makes a plain unmount
        // fail; detach it lazily then, so the mount never outlives the test run.
        if run(Command::new("umount").arg(&self.path)).is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.path));
        }
        // `_parent` (and the mount point in it) is removed after this, when the field drops.
    }
}

/// Runs `command`; an error names it and carries its stderr.
fn run(command: &mut Command) -> io::Result<()> {
    let output = command.output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_up_grows_and_unmounts() {
        let Some(tmpfs) = Tmpfs::mount_or_skip(1 << 20) else {
            return;
        };
        let path = tmpfs.path().to_path_buf();
        let big = vec![7u8; 2 << 20];
        let error = std::fs::write(path.join("big"), &big).expect_err("1 MiB is full");
        assert_eq!(error.raw_os_error(), Some(nix::errno::Errno::ENOSPC as i32));
        tmpfs.resize(4 << 20).expect("grow");
        std::fs::write(path.join("big"), &big).expect("fits now");
        drop(tmpfs);
        assert!(!path.exists(), "mount point left behind");
    }
}
