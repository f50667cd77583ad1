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
//! In place only when it cannot wait or sync:
//! - while the write lock is free: when another connection holds it (a key being created, a task
//!   changing state, a checkpoint), SQLite's busy handler would put the thread to sleep, and with
//!   it every request that thread serves. So the commit in place does not wait (busy timeout 0);
//!   when the lock is taken, the group is written on a blocking thread, which waits as long as any
//!   write does ([`db::BUSY_TIMEOUT_MS`]);
//! - while the commit only appends to the log: the first commit after a checkpoint copied the
//!   whole log back starts the log again and fsyncs its new header, so when the WAL index says so
//!   ([`IndexHeader::restarts_at_next_commit`]) that commit goes to a blocking thread too (a few
//!   times a second under load, once after an idle spell).
//!
//! What can still hold the thread: SQLite's backstop checkpoint at 64 MiB of log (only when the
//! writer's own checkpoints fail), and SQLite's short sleeps while it retries a lock it lost a race
//! for (microseconds, growing only if another process stalls holding a WAL read lock).
//!
//! Checkpoints run on a blocking thread too (they wait for readers and fsync files); the writer
//! decides when ([`super::writer`]'s `Wal`).
//!
//! rusqlite and sqlx link the same SQLite: one libsqlite3-sys in the lock file, built from its
//! bundled source through sqlx's `sqlite` feature (Cargo allows one crate linking `sqlite3`), so
//! their connections share its locks and WAL index like any two connections.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params_from_iter};

use super::db;
use super::records::{self, ImageRecord, UsageRecord, Value};

/// How long the log may grow before SQLite's own checkpoint at commit starts, and the size a file
/// grown past it is cut back to when the log restarts: a backstop well above the writer's bound
/// (`writer::WAL_LIMIT_BYTES`), reached only when the writer's checkpoints fail.
const BACKSTOP_BYTES: u64 = 64 << 20;

/// Opens a ledger connection to the database file at `path` (which `db::connect` created and
/// migrated), with the pragmas every SQLite connection of the server has, plus the ledger's:
/// SQLite's own checkpoint at commit only as a backstop at [`BACKSTOP_BYTES`] of log (its
/// setting counts pages, so it is derived from the database's page size), and a file grown past
/// that cut back to it when the log restarts (within it, the writer restarts the log in place,
/// and an idle one truncates the file).
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| anyhow::anyhow!("cannot open the SQLite database {} for the ledger: {e}", path.display()))?;
    conn.execute_batch(&db::sqlite_pragmas(&format!("PRAGMA journal_size_limit = {BACKSTOP_BYTES};")))?;
    let pages = BACKSTOP_BYTES / page_size(&conn)?.max(512);
    conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = {pages};"))?;
    Ok(conn)
}

/// The ledger writer's connection: writes each group in one transaction, in place when the write
/// lock is free and the commit only appends to the log (see the module's docs).
pub struct SqliteWriter {
    path: PathBuf,
    /// `None` after an error that left it inside a transaction (it is closed, which rolls that
    /// back), while a blocking thread has it, or after that thread failed; opened again there.
    conn: Option<Connection>,
    index: WalIndex,
}

impl SqliteWriter {
    /// The writer on `conn`, an [`open`]ed connection to the database file at `path`.
    pub fn new(path: PathBuf, conn: Connection) -> Self {
        Self { index: WalIndex::new(&path), path, conn: Some(conn) }
    }

    /// Writes `group` in one transaction: all of it or none.
    pub async fn record(&mut self, group: &[(&UsageRecord, &[ImageRecord])]) -> anyhow::Result<()> {
        if let Some(conn) = &mut self.conn
            && !self.index.read().is_some_and(|header| header.restarts_at_next_commit())
        {
            match write(conn, group, Duration::ZERO).map_err(Into::into) {
                Err(e) if is_busy(&e) => {}
                result => return self.after(result),
            }
        }
        // On a blocking thread: another connection holds the write lock, or this commit starts
        // the log again (SQLite writes and fsyncs the log's new header then), or the connection
        // must be opened again.
        let owned = group.iter().map(|(usage, images)| ((*usage).clone(), images.to_vec())).collect::<Vec<_>>();
        let reopens = self.conn.is_none();
        let (conn, result) = on_blocking_thread(self.conn.take(), self.path.clone(), move |conn| {
            let group = owned.iter().map(|(usage, images)| (usage, images.as_slice())).collect::<Vec<_>>();
            Ok(write(conn, &group, Duration::from_millis(db::BUSY_TIMEOUT_MS))?)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the ledger's commit thread failed: {e}"))?;
        if reopens {
            // With every connection closed meanwhile, SQLite made a new index file.
            self.index.reopen();
        }
        self.conn = conn;
        self.after(result)
    }

    /// Closes the connection after an error that left it inside a transaction.
    fn after(&mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        if result.is_err() && self.conn.as_ref().is_some_and(|conn| !conn.is_autocommit()) {
            self.conn = None;
        }
        result
    }
}

/// Whether `error` is SQLite's "database is locked": another connection held the write lock for
/// longer than the busy timeout. It says nothing about the rows.
pub fn is_busy(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<rusqlite::Error>().and_then(rusqlite::Error::sqlite_error_code)
            == Some(ErrorCode::DatabaseBusy)
    })
}

/// Runs `work` on a blocking thread with `conn`, or with a connection to `file` opened there when
/// there is none, and gives the connection back (`None` when it could not be opened) with the
/// result: the writer's waits and the checkpoints both run this way, off the requests' threads.
pub fn on_blocking_thread<T: Send + 'static>(
    conn: Option<Connection>,
    file: PathBuf,
    work: impl FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
) -> tokio::task::JoinHandle<(Option<Connection>, anyhow::Result<T>)> {
    tokio::task::spawn_blocking(move || {
        let mut conn = match conn.map_or_else(|| open(&file), Ok) {
            Ok(conn) => conn,
            Err(e) => return (None, Err(e)),
        };
        let result = work(&mut conn);
        (Some(conn), result)
    })
}

/// The path of the file SQLite keeps beside the database `file`: `-wal` (the log) or `-shm` (its
/// index).
pub fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut path = file.as_os_str().to_owned();
    path.push(suffix);
    path.into()
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
    Ok(page_size(conn)? + 24)
}

/// The database's page size in bytes.
fn page_size(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0)).map(|page| page as u64)
}

/// A SQLite WAL's index (the `-shm` file beside the database, which SQLite maps into memory),
/// read for two numbers of its header (<https://sqlite.org/walformat.html>; u32s in the machine's
/// byte order, which every SQLite sharing a database agrees on): the frames in the log
/// (`mxFrame`, byte 16) and how many of them a checkpoint has copied back (`nBackfill`, byte 96).
/// Read without SQLite's locks, so a value may be a moment old; both uses only need it roughly.
#[derive(Debug)]
pub struct WalIndex {
    path: PathBuf,
    file: Option<std::fs::File>,
}

/// What [`WalIndex::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    /// The frames (pages) in the log. It goes down when the log restarts; a file restarted in
    /// place keeps its size, so the size cannot say it.
    pub frames: u32,
    /// The frames a checkpoint has copied back into the database.
    pub backfilled: u32,
}

impl IndexHeader {
    /// Whether the next commit starts the log again (or starts it, in an empty file): it does
    /// when a checkpoint has copied every frame back, unless a reader still uses the log. SQLite
    /// then writes the log's new header and, at `synchronous = NORMAL`, fsyncs it, which is
    /// kept off the requests' threads.
    pub fn restarts_at_next_commit(self) -> bool {
        self.frames == 0 || self.backfilled >= self.frames
    }
}

impl WalIndex {
    /// The index of the database file at `database`.
    pub fn new(database: &Path) -> Self {
        let path = beside(database, "-shm");
        Self { file: std::fs::File::open(&path).ok(), path }
    }

    /// Opens the file again (SQLite makes a new one when the last connection to the database
    /// closes and another opens).
    pub fn reopen(&mut self) {
        self.file = std::fs::File::open(&self.path).ok();
    }

    /// The header's numbers; `None` when the index cannot be read. One `pread` on Unix (it runs
    /// twice a commit).
    pub fn read(&mut self) -> Option<IndexHeader> {
        let file = self.file.as_ref()?;
        let mut header = [0; 100];
        #[cfg(unix)]
        std::os::unix::fs::FileExt::read_exact_at(file, &mut header, 0).ok()?;
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek};
            let mut file = file;
            file.seek(std::io::SeekFrom::Start(0)).and_then(|_| file.read_exact(&mut header)).ok()?;
        }
        let at = |offset: usize| u32::from_ne_bytes(header[offset..offset + 4].try_into().expect("4 bytes"));
        Some(IndexHeader { frames: at(16), backfilled: at(96) })
    }
}
