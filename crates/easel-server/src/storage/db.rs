//! The database pool and its migrations, for SQLite (embedded, the default) or PostgreSQL (shared
//! by several nodes).
//!
//! Queries go through sqlx's `Any` driver with `$1` placeholders, which SQLite and PostgreSQL
//! both accept, so one code path serves both engines; only the migrations differ per engine
//! (`migrations/sqlite/` and `migrations/postgres/`, kept in step by tests). Queries therefore
//! use only what `Any` carries on both: TEXT, INTEGER/BIGINT (read as `i64`) and NULL, with
//! no engine-specific SQL. Migrations are embedded in the binary (no compile-time macros, no
//! files to ship).

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Executor, Row, SqlSafeStr};

pub type Db = sqlx::Pool<sqlx::Any>;

/// `(version, name, sql)`; both lists must have the same versions and names.
type Migrations = &'static [(i64, &'static str, &'static str)];

const SQLITE_MIGRATIONS: Migrations = &[
    (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, "limits", include_str!("../../migrations/sqlite/0002_limits.sql")),
    (3, "tasks", include_str!("../../migrations/sqlite/0003_tasks.sql")),
];
const POSTGRES_MIGRATIONS: Migrations = &[
    (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
    (2, "limits", include_str!("../../migrations/postgres/0002_limits.sql")),
    (3, "tasks", include_str!("../../migrations/postgres/0003_tasks.sql")),
];

/// The database engines `connect` accepts, chosen by the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// The engine for a database URL: `sqlite:` or `postgres://` / `postgresql://`.
    pub fn of(url: &str) -> anyhow::Result<Self> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            _ => anyhow::bail!(
                "storage.database: unsupported URL '{}'; expected sqlite://PATH or postgres://USER@HOST/DATABASE",
                redact(url)
            ),
        }
    }

    fn migrations(self) -> Migrations {
        match self {
            Self::Sqlite => SQLITE_MIGRATIONS,
            Self::Postgres => POSTGRES_MIGRATIONS,
        }
    }
}

/// Opens the database at `url` (a SQLite file is created when the URL says `mode=rwc`; a
/// PostgreSQL database must exist) and applies pending migrations.
///
/// This is the pool for reads and for the rare writes outside the ledger (keys, the sweep); the
/// ledger's own writes go through [`connect_writer`]'s pool, so on SQLite a read never queues
/// behind a ledger commit for a pool connection, and in WAL mode never for a lock either.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let engine = Engine::of(url)?;
    // Each request holds a connection for one short query (the key check), so connections
    // beyond twice the cores only add idle threads (SQLite) or server processes (PostgreSQL,
    // whose `max_connections`, 100 by default, the other nodes share).
    let size = node_pool_size();
    let options = match engine {
        Engine::Sqlite => sqlite_options(size, ""),
        // Idle connections are closed, and recycled periodically so failovers and server-side
        // limits do not leave stale ones.
        Engine::Postgres => postgres_options(size),
    };
    let pool = open(options, url).await?;
    migrator(engine).run(&pool).await.map_err(|e| anyhow::anyhow!("database migration failed: {e}"))?;
    Ok(pool)
}

/// Opens the pool the ledger writer ([`super::writer::Writer`]) commits through, on a database
/// [`connect`] has already migrated.
///
/// SQLite: two connections, one committing and one copying the WAL back into the database in
/// the background (see [`checkpoint`]), so checkpoints never sit on the commit path; automatic
/// checkpoints at commit are only a backstop. PostgreSQL: one connection, since the writer
/// commits one group at a time.
pub async fn connect_writer(url: &str) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let options = match Engine::of(url)? {
        Engine::Sqlite => sqlite_options(
            2,
            // 16384 pages (64 MiB): well above the writer's own bound (writer::WAL_LIMIT_BYTES), so
            // this runs only when the writer's checkpoints fail; and when the log restarts, a file
            // grown past 64 MiB meanwhile is cut back to that (within it, the writer restarts the
            // log in place, and an idle one truncates the file).
            "PRAGMA wal_autocheckpoint = 16384; PRAGMA journal_size_limit = 67108864;",
        ),
        Engine::Postgres => postgres_options(1),
    };
    open(options.min_connections(1), url).await
}

/// Twice the cores, between 4 and 32.
fn node_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as u32;
    (2 * cores).clamp(4, 32)
}

/// How long a SQLite statement waits for another connection's lock before failing with "database
/// is locked": a second writer (a key created while the ledger commits) queues this long.
const BUSY_TIMEOUT_MS: u64 = 5000;

/// How long a RESTART or TRUNCATE checkpoint waits for readers of old snapshots. It holds the
/// write lock meanwhile, so every commit waits with it; past this it gives up (to be tried again
/// later) rather than hold the ledger for a long report query's [`BUSY_TIMEOUT_MS`].
const CHECKPOINT_WAIT_MS: u64 = 20;

fn sqlite_options(size: u32, extra_pragmas: &'static str) -> AnyPoolOptions {
    // Writers queue behind SQLite's one write lock (busy_timeout 5 s), so waits can be long. No
    // ping before each acquire: a SQLite connection is a file in this process that cannot go
    // stale, and the ping is a round trip to the connection's thread (two thread wake-ups) on
    // every request's key check; sqlx still pings when a connection is returned.
    AnyPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // WAL lets readers run beside the writer; with it, synchronous = NORMAL cannot
                // corrupt the database (a power cut may lose the last commits, not the file) and
                // saves an fsync per commit. The busy timeout queues the rare second writer (a key
                // created while the ledger commits) instead of failing it.
                let pragmas = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; \
                 PRAGMA foreign_keys = ON; {extra_pragmas}"
                );
                conn.execute(sqlx::AssertSqlSafe(pragmas)).await?;
                Ok(())
            })
        })
}

fn postgres_options(size: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(300))
        .max_lifetime(Duration::from_secs(1800))
        // A database that cannot be reached answers 503 `database_unavailable` in seconds, not
        // after a long wait; the pool keeps trying for later requests.
        .acquire_timeout(Duration::from_secs(3))
}

async fn open(options: AnyPoolOptions, url: &str) -> anyhow::Result<Db> {
    options.connect(url).await.map_err(|e| anyhow::anyhow!("cannot open the database at {}: {e}", redact(url)))
}

/// The engine a pool talks to.
pub fn engine(db: &Db) -> Engine {
    // `connect` accepted the URL, so only the two schemes it knows can be here.
    Engine::of(db.connect_options().database_url.as_str()).unwrap_or(Engine::Postgres)
}

/// The file of a SQLite database (`None` in memory); its WAL is this path with `-wal` added,
/// and the WAL's index `-shm`.
pub async fn file_path(db: &Db) -> anyhow::Result<Option<String>> {
    let row = sqlx::query("SELECT file FROM pragma_database_list WHERE name = 'main'").fetch_one(db).await?;
    let file: String = row.try_get(0)?;
    Ok((!file.is_empty()).then_some(file))
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

/// The bytes one page takes in a SQLite WAL: the page and its 24-byte frame header.
pub async fn wal_frame_bytes(db: &Db) -> anyhow::Result<u64> {
    let page: i64 = sqlx::query("PRAGMA page_size").fetch_one(db).await?.try_get(0)?;
    Ok(page as u64 + 24)
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

/// What a checkpoint left: the frames (pages) in the WAL, and whether it was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalState {
    pub busy: bool,
    pub frames: i64,
    pub checkpointed: i64,
}

/// Runs a WAL checkpoint on a SQLite database (`PRAGMA wal_checkpoint`). RESTART and TRUNCATE
/// wait at most [`CHECKPOINT_WAIT_MS`] for readers and the writer (then `busy` says so), or,
/// `patient`, as long as a write would ([`BUSY_TIMEOUT_MS`]).
///
/// Not cancellation-safe: dropped while it runs, the connection may go back to its pool with the
/// short wait (the ledger writer, its caller in the server, never drops it).
pub async fn checkpoint(db: &Db, mode: Checkpoint, patient: bool) -> anyhow::Result<WalState> {
    let sql = match mode {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Restart => "PRAGMA wal_checkpoint(RESTART)",
        Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    let mut conn = db.acquire().await?;
    let waits = mode != Checkpoint::Passive && !patient;
    if waits {
        conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}"))).await?;
    }
    let row = sqlx::query(sql).fetch_one(&mut *conn).await;
    if waits {
        let restored = conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"))).await;
        if let Err(e) = restored {
            // Not back in the pool with the short wait.
            conn.close_on_drop();
            return Err(e.into());
        }
    }
    let row = row.map_err(|e| anyhow::anyhow!("{sql} failed: {e}"))?;
    Ok(WalState { busy: row.try_get::<i64, _>(0)? != 0, frames: row.try_get(1)?, checkpointed: row.try_get(2)? })
}

fn migrator(engine: Engine) -> Migrator {
    let migrations = engine
        .migrations()
        .iter()
        .map(|(version, name, sql)| {
            Migration::new(*version, Cow::Borrowed(*name), MigrationType::Simple, sql.into_sql_str(), false)
        })
        .collect::<Vec<_>>();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

/// The URL without its password, for messages and logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// A cheap query, for `/readyz`.
pub async fn ping(db: &Db) -> anyhow::Result<()> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}

/// Whether `error` says the database cannot be reached (down, refusing connections, the pool
/// exhausted), as opposed to a query that failed: requests then get a 503 `database_unavailable`,
/// and the pool reconnects on its own when the database is back.
pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_by_scheme() {
        assert_eq!(Engine::of("sqlite://easel.db?mode=rwc").unwrap(), Engine::Sqlite);
        assert_eq!(Engine::of("sqlite::memory:").unwrap(), Engine::Sqlite);
        assert_eq!(Engine::of("postgres://easel@db/easel").unwrap(), Engine::Postgres);
        assert_eq!(Engine::of("postgresql://easel@db/easel").unwrap(), Engine::Postgres);
        let err = Engine::of("mysql://root:hunter2@db/easel").unwrap_err().to_string();
        assert!(err.contains("unsupported") && !err.contains("hunter2"), "{err}");
    }

    /// The tables and columns themselves are compared on live databases in
    /// `tests/api/storage.rs`; here, that both engines have the same migration steps.
    #[test]
    fn both_engines_have_the_same_migration_steps() {
        let steps = |m: Migrations| m.iter().map(|(v, name, _)| (*v, *name)).collect::<Vec<_>>();
        assert_eq!(steps(SQLITE_MIGRATIONS), steps(POSTGRES_MIGRATIONS));
    }
}
