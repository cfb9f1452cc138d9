//! `Opener`: opens the database file through the directory handle, every time the same way
//! (first open and every reopen after an I/O error), and proves it with a write.

use std::sync::Arc;

use cap_std::fs::{Dir, OpenOptions};
use redb::backends::FileBackend;
use redb::{Database, ReadableTable, TableDefinition};

use crate::{Faults, RedbError, Schema, UnreliableBackend};

/// Opens of this database so far; its write proves a (re)opened database takes writes.
const OPENS: TableDefinition<&str, u64> = TableDefinition::new("durable.opens");

pub(crate) struct Opener {
    dir: Dir,
    file: Arc<str>,
    cache_bytes: Option<usize>,
    faults: Option<Faults>,
}

impl Opener {
    pub(crate) fn new(
        dir: Dir,
        file: Arc<str>,
        cache_bytes: Option<usize>,
        faults: Option<Faults>,
    ) -> Opener {
        Opener {
            dir,
            file,
            cache_bytes,
            faults,
        }
    }

    /// Opens (creating if missing) the file relative to the directory handle, creates the
    /// schema's tables and commits one durable write.
    pub(crate) fn open<S: Schema>(&self, schema: &S) -> Result<Database, RedbError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
        let file = self.dir.open_with(&*self.file, &options)?.into_std();
        let backend = FileBackend::new(file)?;
        let mut builder = redb::Builder::new();
        if let Some(bytes) = self.cache_bytes {
            builder.set_cache_size(bytes);
        }
        let db = match &self.faults {
            Some(faults) => {
                builder.create_with_backend(UnreliableBackend::new(backend, faults.clone()))?
            }
            None => builder.create_with_backend(backend)?,
        };
        prove(&db, schema)?;
        Ok(db)
    }
}

fn prove<S: Schema>(db: &Database, schema: &S) -> Result<(), RedbError> {
    let txn = db.begin_write()?;
    schema.create_tables(&txn)?;
    {
        let mut opens = txn.open_table(OPENS)?;
        let count = opens.get("count")?.map_or(0, |guard| guard.value());
        opens.insert("count", count + 1)?;
    }
    txn.commit()?;
    Ok(())
}
