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
use sqlx::{Executor, SqlSafeStr};

pub type Db = sqlx::Pool<sqlx::Any>;

/// `(version, name, sql)`; both lists must have the same versions and names.
type Migrations = &'static [(i64, &'static str, &'static str)];

const SQLITE_MIGRATIONS: Migrations = &[(1, "init", include_str!("../../migrations/sqlite/0001_init.sql"))];
const POSTGRES_MIGRATIONS: Migrations = &[(1, "init", include_str!("../../migrations/postgres/0001_init.sql"))];

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
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let engine = Engine::of(url)?;
    let options = match engine {
        Engine::Sqlite => AnyPoolOptions::new().max_connections(8).after_connect(|conn, _| {
            Box::pin(async move {
                // WAL lets readers run beside the writer; with it, synchronous = NORMAL cannot
                // corrupt the database (a power cut may lose the last commits, not the file) and
                // saves an fsync per request. The busy timeout queues writers instead of failing them.
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
                     PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        }),
        // Each request holds a connection only for a few short statements (one transaction per
        // request), so a small pool per node suffices and leaves the server's connection limit
        // (100 by default) to the other nodes; idle connections are closed, and recycled
        // periodically so failovers and server-side limits do not leave stale ones.
        Engine::Postgres => AnyPoolOptions::new()
            .max_connections(16)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(300))
            .max_lifetime(Duration::from_secs(1800)),
    };
    let pool = options
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the database at {}: {e}", redact(url)))?;
    migrator(engine).run(&pool).await.map_err(|e| anyhow::anyhow!("database migration failed: {e}"))?;
    Ok(pool)
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
