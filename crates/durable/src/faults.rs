//! Fault injection, for tests: a redb [`StorageBackend`] wrapper whose writes, `set_len`,
//! fsyncs or reads can be told at run time to fail with ENOSPC or EIO (neon's
//! `UnreliableWrapper` idea). Tests of every user of this crate set [`crate::Options::faults`]
//! and flip the switch while the database runs on a real file.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use redb::StorageBackend;

/// The error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// ENOSPC: no space left on device.
    NoSpace,
    /// EIO: input/output error.
    Io,
}

impl Fault {
    fn code(self) -> u8 {
        match self {
            Fault::NoSpace => 1,
            Fault::Io => 2,
        }
    }

    fn from_code(code: u8) -> Option<Fault> {
        match code {
            1 => Some(Fault::NoSpace),
            2 => Some(Fault::Io),
            _ => None,
        }
    }

    fn error(self) -> io::Error {
        let errno = match self {
            Fault::NoSpace => Errno::ENOSPC,
            Fault::Io => Errno::EIO,
        };
        io::Error::from_raw_os_error(errno as i32)
    }
}

/// The switch of an [`UnreliableBackend`]: which calls fail, and with what. Clones share the
/// switch, so a test keeps one and the database's backends (each reopen makes a new one)
/// follow it.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Switch>,
}

#[derive(Debug, Default)]
struct Switch {
    write: AtomicU8,
    set_len: AtomicU8,
    sync: AtomicU8,
    read: AtomicU8,
    injected: AtomicU64,
}

impl Faults {
    /// A switch with nothing failing.
    pub fn new() -> Faults {
        Faults::default()
    }

    /// Writes fail with `fault` until [`Faults::heal`].
    pub fn fail_writes(&self, fault: Fault) {
        self.inner.write.store(fault.code(), Ordering::SeqCst);
    }

    /// Resizing the file fails with `fault` until [`Faults::heal`].
    pub fn fail_set_len(&self, fault: Fault) {
        self.inner.set_len.store(fault.code(), Ordering::SeqCst);
    }

    /// fsyncs fail with `fault` until [`Faults::heal`].
    pub fn fail_syncs(&self, fault: Fault) {
        self.inner.sync.store(fault.code(), Ordering::SeqCst);
    }

    /// Reads fail with `fault` until [`Faults::heal`].
    pub fn fail_reads(&self, fault: Fault) {
        self.inner.read.store(fault.code(), Ordering::SeqCst);
    }

    /// Writes, resizes and fsyncs fail with `fault`, as on a disk that filled up (reads go on).
    pub fn fail_all_writes(&self, fault: Fault) {
        self.fail_writes(fault);
        self.fail_set_len(fault);
        self.fail_syncs(fault);
    }

    /// Nothing fails any more.
    pub fn heal(&self) {
        for switch in [
            &self.inner.write,
            &self.inner.set_len,
            &self.inner.sync,
            &self.inner.read,
        ] {
            switch.store(0, Ordering::SeqCst);
        }
    }

    /// How many calls failed because of this switch so far (a test can check its fault was
    /// actually hit).
    pub fn injected(&self) -> u64 {
        self.inner.injected.load(Ordering::SeqCst)
    }

    fn check(&self, switch: &AtomicU8) -> io::Result<()> {
        match Fault::from_code(switch.load(Ordering::SeqCst)) {
            Some(fault) => {
                self.inner.injected.fetch_add(1, Ordering::SeqCst);
                Err(fault.error())
            }
            None => Ok(()),
        }
    }
}

/// A [`StorageBackend`] that fails the calls its [`Faults`] switch says, and passes the rest
/// to `inner`. For tests only.
#[derive(Debug)]
pub struct UnreliableBackend<B> {
    inner: B,
    faults: Faults,
}

impl<B: StorageBackend> UnreliableBackend<B> {
    pub fn new(inner: B, faults: Faults) -> UnreliableBackend<B> {
        UnreliableBackend { inner, faults }
    }
}

impl<B: StorageBackend> StorageBackend for UnreliableBackend<B> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.faults.check(&self.faults.inner.read)?;
        self.inner.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check(&self.faults.inner.set_len)?;
        self.inner.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.faults.check(&self.faults.inner.sync)?;
        self.inner.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.check(&self.faults.inner.write)?;
        self.inner.write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;

    #[test]
    fn fails_only_what_it_is_told_until_healed() {
        let faults = Faults::new();
        let backend = UnreliableBackend::new(InMemoryBackend::new(), faults.clone());
        backend.set_len(16).expect("set_len");
        faults.fail_writes(Fault::NoSpace);
        let error = backend.write(0, b"x").expect_err("failing writes");
        assert_eq!(error.raw_os_error(), Some(Errno::ENOSPC as i32));
        backend.read(0, 1).expect("reads still work");
        backend.sync_data(false).expect("syncs still work");
        faults.fail_syncs(Fault::Io);
        let error = backend.sync_data(false).expect_err("failing syncs");
        assert_eq!(error.raw_os_error(), Some(Errno::EIO as i32));
        assert_eq!(faults.injected(), 2);
        faults.heal();
        backend.write(0, b"x").expect("healed");
        assert_eq!(backend.read(0, 1).expect("read"), b"x");
    }
}
