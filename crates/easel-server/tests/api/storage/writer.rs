//! The ledger writer (`storage::writer`) on each database engine: every record lands exactly
//! once however many arrive together, a bad record fails only its own caller, closing commits
//! what is queued, and (SQLite) the WAL file stays bounded under a steady stream of commits.

use std::collections::HashSet;
use std::pin::Pin;

use easel_server::storage::db::{self, Db};
use easel_server::storage::records::{ImageRecord, UsageRecord};
use easel_server::storage::sqlite_ledger::{self, Checkpoint};
use easel_server::storage::writer::Writer;
use futures::future::join_all;
use sqlx::Row;

use super::services::{self, TestDb};
use super::{image_record, usage_record};

/// `mod $name { sqlite, postgres }`, each calling `$name(test)` on a fresh, migrated database.
macro_rules! on_each_database {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(&super::services::sqlite().await).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(test) = super::services::postgres().await else { return };
                super::$name(&test).await;
            }
        }
    };
}

/// A writer on its own connections, as `easel serve` builds it.
async fn writer(test: &TestDb) -> Writer {
    Writer::spawn(db::connect_writer(&test.db).await.expect("the writer's connections open"))
}

/// The SQLite test database's file.
fn file(test: &TestDb) -> String {
    test.url.trim_start_matches("sqlite://").split('?').next().unwrap().to_string()
}

/// Hands every record to the writer before it can run (the test runtime has one thread, and
/// the writer task runs only when this one waits), so they are all in its queue together.
async fn queue_all<'a>(
    writer: &'a Writer,
    records: &'a [(UsageRecord, Vec<ImageRecord>)],
) -> Vec<Pin<Box<impl Future<Output = anyhow::Result<()>> + 'a>>> {
    // Unconstrained: tokio's per-task budget would otherwise make the later sends wait.
    let record = |(usage, images): &'a (UsageRecord, Vec<ImageRecord>)| {
        Box::pin(tokio::task::unconstrained(writer.record(usage, images)))
    };
    let mut queued = records.iter().map(record).collect::<Vec<_>>();
    for record in &mut queued {
        assert!(futures::poll!(record.as_mut()).is_pending(), "nothing commits before the writer runs");
    }
    queued
}

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(db).await.unwrap().try_get(0).unwrap()
}

on_each_database!(concurrent_records_land_exactly_once);
async fn concurrent_records_land_exactly_once(test: &TestDb) {
    let writer = writer(test).await;
    // More than a group (128), from many tasks at once, with 0 to 2 images each.
    let records = (0..600).map(|i| (usage_record(i % 3), (0..i % 3).map(|_| image_record(None)).collect::<Vec<_>>()));
    let records = records.collect::<Vec<_>>();
    let tasks = records.iter().cloned().map(|(usage, images)| {
        let writer = writer.clone();
        tokio::spawn(async move { writer.record(&usage, &images).await })
    });
    for result in join_all(tasks).await {
        result.unwrap().expect("every record commits");
    }

    let usage_ids = sqlx::query("SELECT id FROM usage").fetch_all(&test.db).await.unwrap();
    let usage_ids = usage_ids.iter().map(|r| r.try_get::<String, _>("id").unwrap()).collect::<Vec<_>>();
    let expected = records.iter().map(|(u, _)| u.id.to_string()).collect::<HashSet<_>>();
    assert_eq!(usage_ids.len(), records.len(), "one usage row per record");
    assert_eq!(usage_ids.into_iter().collect::<HashSet<_>>(), expected);
    let images = records.iter().map(|(_, images)| images.len() as i64).sum::<i64>();
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM images").await, images);
    // Each usage row counts its own images, and each image points at its own usage row.
    let mismatched = "SELECT COUNT(*) FROM usage u WHERE u.image_count <> \
                      (SELECT COUNT(*) FROM images i WHERE i.usage_id = u.id)";
    assert_eq!(count(&test.db, mismatched).await, 0);
}

on_each_database!(a_bad_record_fails_only_its_own_caller);
async fn a_bad_record_fails_only_its_own_caller(test: &TestDb) {
    let writer = writer(test).await;
    let taken = image_record(None);
    writer.record(&usage_record(1), std::slice::from_ref(&taken)).await.unwrap();

    // 40 records queued together, so the writer takes them as one group; two are bad: one
    // reuses an image id already in the ledger, one repeats another record's usage id.
    let mut records = (0..40).map(|_| (usage_record(1), vec![image_record(None)])).collect::<Vec<_>>();
    records[17].1[0] = taken.clone();
    records[30].0.id = records[29].0.id;
    let results = join_all(queue_all(&writer, &records).await).await;

    let failed = results.iter().enumerate().filter(|(_, r)| r.is_err()).map(|(i, _)| i).collect::<Vec<_>>();
    assert_eq!(failed, [17, 30], "only the bad records fail: {results:?}");
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM usage").await, 1 + 38);
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM images").await, 1 + 38);
    let orphan = sqlx::query("SELECT COUNT(*) FROM usage WHERE id = $1")
        .bind(records[17].0.id.to_string())
        .fetch_one(&test.db)
        .await
        .unwrap();
    assert_eq!(orphan.try_get::<i64, _>(0).unwrap(), 0, "the bad record's usage row is rolled back with it");
}

on_each_database!(a_record_written_once_is_not_doubled);
async fn a_record_written_once_is_not_doubled(test: &TestDb) {
    let writer = writer(test).await;
    let first = UsageRecord { once: true, ..usage_record(1) };
    writer.record(&first, &[image_record(None)]).await.unwrap();
    // Delivered again (a task run after its worker died), in a group with ordinary records:
    // its images are kept, its usage row is not written twice, and the others land.
    let mut records = (0..8).map(|_| (usage_record(1), vec![image_record(None)])).collect::<Vec<_>>();
    records[3] = (first.clone(), vec![image_record(None)]);
    let results = join_all(queue_all(&writer, &records).await).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM usage").await, 1 + 7);
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM images").await, 1 + 8);
}

on_each_database!(records_queued_at_close_are_committed);
async fn records_queued_at_close_are_committed(test: &TestDb) {
    let writer = writer(test).await;
    let records = (0..300).map(|_| (usage_record(1), vec![image_record(None)])).collect::<Vec<_>>();
    let queued = queue_all(&writer, &records).await;
    let (results, ()) = tokio::join!(join_all(queued), writer.close());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM usage").await, 300, "committed before close returned");

    let err = writer.record(&usage_record(0), &[]).await.expect_err("a closed writer takes no records");
    assert!(err.to_string().contains("stopped"), "{err}");
    writer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_stays_bounded() {
    let test = services::sqlite().await;
    // A small bound, so that it shows under a few thousand records.
    const LIMIT: u64 = 4 << 20;
    let writer = Writer::spawn_with_wal_limit(db::connect_writer(&test.db).await.unwrap(), LIMIT);
    let file = file(&test);
    let wal = file.clone() + "-wal";
    let size = move || std::fs::metadata(&wal).map_or(0, |m| m.len());
    // The log's length in frames; it goes down when the log restarts.
    let frames =
        move || sqlite_ledger::WalIndex::new(std::path::Path::new(&file)).read().map_or(0, |header| header.frames);
    let watch = {
        let size = size.clone();
        let done = tokio_util::sync::CancellationToken::new();
        let stop = done.clone();
        let task = tokio::spawn(async move {
            let (mut largest, mut restarts, mut last) = (0, 0, 0);
            while !stop.is_cancelled() {
                largest = largest.max(size());
                let now = frames();
                restarts += u32::from(now < last);
                last = now;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (largest, restarts)
        });
        (done, task)
    };
    // Four writers at a time: small groups, so many commits (each rewrites a few pages). With
    // SQLite's own checkpoints alone the log never restarts while commits keep coming, and the
    // WAL reached 34 MB here.
    let tasks = (0..4).map(|_| {
        let writer = writer.clone();
        tokio::spawn(async move {
            for _ in 0..3000 {
                let images = [image_record(Some(4_102_444_800)), image_record(None)];
                writer.record(&usage_record(2), &images).await.unwrap();
            }
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
    writer.close().await;
    watch.0.cancel();
    let (largest, restarts) = watch.1.await.unwrap();
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM usage").await, 12_000);
    // The log restarted again and again (4.6-4.7 MB at most on 2 idle cores; slower disks let it
    // grow further while the checkpoint before each restart runs, so the size is only checked
    // against the 64 MiB where SQLite's own backstop would start).
    assert!(restarts >= 3, "the log restarted {restarts} times");
    assert!(largest < 16 * LIMIT, "the WAL reached {largest} bytes");
    assert_eq!(size(), 0, "closing the writer empties the WAL");
}

/// A RESTART checkpoint holds the write lock while it waits for readers of old snapshots, so
/// every commit waits with it: it gives up after a moment (to be tried again later) instead of
/// waiting out a long report query.
#[tokio::test]
async fn a_checkpoint_gives_up_on_a_long_reader() {
    let test = services::sqlite().await;
    easel_server::storage::records::record(&test.db, &usage_record(1), &[image_record(None)]).await.unwrap();
    let conn = sqlite_ledger::open(std::path::Path::new(&file(&test))).unwrap();

    // A report still reading the snapshot with that commit in the WAL.
    let mut reader = test.db.acquire().await.unwrap();
    sqlx::Executor::execute(&mut *reader, "BEGIN").await.unwrap();
    let _ = sqlx::query("SELECT COUNT(*) FROM usage").fetch_one(&mut *reader).await.unwrap();

    let started = std::time::Instant::now();
    let state = sqlite_ledger::checkpoint(&conn, Checkpoint::Restart, false).unwrap();
    assert!(state.busy, "{state:?}");
    // Writes wait 5 s for a lock; the checkpoint gave up long before.
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());

    sqlx::Executor::execute(&mut *reader, "COMMIT").await.unwrap();
    let state = sqlite_ledger::checkpoint(&conn, Checkpoint::Restart, false).unwrap();
    assert!(!state.busy && state.frames == state.checkpointed, "{state:?}");
}

/// SQLite's writer commits in place only while the write lock is free: when another connection
/// holds it, the commit waits for it on another thread, and the thread that asked (here the test
/// runtime's only one) goes on serving everything else meanwhile.
#[tokio::test]
async fn a_commit_waits_for_another_writer_off_the_thread() {
    let test = services::sqlite().await;
    let writer = writer(&test).await;
    let mut other = test.db.acquire().await.unwrap();
    sqlx::Executor::execute(&mut *other, "BEGIN IMMEDIATE").await.unwrap();
    sqlx::Executor::execute(&mut *other, "UPDATE usage SET latency_ms = 0").await.unwrap();

    let record = (usage_record(1), vec![image_record(None)]);
    let waiting = tokio::spawn({
        let writer = writer.clone();
        let record = record.clone();
        async move { writer.record(&record.0, &record.1).await }
    });
    // This timer fires on time on the same thread while the commit waits for the lock (a commit
    // waiting in place would hold the thread for the 5 s busy timeout).
    let started = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "the thread was held {:?}", started.elapsed());
    assert!(!waiting.is_finished(), "the commit did not wait for the other writer");

    sqlx::Executor::execute(&mut *other, "COMMIT").await.unwrap();
    waiting.await.unwrap().expect("the commit lands once the lock is free");
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM usage").await, 1);
    assert_eq!(count(&test.db, "SELECT COUNT(*) FROM images").await, 1);
    writer.close().await;
}

/// The WAL index's numbers, read where SQLite keeps them: the frames in the log, and how many a
/// checkpoint copied back; the next commit starts the log again once they are all copied (its
/// fsync is why the writer then commits off the requests' threads).
#[tokio::test]
async fn the_wal_index_says_when_the_next_commit_restarts_the_log() {
    let test = services::sqlite().await;
    let path = std::path::PathBuf::from(file(&test));
    let conn = sqlite_ledger::open(&path).unwrap();
    sqlite_ledger::checkpoint(&conn, Checkpoint::Truncate, false).unwrap();
    let mut index = sqlite_ledger::WalIndex::new(&path);
    let empty = index.read().expect("the index is readable");
    assert_eq!(empty.frames, 0);
    assert!(empty.restarts_at_next_commit(), "{empty:?}");

    easel_server::storage::records::record(&test.db, &usage_record(1), &[image_record(None)]).await.unwrap();
    let appended = index.read().unwrap();
    assert!(appended.frames >= 2 && appended.backfilled == 0, "{appended:?}");
    assert!(!appended.restarts_at_next_commit());

    let state = sqlite_ledger::checkpoint(&conn, Checkpoint::Passive, false).unwrap();
    let copied = index.read().unwrap();
    assert_eq!((i64::from(copied.frames), i64::from(copied.backfilled)), (state.frames, state.checkpointed));
    assert!(copied.restarts_at_next_commit(), "{copied:?}");

    easel_server::storage::records::record(&test.db, &usage_record(1), &[image_record(None)]).await.unwrap();
    let restarted = index.read().unwrap();
    // Started again: nothing copied yet, and the one commit's frames alone (appended, the log
    // would hold both commits' frames: twice as many).
    assert!(restarted.backfilled == 0 && restarted.frames < 2 * copied.frames, "{copied:?} then {restarted:?}");
}

/// The ledger's connections would each see another in-memory database: refused at startup,
/// with what to do instead.
#[tokio::test]
async fn an_in_memory_sqlite_database_cannot_hold_the_ledger() {
    let db = db::connect("sqlite::memory:").await.expect("an in-memory database opens");
    let err = db::connect_writer(&db).await.expect_err("the ledger needs a file").to_string();
    assert!(err.contains("in-memory") && err.contains("sqlite://PATH"), "{err}");
}
