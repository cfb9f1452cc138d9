//! `durable::Db` on a real file in a temp dir, with faults injected through
//! `UnreliableBackend`: acknowledged writes survive, operations fail at once while the disk
//! is broken, the database heals by itself once the fault is gone, concurrent writers all get
//! answers, and every reopen goes through the directory handle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use durable::{Db, Error, Fault, Faults, Health, Options, RedbError, Schema};
use redb::{TableDefinition, WriteTransaction};

const RECORDS: TableDefinition<u64, &str> = TableDefinition::new("records");
const FILE: &str = "test.redb";
/// Longest a healthy disk may take to be noticed (generous: CI machines are busy).
const HEAL_LIMIT: Duration = Duration::from_secs(20);
/// Longest an operation on a broken database may take to fail ("at once", with slack for a
/// busy machine).
const FAST: Duration = Duration::from_millis(500);

/// key -> text, written in batches.
struct Records;

impl Schema for Records {
    type Op = (u64, String);
    type Output = ();

    fn create_tables(&self, txn: &WriteTransaction) -> Result<(), RedbError> {
        txn.open_table(RECORDS)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ops: &[(u64, String)],
        outputs: &mut Vec<()>,
    ) -> Result<(), RedbError> {
        let mut table = txn.open_table(RECORDS)?;
        for (key, text) in ops {
            table.insert(key, text.as_str())?;
            outputs.push(());
        }
        Ok(())
    }
}

fn options(faults: &Faults) -> Options {
    Options {
        reopen_backoff_min: Duration::from_millis(10),
        reopen_backoff_max: Duration::from_millis(200),
        faults: Some(faults.clone()),
        ..Options::new("test-writer", "test_batch_size")
    }
}

fn dir_handle(path: &std::path::Path) -> Dir {
    Dir::open_ambient_dir(path, ambient_authority()).expect("open the directory")
}

async fn open(path: &std::path::Path, options: Options) -> Result<Db<Records>, Error> {
    let dir = dir_handle(path);
    tokio::task::spawn_blocking(move || Db::open(dir, FILE, Records, options))
        .await
        .expect("open task")
}

async fn read(db: &Db<Records>, key: u64) -> Result<Option<String>, Error> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        db.read(|txn| {
            let table = txn.open_table(RECORDS)?;
            Ok(table.get(key)?.map(|text| text.value().to_string()))
        })
    })
    .await
    .expect("read task")
}

fn text(key: u64) -> String {
    format!("record {key} ✓")
}

async fn write_range(db: &Db<Records>, keys: std::ops::Range<u64>) {
    for key in keys {
        db.write((key, text(key))).await.expect("write");
    }
}

async fn assert_all_readable(db: &Db<Records>, keys: impl IntoIterator<Item = u64>) {
    for key in keys {
        let found = read(db, key).await.expect("read");
        assert_eq!(found, Some(text(key)), "record {key}");
    }
}

async fn healthy_within(db: &Db<Records>, limit: Duration) {
    let mut health = db.watch_health();
    let waited = tokio::time::timeout(limit, health.wait_for(Health::is_healthy)).await;
    assert!(waited.is_ok(), "still {} after {limit:?}", db.health());
}

/// Runs `operation` and checks it failed within [`FAST`].
async fn fails_fast<T: std::fmt::Debug>(
    operation: impl std::future::Future<Output = Result<T, Error>>,
) -> Error {
    let started = Instant::now();
    let outcome = tokio::time::timeout(FAST * 4, operation)
        .await
        .expect("an answer, not a hang");
    let elapsed = started.elapsed();
    let error = outcome.expect_err("the database is broken");
    assert!(elapsed < FAST, "took {elapsed:?} to fail: {error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_full_disk_and_the_database_heals_by_itself() {
    let temp = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let db = open(temp.path(), options(&faults)).await.expect("open");
    write_range(&db, 0..100).await;

    faults.fail_all_writes(Fault::NoSpace);
    let error = db.write((100, text(100))).await.expect_err("disk full");
    assert!(error.is_disk_full() && error.is_retryable(), "{error}");
    assert!(error.to_string().contains(FILE), "{error}");
    assert!(
        error.to_string().contains("No space left on device"),
        "{error}"
    );
    assert!(
        matches!(db.health(), Health::DiskFull { .. }),
        "{}",
        db.health()
    );
    let error = fails_fast(db.write((101, text(101)))).await;
    assert!(error.is_disk_full(), "{error}");
    let error = fails_fast(read(&db, 1)).await;
    assert!(error.is_disk_full(), "{error}");
    assert!(faults.injected() > 0);

    faults.heal();
    healthy_within(&db, HEAL_LIMIT).await;
    assert_all_readable(&db, 0..100).await;
    write_range(&db, 100..110).await;
    assert_all_readable(&db, 100..110).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_makes_the_database_unavailable_not_full_and_it_heals() {
    let temp = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let db = open(temp.path(), options(&faults)).await.expect("open");
    write_range(&db, 0..10).await;

    faults.fail_syncs(Fault::Io);
    let error = db.write((10, text(10))).await.expect_err("fsync fails");
    assert!(error.is_retryable() && !error.is_disk_full(), "{error}");
    assert!(error.to_string().contains("Input/output error"), "{error}");
    assert!(
        matches!(db.health(), Health::Unavailable { .. }),
        "{}",
        db.health()
    );

    faults.heal();
    healthy_within(&db, HEAL_LIMIT).await;
    assert_all_readable(&db, 0..10).await;
    write_range(&db, 10..20).await;
    assert_all_readable(&db, 10..20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_fail_at_once_while_the_disk_stays_broken() {
    let temp = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let db = open(temp.path(), options(&faults)).await.expect("open");
    write_range(&db, 0..10).await;
    faults.fail_all_writes(Fault::NoSpace);
    db.write((10, text(10))).await.expect_err("disk full");

    // Long enough for several reopen attempts, each of which fails again.
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_millis(600) {
        let error = fails_fast(db.write((11, text(11)))).await;
        assert!(error.is_disk_full() && error.is_retryable(), "{error}");
        let error = fails_fast(read(&db, 1)).await;
        assert!(error.is_retryable(), "{error}");
        rounds += 1;
    }
    assert!(rounds > 10, "only {rounds} rounds");
    assert!(!db.health().is_healthy());
    let before = faults.injected();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(faults.injected() > before, "no reopen attempt while broken");

    faults.heal();
    healthy_within(&db, HEAL_LIMIT).await;
    assert_all_readable(&db, 0..10).await;
    assert_eq!(read(&db, 11).await.expect("read"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_during_a_failure_all_get_answers() {
    const WRITERS: u64 = 32;
    /// Each writer goes on until this many of its writes are acknowledged: some before the
    /// failure, the rest only after the database healed.
    const ACKS_PER_WRITER: usize = 40;
    let temp = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let db = open(temp.path(), options(&faults)).await.expect("open");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let (db, acked, refused) = (db.clone(), acked.clone(), refused.clone());
            tokio::spawn(async move {
                let mut mine = 0;
                for key in (id << 32).. {
                    let answer = tokio::time::timeout(HEAL_LIMIT, db.write((key, text(key))))
                        .await
                        .expect("every write is answered");
                    match answer {
                        Ok(()) => {
                            acked.lock().expect("lock").push(key);
                            mine += 1;
                            if mine == ACKS_PER_WRITER {
                                return;
                            }
                        }
                        Err(error) => {
                            assert!(error.is_retryable(), "{error}");
                            refused.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            })
        })
        .collect();

    wait_until(|| acked.lock().expect("lock").len() >= 200).await;
    faults.fail_all_writes(Fault::NoSpace);
    wait_until(|| refused.load(Ordering::SeqCst) >= 200).await;
    let acked_before_healing = acked.lock().expect("lock").len();
    faults.heal();
    for writer in writers {
        tokio::time::timeout(HEAL_LIMIT, writer)
            .await
            .expect("writers finish once healed")
            .expect("writer task");
    }
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), WRITERS as usize * ACKS_PER_WRITER);
    assert!(
        acked_before_healing < acked.len(),
        "nothing written after healing"
    );
    assert_all_readable(&db, acked.iter().copied()).await;
    eprintln!(
        "{} writes acknowledged and found ({acked_before_healing} before healing), {} refused",
        acked.len(),
        refused.load(Ordering::SeqCst)
    );
}

/// Polls `condition` (at most [`HEAL_LIMIT`]).
async fn wait_until(condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < HEAL_LIMIT, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_error_breaks_the_database_and_it_heals_without_any_write() {
    let temp = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let options = Options {
        // No page cache: every read goes to the file.
        cache_bytes: Some(0),
        ..options(&faults)
    };
    let db = open(temp.path(), options).await.expect("open");
    write_range(&db, 0..10).await;

    faults.fail_reads(Fault::Io);
    let error = read(&db, 3).await.expect_err("reads fail");
    assert!(error.is_retryable() && !error.is_disk_full(), "{error}");
    assert!(!db.health().is_healthy());
    faults.heal();
    healthy_within(&db, HEAL_LIMIT).await;
    assert_all_readable(&db, 0..10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopens_through_the_directory_handle_after_the_path_is_gone() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let faults = Faults::new();
    let db = open(&data, options(&faults)).await.expect("open");
    write_range(&db, 0..10).await;

    // The path no longer leads to the directory; only the handle does.
    let moved = temp.path().join("moved");
    std::fs::rename(&data, &moved).expect("rename the data dir");
    faults.fail_writes(Fault::Io);
    db.write((10, text(10))).await.expect_err("writes fail");
    faults.heal();
    healthy_within(&db, HEAL_LIMIT).await;
    write_range(&db, 10..20).await;
    assert!(!data.exists());

    tokio::task::spawn_blocking(move || db.close())
        .await
        .expect("close task")
        .expect("close");
    let db = open(&moved, options(&faults))
        .await
        .expect("open the moved dir");
    assert_all_readable(&db, 0..20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_while_broken_returns_at_once_and_keeps_acknowledged_writes() {
    let temp = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let db = open(temp.path(), options(&faults)).await.expect("open");
    write_range(&db, 0..10).await;
    faults.fail_all_writes(Fault::NoSpace);
    db.write((10, text(10))).await.expect_err("disk full");

    let started = Instant::now();
    tokio::task::spawn_blocking(move || db.close())
        .await
        .expect("close task")
        .expect("close");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    faults.heal();
    let db = open(temp.path(), options(&faults)).await.expect("reopen");
    assert_all_readable(&db, 0..10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_file_fails_and_is_not_retryable() {
    let temp = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let _first = open(temp.path(), options(&faults)).await.expect("open");
    let error = open(temp.path(), options(&faults))
        .await
        .expect_err("the file is locked");
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains(FILE), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_open_is_reported_as_disk_full() {
    let temp = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    faults.fail_all_writes(Fault::NoSpace);
    let error = open(temp.path(), options(&faults))
        .await
        .expect_err("no space");
    assert!(error.is_disk_full(), "{error}");
}
