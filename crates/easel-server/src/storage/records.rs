//! Usage and image facts. A request's usage row and its image rows are written in one
//! transaction, so the ledger never shows images without the usage that paid for them.

use easel_core::usage::Usage;
use sqlx::Row;

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

pub async fn record(db: &Db, usage: &UsageRecord, images: &[ImageRecord]) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO usage (id, key_id, model, backend, operation, outcome, status, image_count, size, quality, \
         output_format, input_text_tokens, input_image_tokens, output_tokens, total_tokens, latency_ms, end_user, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )
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
    .bind(usage.created_at)
    .execute(&mut *tx)
    .await?;
    for image in images {
        sqlx::query(
            "INSERT INTO images (id, usage_id, key_id, model, width, height, format, bytes, blob_key, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
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
        .bind(image.expires_at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
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

pub async fn mark_deleted(db: &Db, id: &str, now: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE images SET deleted_at = $1 WHERE id = $2").bind(now).bind(id).execute(db).await?;
    Ok(())
}
