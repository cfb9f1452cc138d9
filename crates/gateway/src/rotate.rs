//! A size-rotated log file with Python `RotatingFileHandler` semantics, which the original
//! services used: before a line that would take the file past `max_bytes`, the file is
//! renamed `.1` (older ones shift to `.2` .. `.N`, the oldest is deleted) and a new one
//! started. Lines are never split; a single line longer than `max_bytes` gets a file of its
//! own. Writes are buffered: the caller flushes (the log writer thread does after each batch).
//!
//! Files are opened and renamed through a handle to their directory (cap-std's `Dir`), not by
//! path, so rotation keeps working after Portico switched to a user who cannot reach the
//! directory by its path (a log directory under root's 0700 home).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

/// Buffer between the caller and the file.
const BUFFER_BYTES: usize = 64 * 1024;

/// See the module doc.
pub struct RotatingFile {
    dir: Arc<Dir>,
    name: String,
    max_bytes: u64,
    backups: usize,
    file: Option<BufWriter<File>>,
    size: u64,
    /// The last write ended inside a line (no rotation until the line ends).
    mid_line: bool,
}

impl RotatingFile {
    /// Opens (appending to) `path`; rotation goes through a handle to its directory.
    pub fn open(path: &Path, max_bytes: u64, backups: usize) -> io::Result<Self> {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = Dir::open_ambient_dir(parent, ambient_authority())?;
        RotatingFile::open_in(Arc::new(dir), name, max_bytes, backups)
    }

    /// Opens (appending to) the file `name` in `dir`.
    pub fn open_in(dir: Arc<Dir>, name: &str, max_bytes: u64, backups: usize) -> io::Result<Self> {
        let mut file = RotatingFile {
            dir,
            name: name.to_string(),
            max_bytes: max_bytes.max(1),
            backups,
            file: None,
            size: 0,
            mid_line: false,
        };
        file.reopen()?;
        Ok(file)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        let file = self.dir.open_with(&self.name, &options)?.into_std();
        self.size = file.metadata()?.len();
        self.file = Some(BufWriter::with_capacity(BUFFER_BYTES, file));
        Ok(())
    }

    fn backup_name(&self, n: usize) -> String {
        format!("{}.{n}", self.name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush()?;
        }
        if self.backups == 0 {
            self.dir.create(&self.name)?;
        } else {
            let _ = self.dir.remove_file(self.backup_name(self.backups));
            for n in (1..self.backups).rev() {
                let from = self.backup_name(n);
                if self.dir.exists(&from) {
                    self.dir.rename(&from, &self.dir, self.backup_name(n + 1))?;
                }
            }
            self.dir
                .rename(&self.name, &self.dir, self.backup_name(1))?;
        }
        self.reopen()
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let would_pass = self.size + line.len() as u64 > self.max_bytes;
        if would_pass && self.size > 0 && !self.mid_line {
            self.rotate()?;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))?;
        file.write_all(line)?;
        self.size += line.len() as u64;
        self.mid_line = !line.ends_with(b"\n");
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for line in buf.split_inclusive(|&b| b == b'\n') {
            self.write_line(line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotation_keeps_at_most_backups_files_of_whole_lines_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut log = RotatingFile::open(&path, 100, 3).unwrap();
        let mut batch = Vec::new();
        for i in 0..200 {
            writeln!(batch, "line {i:04} of the log").unwrap();
        }
        log.write_all(&batch).unwrap();
        log.flush().unwrap();
        assert_eq!(
            names(dir.path()),
            ["app.log", "app.log.1", "app.log.2", "app.log.3"]
        );
        for name in names(dir.path()) {
            let text = fs::read_to_string(dir.path().join(&name)).unwrap();
            assert!(text.len() <= 100, "{name} has {} bytes", text.len());
            assert!(text
                .lines()
                .all(|l| l.starts_with("line ") && l.ends_with("log")));
        }
        let newest_backup = fs::read_to_string(dir.path().join("app.log.1")).unwrap();
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("line 0199 of the log\n"));
        assert!(
            newest_backup < current,
            "`.1` holds the lines just before the current file"
        );
    }

    #[test]
    fn an_existing_file_is_appended_to_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        fs::write(&path, "x".repeat(90) + "\n").unwrap();
        let mut log = RotatingFile::open(&path, 100, 1).unwrap();
        log.write_all(b"twenty bytes of log\n").unwrap();
        log.flush().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "twenty bytes of log\n");
        assert_eq!(fs::read(dir.path().join("access.log.1")).unwrap().len(), 91);
    }

    #[test]
    fn zero_backups_truncates_and_a_long_line_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = RotatingFile::open(&path, 10, 0).unwrap();
        log.write_all(b"short\n").unwrap();
        log.write_all(b"a line far longer than ten bytes\n")
            .unwrap();
        log.flush().unwrap();
        assert_eq!(names(dir.path()), ["a.log"]);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "a line far longer than ten bytes\n"
        );
    }

    #[test]
    fn rotation_goes_through_the_directory_handle_not_the_path() {
        let temp = tempfile::tempdir().unwrap();
        let logs = temp.path().join("logs");
        fs::create_dir(&logs).unwrap();
        let mut log = RotatingFile::open(&logs.join("app.log"), 30, 2).unwrap();
        log.write_all(b"first line of the log\n").unwrap();
        // The path no longer leads to the directory (as for a user who cannot enter it).
        let moved = temp.path().join("moved");
        fs::rename(&logs, &moved).unwrap();
        log.write_all(b"second line of the log\nthird line of the log\n")
            .unwrap();
        log.flush().unwrap();
        assert_eq!(names(&moved), ["app.log", "app.log.1", "app.log.2"]);
        assert_eq!(
            fs::read_to_string(moved.join("app.log")).unwrap(),
            "third line of the log\n"
        );
    }
}
