//! API keys: `sk-easel-<id>-<secret>`.
//!
//! The `sk-easel-` prefix is permanent (changing it would revoke every key in use) and lets secret
//! scanners recognise leaked keys. `<id>` is public and indexes the row; only the SHA-256 of
//! `<secret>` is stored, compared in constant time. The plaintext is shown once, at creation.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

use super::db::Db;
use super::now;

/// NEVER CHANGE: existing keys carry it.
const PREFIX: &str = "sk-easel-";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Models this key may use; `None` = every model.
    pub models: Option<Vec<String>>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl KeyRecord {
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.iter().any(|id| id == model))
    }
}

/// A key just created; `plaintext` exists only here.
pub struct NewKey {
    pub record: KeyRecord,
    pub plaintext: String,
}

/// The parts of a presented key, if it has the right shape.
fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let ok = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (ok(id, ID_LEN) && ok(secret, SECRET_LEN)).then_some((id, secret))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(|b| char::from(b).to_ascii_lowercase()).collect()
}

#[derive(Debug, Clone)]
pub struct ApiKeys {
    db: Db,
}

impl ApiKeys {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn create(&self, name: &str, models: Option<Vec<String>>) -> anyhow::Result<NewKey> {
        anyhow::ensure!(!name.trim().is_empty(), "a key needs a name");
        let (id, secret) = (random(ID_LEN), random(SECRET_LEN));
        let record = KeyRecord { id: id.clone(), name: name.to_string(), models, created_at: now(), revoked_at: None };
        let models_json = record.models.as_ref().map(serde_json::to_string).transpose()?;
        sqlx::query("INSERT INTO api_keys (id, name, secret_hash, models, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&record.id)
            .bind(&record.name)
            .bind(hash(&secret))
            .bind(models_json)
            .bind(record.created_at)
            .execute(&self.db)
            .await?;
        Ok(NewKey { record, plaintext: format!("{PREFIX}{id}-{secret}") })
    }

    pub async fn list(&self) -> anyhow::Result<Vec<KeyRecord>> {
        let rows = sqlx::query("SELECT id, name, models, created_at, revoked_at FROM api_keys ORDER BY created_at, id")
            .fetch_all(&self.db)
            .await?;
        rows.iter().map(record).collect()
    }

    /// Revokes by id (or by the whole key); false when no active key matched.
    pub async fn revoke(&self, id_or_key: &str) -> anyhow::Result<bool> {
        let id = parse(id_or_key).map_or(id_or_key, |(id, _)| id);
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now())
            .bind(id)
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The active key a client presented, or `None`.
    pub async fn verify(&self, presented: &str) -> anyhow::Result<Option<KeyRecord>> {
        let Some((id, secret)) = parse(presented) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT id, name, models, created_at, revoked_at, secret_hash FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("secret_hash")?;
        if bool::from(stored.as_bytes().ct_eq(hash(secret).as_bytes())) { Ok(Some(record(&row)?)) } else { Ok(None) }
    }

    pub async fn any_active(&self) -> anyhow::Result<bool> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL").fetch_one(&self.db).await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }
}

fn record(row: &sqlx::any::AnyRow) -> anyhow::Result<KeyRecord> {
    let models: Option<String> = row.try_get("models")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        models: models.map(|m| serde_json::from_str(&m)).transpose()?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape() {
        let key = format!("{PREFIX}{}-{}", random(ID_LEN), random(SECRET_LEN));
        assert!(parse(&key).is_some());
        assert!(parse("sk-easel-short-secret").is_none());
        assert!(parse("Bearer x").is_none());
    }
}
