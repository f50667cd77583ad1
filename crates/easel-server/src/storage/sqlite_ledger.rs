//! The ledger's own connections to a SQLite database, through rusqlite: the writer's, which
//! commits on the thread that runs it, and the one that checkpoints the WAL beside it.
//!
//! Why not sqlx, as every other query: sqlx runs each SQLite connection on a thread of its own
//! and sends it every statement, so each commit was a round trip to that thread and back (a
//! wake-up there and two back) — at concurrency 1, three of a relayed request's five thread
//! switches and half of its CPU time (`bench/relay/RESULTS.md`). The commit itself is a few tens
//! of microseconds (a few pages appended to the WAL; with `synchronous = NORMAL` no fsync), less
//! than those wake-ups cost, so the writer commits in place, synchronously, as a web server
//! writes its access log.
//!
//! In place only while the write lock is free: when another connection holds it (a key being
//! created, a task changing state, a checkpoint), SQLite's busy handler would put the thread to
//! sleep, and with it every request that thread serves. So the commit in place does not wait
//! (busy timeout 0); when the lock is taken, the group is written again on a blocking thread,
//! which waits as long as any write does ([`db::BUSY_TIMEOUT_MS`]).
//!
//! Checkpoints run on a blocking thread too (they wait for readers and fsync files); the writer
//! decides when ([`super::writer`]'s `Wal`).
//!
//! rusqlite and sqlx link the same SQLite (libsqlite3-sys, bundled, one version in the lock
//! file), so their connections share its locks and WAL index like any two connections.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params_from_iter};

use super::db;
use super::records::{self, ImageRecord, UsageRecord, Value};

/// Opens a ledger connection to the database file at `path` (which `db::connect` created and
/// migrated), with the pragmas every SQLite connection of the server has, plus the ledger's:
/// SQLite's own checkpoint at commit is only a backstop at 16384 pages (64 MiB), well above the
/// writer's bound (`writer::WAL_LIMIT_BYTES`), so it runs only when the writer's checkpoints fail;
/// and when the log restarts, a file grown past 64 MiB meanwhile is cut back to that (within it,
/// the writer restarts the log in place, and an idle one truncates the file).
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| anyhow::anyhow!("cannot open the SQLite database {} for the ledger: {e}", path.display()))?;
    conn.execute_batch(&db::sqlite_pragmas(
        "PRAGMA wal_autocheckpoint = 16384; PRAGMA journal_size_limit = 67108864;",
    ))?;
    Ok(conn)
}

/// The ledger writer's connection: writes each group in one transaction, in place when the write
/// lock is free (see the module's docs).
pub struct SqliteWriter {
    path: PathBuf,
    /// `None` after an error that may have left it inside a transaction (it is closed, which
    /// rolls that back) or while a blocking thread has it; opened again when needed.
    conn: Option<Connection>,
}

impl SqliteWriter {
    pub fn new(path: PathBuf) -> Self {
        Self { path, conn: None }
    }

    /// Writes `group` in one transaction: all of it or none.
    pub async fn record(&mut self, group: &[(&UsageRecord, &[ImageRecord])]) -> anyhow::Result<()> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(open(&self.path)?),
        };
        match write(conn, group, Duration::ZERO) {
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {}
            result => return self.after(result),
        }
        // Another connection holds the write lock: wait for it on a blocking thread.
        let owned = group.iter().map(|(usage, images)| ((*usage).clone(), images.to_vec())).collect::<Vec<_>>();
        let mut conn = self.conn.take().expect("opened above");
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let group = owned.iter().map(|(usage, images)| (usage, images.as_slice())).collect::<Vec<_>>();
            let result = write(&mut conn, &group, Duration::from_millis(db::BUSY_TIMEOUT_MS));
            (conn, result)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the ledger's commit thread failed: {e}"))?;
        self.conn = Some(conn);
        self.after(result)
    }

    /// Closes the connection after an error that left it inside a transaction.
    fn after(&mut self, result: rusqlite::Result<()>) -> anyhow::Result<()> {
        if result.is_err() && self.conn.as_ref().is_some_and(|conn| !conn.is_autocommit()) {
            self.conn = None;
        }
        Ok(result?)
    }
}

/// One transaction: usage rows, then their image rows (which point at them). The statements stay
/// prepared on the connection. A failure rolls the transaction back (when the transaction is
/// dropped).
fn write(conn: &mut Connection, group: &[(&UsageRecord, &[ImageRecord])], wait: Duration) -> rusqlite::Result<()> {
    static USAGE: LazyLock<String> = LazyLock::new(|| records::usage_sql(1, false));
    static USAGE_ONCE: LazyLock<String> = LazyLock::new(|| records::usage_sql(1, true));
    static IMAGES: LazyLock<String> = LazyLock::new(|| records::images_sql(1));
    conn.busy_timeout(wait)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (usage, images) in group {
        let sql = if usage.once { &USAGE_ONCE } else { &USAGE };
        tx.prepare_cached(sql)?.execute(params_from_iter(records::usage_values(usage, images.len())))?;
    }
    for (usage, images) in group {
        for image in *images {
            tx.prepare_cached(&IMAGES)?.execute(params_from_iter(records::image_values(usage, image)))?;
        }
    }
    tx.commit()
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Text(Some(text)) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Value::Text(None) | Value::BigInt(None) => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(int) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*int))),
            Value::BigInt(Some(int)) => ToSqlOutput::Borrowed(ValueRef::Integer(*int)),
        })
    }
}

/// How a SQLite WAL checkpoint copies the log back into the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Copies what it can without waiting for anyone; runs beside the writer and readers.
    Passive,
    /// Waits for the writer and for readers of old snapshots and copies everything, so that the
    /// next commit writes the WAL from its start again (over the same file, which keeps its size).
    Restart,
    /// Waits for the writer and for readers of old snapshots, copies everything and truncates
    /// the WAL file to zero bytes.
    Truncate,
}

/// What a checkpoint left: the frames (pages) in the WAL, how many of them are copied back, and
/// whether it was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalState {
    pub busy: bool,
    pub frames: i64,
    pub checkpointed: i64,
}

/// How long a RESTART or TRUNCATE checkpoint waits for readers of old snapshots. It holds the
/// write lock meanwhile, so every commit waits with it; past this it gives up (to be tried again
/// later) rather than hold the ledger for a long report query's [`db::BUSY_TIMEOUT_MS`].
const CHECKPOINT_WAIT_MS: u64 = 20;

/// Runs a WAL checkpoint (`PRAGMA wal_checkpoint`). RESTART and TRUNCATE wait at most
/// [`CHECKPOINT_WAIT_MS`] for readers and the writer (then `busy` says so), or, `patient`, as long
/// as a write would ([`db::BUSY_TIMEOUT_MS`]). Blocks: run it where a thread may wait.
pub fn checkpoint(conn: &Connection, mode: Checkpoint, patient: bool) -> anyhow::Result<WalState> {
    let sql = match mode {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Restart => "PRAGMA wal_checkpoint(RESTART)",
        Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    let waits = if mode != Checkpoint::Passive && !patient { CHECKPOINT_WAIT_MS } else { db::BUSY_TIMEOUT_MS };
    conn.busy_timeout(Duration::from_millis(waits))?;
    let state = conn.query_row(sql, [], |row| {
        Ok(WalState { busy: row.get::<_, i64>(0)? != 0, frames: row.get(1)?, checkpointed: row.get(2)? })
    });
    state.map_err(|e| anyhow::anyhow!("{sql} failed: {e}"))
}

/// The bytes one page takes in the WAL: the page and its 24-byte frame header.
pub fn frame_bytes(conn: &Connection) -> anyhow::Result<u64> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    Ok(page as u64 + 24)
}

/// The frames in a SQLite WAL, read from its index (the `-shm` file SQLite maps into memory):
/// `mxFrame`, the u32 at byte 16 of the index's header, in the machine's byte order
/// (<https://sqlite.org/walformat.html>; every SQLite sharing a database agrees on it). It goes
/// down when the log restarts; a file restarted in place keeps its size, so the size cannot say
/// it.
pub fn wal_index_frames(index: &mut (impl std::io::Read + std::io::Seek)) -> std::io::Result<u32> {
    let mut frames = [0; 4];
    index.seek(std::io::SeekFrom::Start(16))?;
    index.read_exact(&mut frames)?;
    Ok(u32::from_ne_bytes(frames))
}
