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
use std::path::PathBuf;
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
    (4, "ledger_clustered", include_str!("../../migrations/sqlite/0004_ledger_clustered.sql")),
];
const POSTGRES_MIGRATIONS: Migrations = &[
    (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
    (2, "limits", include_str!("../../migrations/postgres/0002_limits.sql")),
    (3, "tasks", include_str!("../../migrations/postgres/0003_tasks.sql")),
    (4, "ledger_clustered", include_str!("../../migrations/postgres/0004_ledger_clustered.sql")),
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
/// ledger's own writes go through [`connect_writer`]'s connections, so a read never queues
/// behind a ledger commit for a pool connection, and on SQLite (WAL mode) never for a lock either.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let engine = Engine::of(url)?;
    // Each request holds a connection for one short query (the key check), so connections
    // beyond twice the cores only add idle threads (SQLite) or server processes (PostgreSQL,
    // whose `max_connections`, 100 by default, the other nodes share).
    let size = node_pool_size();
    let options = match engine {
        Engine::Sqlite => sqlite_options(size),
        // Idle connections are closed, and recycled periodically so failovers and server-side
        // limits do not leave stale ones.
        Engine::Postgres => postgres_options(size),
    };
    let pool = open(options, url).await?;
    migrator(engine).run(&pool).await.map_err(|e| anyhow::anyhow!("database migration failed: {e}"))?;
    Ok(pool)
}

/// Where the ledger writer ([`super::writer::Writer`]) commits.
#[derive(Debug)]
pub enum LedgerDb {
    /// The SQLite database's file and the writer's own connection to it
    /// ([`super::sqlite_ledger`]); the writer opens another that checkpoints the WAL beside it.
    Sqlite { file: PathBuf, conn: rusqlite::Connection },
    /// A pool of one PostgreSQL connection, since the writer commits one group at a time.
    Postgres(Db),
}

/// Opens where the ledger writer commits, for the database `db` ([`connect`]'s pool, which has
/// migrated it). An in-memory SQLite database cannot hold the ledger: the writer's connections
/// would each see another database.
pub async fn connect_writer(db: &Db) -> anyhow::Result<LedgerDb> {
    match engine(db) {
        Engine::Sqlite => {
            let file = file_path(db).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "storage.database: an in-memory SQLite database cannot hold the ledger; give it a file \
                     (sqlite://PATH?mode=rwc), or leave it unset for data_dir/easel.db"
                )
            })?;
            let file = PathBuf::from(file);
            let conn = super::sqlite_ledger::open(&file)?;
            Ok(LedgerDb::Sqlite { file, conn })
        }
        Engine::Postgres => {
            let url = db.connect_options().database_url.to_string();
            Ok(LedgerDb::Postgres(open(postgres_options(1).min_connections(1), &url).await?))
        }
    }
}

/// Twice the cores, between 4 and 32.
fn node_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as u32;
    (2 * cores).clamp(4, 32)
}

/// How long a SQLite statement waits for another connection's lock before failing with "database
/// is locked": a second writer (a key created while the ledger commits) queues this long.
pub(super) const BUSY_TIMEOUT_MS: u64 = 5000;

/// The page size of a SQLite database the server creates; one that exists keeps its own (SQLite
/// sets it only in an empty file, so the pragma changes nothing there).
///
/// Why 2 KiB and not SQLite's 4: every commit writes each page it changed to the WAL whole, and
/// a request alone in its commit (any request at low load) changes four or five pages for a few
/// hundred bytes of rows. At 4 KiB that was 17.7 KB written to the disk per relayed request at
/// concurrency 1, 10.9 KB at 2 KiB, 7.4 KB at 1 KiB; reports' scans over 600,000 usage rows took
/// 3–14 % longer at 2 KiB and 20–29 % at 1 KiB. On the benchmark's virtual disk that write
/// traffic, not the commit's own time, was half the p99 at concurrency 1: median 1.26 ms at
/// 4 KiB, 1.06 ms at 2 KiB over 14 runs each (`bench/relay/RESULTS.md`).
pub const SQLITE_PAGE_SIZE: u32 = 2048;

/// The pragmas every SQLite connection of the server starts with (sqlx's and the ledger's), and
/// `extra`. The page size applies only when the connection creates the database (the first
/// pragma that writes is `journal_mode`). WAL lets readers run beside the writer; with it,
/// synchronous = NORMAL cannot corrupt the database (a power cut may lose the last commits, not
/// the file) and saves an fsync per commit. The busy timeout queues the rare second writer (a key
/// created while the ledger commits) instead of failing it.
pub(super) fn sqlite_pragmas(extra: &str) -> String {
    format!(
        "PRAGMA page_size = {SQLITE_PAGE_SIZE}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA foreign_keys = ON; {extra}"
    )
}

fn sqlite_options(size: u32) -> AnyPoolOptions {
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
                conn.execute(sqlx::AssertSqlSafe(sqlite_pragmas(""))).await?;
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

/// The migrations of `engine`, embedded, as [`connect`] applies them (tests apply a prefix of
/// them to build an older database).
pub fn migrator(engine: Engine) -> Migrator {
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
