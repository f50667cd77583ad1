//! The database pool and its migrations.
//!
//! Queries go through sqlx's `Any` driver with `$1` placeholders, which SQLite and PostgreSQL
//! both accept, so one code path serves both engines; only the migrations differ per engine.
//! Migrations are embedded in the binary (no compile-time macros, no files to ship).

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Executor, SqlSafeStr};

pub type Db = sqlx::Pool<sqlx::Any>;

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[(1, "init", include_str!("../../migrations/sqlite/0001_init.sql"))];

/// Opens (creating if needed) the database at `url` and applies pending migrations.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    anyhow::ensure!(
        url.starts_with("sqlite:"),
        "storage.database: only sqlite:// URLs are supported so far (got '{url}')"
    );
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| {
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
        })
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the database at {url}: {e}"))?;
    migrator().run(&pool).await.map_err(|e| anyhow::anyhow!("database migration failed: {e}"))?;
    Ok(pool)
}

fn migrator() -> Migrator {
    let migrations = SQLITE_MIGRATIONS
        .iter()
        .map(|(version, name, sql)| {
            Migration::new(*version, Cow::Borrowed(*name), MigrationType::Simple, sql.into_sql_str(), false)
        })
        .collect::<Vec<_>>();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

/// A cheap query, for `/readyz`.
pub async fn ping(db: &Db) -> anyhow::Result<()> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}
