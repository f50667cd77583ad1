//! Usage and image facts. A request's usage row and its image rows are written in one
//! transaction, so the ledger never shows images without the usage that paid for them; the
//! ledger writer ([`super::writer`]) puts several requests in one transaction, since a commit
//! costs far more than a row. The INSERTs' columns and values are here once, for both drivers
//! that write them: sqlx (PostgreSQL's writer, and [`record`]) and rusqlite (SQLite's writer,
//! [`super::sqlite_ledger`]).

use std::borrow::Cow;

use easel_core::usage::Usage;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Connection, Row};

use super::db::Db;

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

/// Writes one request's usage row and image rows in one transaction, through `db`'s pool (the
/// server writes them through the ledger writer, [`super::writer`]).
pub async fn record(db: &Db, usage: &UsageRecord, images: &[ImageRecord]) -> anyhow::Result<()> {
    HeldConnection::new(db.clone()).record(&[(usage, images)]).await
}

/// A connection of `db` kept from one write to the next (the ledger writer keeps one on
/// PostgreSQL): sqlx tests a connection that goes back to its pool with a ping, a round trip to
/// the server, which each group would otherwise pay on top of its one commit.
pub struct HeldConnection {
    db: Db,
    conn: Option<PoolConnection<Any>>,
}

impl HeldConnection {
    pub fn new(db: Db) -> Self {
        Self { db, conn: None }
    }

    /// Writes `group` in one transaction (`record_group`). After an error the connection is
    /// closed, not pooled (it may still be inside the transaction); the next call takes another.
    pub async fn record(&mut self, group: &[(&UsageRecord, &[ImageRecord])]) -> anyhow::Result<()> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.db.acquire().await?),
        };
        let result = record_group(conn, group).await;
        if result.is_err()
            && let Some(mut conn) = self.conn.take()
        {
            conn.close_on_drop();
        }
        result
    }
}

/// Writes several requests' rows in one transaction: all of them or none. Rows go in multi-row
/// INSERTs (see [`STATEMENT_SIZES`]), so a group of any size costs a few statements (one network
/// round trip each on PostgreSQL) and one commit.
async fn record_group(conn: &mut AnyConnection, group: &[(&UsageRecord, &[ImageRecord])]) -> anyhow::Result<()> {
    let (once, each): (Vec<_>, Vec<_>) = group.iter().copied().partition(|(usage, _)| usage.once);
    let images = group.iter().flat_map(|(usage, images)| images.iter().map(move |image| (*usage, image)));
    let images = images.collect::<Vec<_>>();
    let mut tx = conn.begin().await?;
    // Usage rows first: they are what the images' `usage_id` points at.
    for (rows, once) in chunks(&each).map(|rows| (rows, false)).chain(chunks(&once).map(|rows| (rows, true))) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(usage_sql(rows.len(), once)));
        for (usage, images) in rows {
            query = usage_values(usage, images.len()).into_iter().fold(query, bind);
        }
        query.execute(&mut *tx).await?;
    }
    for rows in chunks(&images) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(images_sql(rows.len())));
        for (usage, image) in rows {
            query = image_values(usage, image).into_iter().fold(query, bind);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind<'q>(query: Query<'q>, value: Value<'q>) -> Query<'q> {
    match value {
        Value::Text(Some(Cow::Borrowed(text))) => query.bind(Some(text)),
        Value::Text(text) => query.bind(text.map(Cow::into_owned)),
        Value::Int(int) => query.bind(int),
        Value::BigInt(int) => query.bind(int),
    }
}

/// One column's value in the ledger's INSERTs, as either driver binds it (sqlx here, rusqlite in
/// [`super::sqlite_ledger`]): `INTEGER` columns take `Int`, `BIGINT` ones `BigInt` (PostgreSQL
/// tells them apart).
#[derive(Debug)]
pub(super) enum Value<'a> {
    Text(Option<Cow<'a, str>>),
    Int(i32),
    BigInt(Option<i64>),
}

fn text(value: &Option<String>) -> Value<'_> {
    Value::Text(value.as_deref().map(Cow::Borrowed))
}

fn borrowed(value: &str) -> Value<'_> {
    Value::Text(Some(Cow::Borrowed(value)))
}

fn owned(value: String) -> Value<'static> {
    Value::Text(Some(Cow::Owned(value)))
}

/// A usage row's values, in [`USAGE_INSERT`]'s column order.
pub(super) fn usage_values(usage: &UsageRecord, image_count: usize) -> [Value<'_>; USAGE_COLUMNS] {
    let tokens = |n: u64| Value::BigInt(Some(n as i64));
    [
        owned(usage.id.to_string()),
        text(&usage.key_id),
        borrowed(&usage.model),
        borrowed(&usage.backend),
        borrowed(&usage.operation),
        borrowed(&usage.outcome),
        Value::Int(i32::from(usage.status)),
        Value::Int(image_count as i32),
        text(&usage.size),
        text(&usage.quality),
        text(&usage.output_format),
        tokens(usage.usage.input_text_tokens),
        tokens(usage.usage.input_image_tokens),
        tokens(usage.usage.output_tokens),
        tokens(usage.usage.total_tokens()),
        Value::BigInt(Some(usage.latency_ms)),
        text(&usage.end_user),
        Value::BigInt(Some(usage.created_at)),
    ]
}

/// An image row's values (with the usage row it belongs to), in [`IMAGES_INSERT`]'s column order.
pub(super) fn image_values<'a>(usage: &'a UsageRecord, image: &'a ImageRecord) -> [Value<'a>; IMAGES_COLUMNS] {
    [
        owned(image.id.to_string()),
        owned(usage.id.to_string()),
        text(&usage.key_id),
        borrowed(&usage.model),
        Value::Int(image.width as i32),
        Value::Int(image.height as i32),
        borrowed(&image.format),
        Value::BigInt(Some(image.bytes as i64)),
        text(&image.blob_key),
        Value::BigInt(Some(usage.created_at)),
        Value::BigInt(image.expires_at),
    ]
}

/// The INSERT of `rows` usage rows; `once`: a row whose id is already there is skipped
/// ([`UsageRecord::once`]).
pub(super) fn usage_sql(rows: usize, once: bool) -> String {
    insert_sql(USAGE_INSERT, USAGE_COLUMNS, rows) + if once { USAGE_ONCE } else { "" }
}

/// The INSERT of `rows` image rows.
pub(super) fn images_sql(rows: usize) -> String {
    insert_sql(IMAGES_INSERT, IMAGES_COLUMNS, rows)
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
/// (largest first), so at most 7 statement shapes per table exist, which sqlx keeps prepared.
/// 64 rows of 18 columns is far below the bind-parameter limits of SQLite (32,766) and
/// PostgreSQL (65,535).
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

/// `prefix` followed by `rows` tuples of placeholders, numbered from `$1`.
fn insert_sql(prefix: &str, columns: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(prefix.len() + rows * columns * 6);
    sql.push_str(prefix);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(1 + row * columns + column).to_string());
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
        assert_eq!(insert_sql("INSERT INTO t (a, b) VALUES ", 2, 1), "INSERT INTO t (a, b) VALUES ($1, $2)");
        assert_eq!(insert_sql("V ", 3, 2), "V ($1, $2, $3), ($4, $5, $6)");
    }
}
