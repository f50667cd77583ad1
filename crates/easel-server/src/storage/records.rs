//! Usage and image facts. A request's usage row and its image rows are written in one
//! transaction, so the ledger never shows images without the usage that paid for them; the
//! ledger writer ([`super::writer`]) puts several requests in one transaction
//! (`record_group`), since a commit costs far more than a row.

use easel_core::usage::Usage;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Connection, Executor, Row};

use super::db::{self, Db, Engine};

#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub id: uuid::Uuid,
    pub key_id: Option<String>,
    pub model: String,
    pub backend: String,
    pub operation: String,
    /// `ok` or the error code.
    pub outcome: String,
    pub status: u16,
    pub size: Option<String>,
    pub quality: Option<String>,
    pub output_format: Option<String>,
    pub usage: Usage,
    pub latency_ms: i64,
    pub end_user: Option<String>,
    pub created_at: i64,
    /// Written at most once: when a row with this id is already in the ledger (a task delivered
    /// again after its worker died), no second one is added. Otherwise a repeated id is an error.
    pub once: bool,
}

#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub id: uuid::Uuid,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub bytes: usize,
    pub blob_key: Option<String>,
    pub expires_at: Option<i64>,
}

/// Writes one request's usage row and image rows in one transaction.
pub async fn record(db: &Db, usage: &UsageRecord, images: &[ImageRecord]) -> anyhow::Result<()> {
    HeldConnection::new(db.clone()).record(&[(usage, images)]).await
}

/// A connection of `db` kept from one write to the next (the ledger writer keeps one): sqlx
/// tests a connection that goes back to its pool with a ping, a round trip to the connection's
/// thread (SQLite) or server (PostgreSQL), which each group would otherwise pay on top of its
/// one commit.
pub struct HeldConnection {
    db: Db,
    engine: Engine,
    conn: Option<PoolConnection<Any>>,
}

impl HeldConnection {
    pub fn new(db: Db) -> Self {
        Self { engine: db::engine(&db), db, conn: None }
    }

    /// Writes `group` in one transaction (`record_group`). After an error the connection is
    /// closed, not pooled (it may still be inside the transaction); the next call takes another.
    pub async fn record(&mut self, group: &[(&UsageRecord, &[ImageRecord])]) -> anyhow::Result<()> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.db.acquire().await?),
        };
        let result = record_group(conn, self.engine, group).await;
        if result.is_err()
            && let Some(mut conn) = self.conn.take()
        {
            conn.close_on_drop();
        }
        result
    }
}

/// Writes several requests' rows in one transaction: all of them or none. Rows go in multi-row
/// INSERTs (see [`STATEMENT_SIZES`]), so a group of any size costs a few statements and one
/// commit.
///
/// On SQLite the whole transaction (`BEGIN`, the INSERTs, `COMMIT`) is one multi-statement
/// query: sqlx runs every SQLite statement on the connection's own thread, so each statement
/// is a round trip there and back (two thread wake-ups), and one query makes the group one
/// round trip instead of four. The placeholders are numbered across the statements (`$19` is
/// the second row's first value), which sqlx's SQLite driver binds by number. PostgreSQL's
/// protocol takes one statement per prepared query, so there the statements go one by one in
/// an sqlx transaction (one network round trip each).
///
/// Not cancellation-safe on SQLite: dropped mid-query, the connection may be left inside the
/// transaction (the ledger writer, its one caller in the server, runs it in a spawned task that
/// is never cancelled: the server closes the writer before any runtime it may run on stops).
async fn record_group(
    conn: &mut AnyConnection,
    engine: Engine,
    group: &[(&UsageRecord, &[ImageRecord])],
) -> anyhow::Result<()> {
    let (once, each): (Vec<_>, Vec<_>) = group.iter().copied().partition(|(usage, _)| usage.once);
    let images = group.iter().flat_map(|(usage, images)| images.iter().map(move |image| (*usage, image)));
    let images = images.collect::<Vec<_>>();
    // Usage rows first: they are what the images' `usage_id` points at.
    let statements = chunks(&each)
        .map(|rows| Insert::Usage { rows, once: false })
        .chain(chunks(&once).map(|rows| Insert::Usage { rows, once: true }))
        .chain(chunks(&images).map(Insert::Images))
        .collect::<Vec<_>>();
    if engine == Engine::Sqlite {
        let mut sql = String::from("BEGIN; ");
        let mut first = 1;
        for statement in &statements {
            sql.push_str(&statement.sql(first));
            sql.push_str("; ");
            first += statement.parameters();
        }
        sql.push_str("COMMIT");
        // Placeholder numbers depend on the group's shape: keep prepared only the shapes of
        // one usage statement and one image statement (a lone request, small groups), which
        // fit sqlx's cache of 100 statements per connection; larger groups are prepared each time.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(statements.len() <= 2);
        for statement in &statements {
            query = statement.bind(query);
        }
        if let Err(e) = query.execute(&mut *conn).await {
            // The statement that failed undid only itself: end the transaction, so the
            // connection goes on in autocommit ("no transaction is active" is not a problem).
            let _ = conn.execute("ROLLBACK").await;
            return Err(e.into());
        }
    } else {
        let mut tx = conn.begin().await?;
        for statement in &statements {
            statement.bind(sqlx::query(sqlx::AssertSqlSafe(statement.sql(1)))).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// One INSERT of a group.
enum Insert<'a> {
    /// Usage rows; `once`: a row whose id is already there is skipped ([`UsageRecord::once`]).
    Usage { rows: &'a [(&'a UsageRecord, &'a [ImageRecord])], once: bool },
    /// Image rows, each with the usage row it belongs to.
    Images(&'a [(&'a UsageRecord, &'a ImageRecord)]),
}

impl<'a> Insert<'a> {
    fn parameters(&self) -> usize {
        match self {
            Self::Usage { rows, .. } => rows.len() * USAGE_COLUMNS,
            Self::Images(rows) => rows.len() * IMAGES_COLUMNS,
        }
    }

    /// The statement, its placeholders numbered from `$first`.
    fn sql(&self, first: usize) -> String {
        match self {
            Self::Usage { rows, once } => {
                insert_sql(USAGE_INSERT, USAGE_COLUMNS, rows.len(), first) + if *once { USAGE_ONCE } else { "" }
            }
            Self::Images(rows) => insert_sql(IMAGES_INSERT, IMAGES_COLUMNS, rows.len(), first),
        }
    }

    /// Binds this statement's values, in placeholder order, after those already in `query`.
    fn bind<'q>(&self, mut query: Query<'q>) -> Query<'q>
    where
        'a: 'q,
    {
        match self {
            Self::Usage { rows, .. } => {
                for (usage, images) in *rows {
                    query = query
                        .bind(usage.id.to_string())
                        .bind(&usage.key_id)
                        .bind(&usage.model)
                        .bind(&usage.backend)
                        .bind(&usage.operation)
                        .bind(&usage.outcome)
                        .bind(i32::from(usage.status))
                        .bind(images.len() as i32)
                        .bind(&usage.size)
                        .bind(&usage.quality)
                        .bind(&usage.output_format)
                        .bind(usage.usage.input_text_tokens as i64)
                        .bind(usage.usage.input_image_tokens as i64)
                        .bind(usage.usage.output_tokens as i64)
                        .bind(usage.usage.total_tokens() as i64)
                        .bind(usage.latency_ms)
                        .bind(&usage.end_user)
                        .bind(usage.created_at);
                }
            }
            Self::Images(rows) => {
                for (usage, image) in *rows {
                    query = query
                        .bind(image.id.to_string())
                        .bind(usage.id.to_string())
                        .bind(&usage.key_id)
                        .bind(&usage.model)
                        .bind(image.width as i32)
                        .bind(image.height as i32)
                        .bind(&image.format)
                        .bind(image.bytes as i64)
                        .bind(&image.blob_key)
                        .bind(usage.created_at)
                        .bind(image.expires_at);
                }
            }
        }
        query
    }
}

const USAGE_INSERT: &str = "INSERT INTO usage (id, key_id, model, backend, operation, outcome, status, image_count, \
     size, quality, output_format, input_text_tokens, input_image_tokens, output_tokens, total_tokens, latency_ms, \
     end_user, created_at) VALUES ";
const USAGE_COLUMNS: usize = 18;
/// Ends the INSERT of [`UsageRecord::once`] rows.
const USAGE_ONCE: &str = " ON CONFLICT (id) DO NOTHING";
const IMAGES_INSERT: &str = "INSERT INTO images (id, usage_id, key_id, model, width, height, format, bytes, \
     blob_key, created_at, expires_at) VALUES ";
const IMAGES_COLUMNS: usize = 11;

/// The row counts of the INSERT statements: a group of `n` rows is cut into these sizes
/// (largest first), so at most 7 statement shapes per table exist (on SQLite a group is one
/// query of several statements; see [`record_group`] for which stay prepared). 64 rows of 18
/// columns is far below the bind-parameter limits of SQLite (32,766) and PostgreSQL (65,535).
const STATEMENT_SIZES: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

fn chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let size = *STATEMENT_SIZES.iter().find(|&&size| size <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// `prefix` followed by `rows` tuples of placeholders, numbered from `$first`.
fn insert_sql(prefix: &str, columns: usize, rows: usize, first: usize) -> String {
    let mut sql = String::with_capacity(prefix.len() + rows * columns * 6);
    sql.push_str(prefix);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(first + row * columns + column).to_string());
        }
        sql.push(')');
    }
    sql
}

/// A hosted image's blob key and expiry, if it exists and was not swept.
pub async fn hosted_image(db: &Db, id: &str) -> anyhow::Result<Option<(String, Option<i64>)>> {
    let row = sqlx::query(
        "SELECT blob_key, expires_at FROM images WHERE id = $1 AND blob_key IS NOT NULL AND deleted_at IS NULL",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(|r| Ok((r.try_get("blob_key")?, r.try_get("expires_at")?))).transpose()
}

/// Up to `limit` hosted images whose links expired before `now`.
pub async fn expired(db: &Db, now: i64, limit: i64) -> anyhow::Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT id, blob_key FROM images WHERE blob_key IS NOT NULL AND deleted_at IS NULL AND expires_at < $1 \
         ORDER BY expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("blob_key")?))).collect()
}

/// Of the hosted images `ids`, those with a live row (not swept): their ids and blob keys.
pub async fn live_hosted(db: &Db, ids: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders = (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT id, blob_key FROM images WHERE id IN ({placeholders}) AND blob_key IS NOT NULL AND deleted_at IS NULL"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        query = query.bind(id);
    }
    let rows = query.fetch_all(db).await?;
    rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("blob_key")?))).collect()
}

pub async fn mark_deleted(db: &Db, id: &str, now: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE images SET deleted_at = $1 WHERE id = $2").bind(now).bind(id).execute(db).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_cut_into_few_statement_shapes() {
        let sizes = |n: usize| chunks(&vec![(); n]).map(<[()]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(13), [8, 4, 1]);
        assert_eq!(sizes(64), [64]);
        assert_eq!(sizes(200), [64, 64, 64, 8]);
    }

    #[test]
    fn placeholders_number_every_column_of_every_row() {
        assert_eq!(insert_sql("INSERT INTO t (a, b) VALUES ", 2, 1, 1), "INSERT INTO t (a, b) VALUES ($1, $2)");
        assert_eq!(insert_sql("V ", 3, 2, 1), "V ($1, $2, $3), ($4, $5, $6)");
        assert_eq!(insert_sql("V ", 2, 2, 7), "V ($7, $8), ($9, $10)");
    }
}
