//! API keys: `sk-easel-<id>-<secret>`.
//!
//! The `sk-easel-` prefix is permanent (changing it would revoke every key in use) and lets secret
//! scanners recognise leaked keys. `<id>` is public and indexes the row; only the SHA-256 of
//! `<secret>` is stored, compared in constant time. The plaintext is shown once, at creation.
//!
//! Every request presents a key, so the rows checked are kept in memory for [`RECHECK_AFTER`]
//! (`Checked`): a query is a round trip to the database (two thread wake-ups and a pool ping on
//! SQLite), which on a relayed request cost more than all of Easel's own work. A key revoked or
//! changed through this node's admin API stops or changes at once; through another node or the
//! CLI, within [`RECHECK_AFTER`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

use serde::{Deserialize, Serialize};

use super::db::Db;
use super::limits::Limits;
use super::now;

/// The columns [`record`] reads, as a literal so queries stay static strings.
macro_rules! columns {
    () => {
        "id, name, models, admin, rpm, images_per_min, daily_images, monthly_images, monthly_tokens, expires_at, \
         created_at, revoked_at"
    };
}

/// NEVER CHANGE: existing keys carry it.
const PREFIX: &str = "sk-easel-";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Models this key may use; `None` = every model.
    pub models: Option<Vec<String>>,
    /// Whether the key reaches the admin API.
    pub admin: bool,
    #[serde(flatten)]
    pub limits: Limits,
    /// Unix seconds after which the key no longer works.
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl KeyRecord {
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.iter().any(|id| id == model))
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// What a key is created with, or what an update changes (`None` leaves a field as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub name: Option<String>,
    /// Model ids; an empty list means every model.
    pub models: Option<Vec<String>>,
    pub admin: Option<bool>,
    /// Each limit: a number, or 0 to lift it.
    pub rpm: Option<u64>,
    pub images_per_min: Option<u64>,
    pub daily_images: Option<u64>,
    pub monthly_images: Option<u64>,
    pub monthly_tokens: Option<u64>,
    /// Unix seconds; 0 for no expiry.
    pub expires_at: Option<i64>,
}

impl KeySettings {
    /// A new key's settings: a name, every model, no limits.
    pub fn named(name: &str) -> Self {
        Self { name: Some(name.to_string()), ..Self::default() }
    }

    pub fn models(mut self, models: &[&str]) -> Self {
        self.models = Some(models.iter().map(|m| m.to_string()).collect());
        self
    }

    /// `current` with these changes applied; errors name the field.
    fn apply(self, mut key: KeyRecord) -> anyhow::Result<KeyRecord> {
        if let Some(name) = self.name {
            anyhow::ensure!(!name.trim().is_empty(), "name: a key needs a name");
            key.name = name.trim().to_string();
        }
        if let Some(models) = self.models {
            let models: Vec<String> =
                models.into_iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
            key.models = (!models.is_empty()).then_some(models);
        }
        if let Some(admin) = self.admin {
            key.admin = admin;
        }
        if let Some(at) = self.expires_at {
            anyhow::ensure!(at >= 0, "expires_at: expected Unix seconds (0 for no expiry), got {at}");
            key.expires_at = (at > 0).then_some(at);
        }
        let l = key.limits;
        key.limits = Limits {
            rpm: self.rpm.or(l.rpm),
            images_per_min: self.images_per_min.or(l.images_per_min),
            daily_images: self.daily_images.or(l.daily_images),
            monthly_images: self.monthly_images.or(l.monthly_images),
            monthly_tokens: self.monthly_tokens.or(l.monthly_tokens),
        }
        .normalized();
        Ok(key)
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

/// How long a key row read from the database (and the answer "no key was ever made") is
/// believed before it is read again.
pub const RECHECK_AFTER: Duration = Duration::from_millis(250);

/// At most this many key rows are kept; past it, rows older than [`RECHECK_AFTER`] are dropped.
/// Only rows that exist are kept, so a flood of made-up ids costs queries, never memory.
const CHECKED_ROWS: usize = 4096;

#[derive(Debug, Clone)]
pub struct ApiKeys {
    db: Db,
    checked: Arc<Checked>,
}

/// What this node read from the database lately.
#[derive(Debug, Default)]
struct Checked {
    /// Active keys' rows by id, with the stored secret hash and when they were read.
    rows: Mutex<HashMap<String, (Instant, KeyRecord, String)>>,
    /// Some key has existed. Never false again once true: a server that has had a key never
    /// runs open again.
    ever: AtomicBool,
    /// When the database last said no key was ever made.
    none_since: Mutex<Option<Instant>>,
    /// Counts [`Checked::forget`]s: a row read before one is not kept, since it may be the row
    /// just changed.
    generation: AtomicU64,
}

impl Checked {
    fn row(&self, id: &str) -> Option<(KeyRecord, String)> {
        let rows = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, record, hash) = rows.get(id)?;
        (at.elapsed() < RECHECK_AFTER).then(|| (record.clone(), hash.clone()))
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps a row read when [`Checked::generation`] was `generation`.
    fn keep(&self, record: &KeyRecord, hash: &str, generation: u64) {
        let mut rows = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.generation() != generation {
            return;
        }
        if rows.len() >= CHECKED_ROWS {
            rows.retain(|_, (at, _, _)| at.elapsed() < RECHECK_AFTER);
        }
        if rows.len() < CHECKED_ROWS {
            rows.insert(record.id.clone(), (Instant::now(), record.clone(), hash.to_string()));
        }
    }

    /// Drops `id`'s row after a change to it, and keeps out any row read before it (its read may
    /// have seen the old row).
    fn forget(&self, id: &str) {
        let mut rows = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        rows.remove(id);
    }
}

impl ApiKeys {
    pub fn new(db: Db) -> Self {
        Self { db, checked: Arc::default() }
    }

    /// A new key with `settings` (a name is required).
    pub async fn create(&self, settings: KeySettings) -> anyhow::Result<NewKey> {
        anyhow::ensure!(settings.name.as_deref().is_some_and(|n| !n.trim().is_empty()), "name: a key needs a name");
        let (id, secret) = (random(ID_LEN), random(SECRET_LEN));
        let blank = KeyRecord {
            id: id.clone(),
            name: String::new(),
            models: None,
            admin: false,
            limits: Limits::default(),
            expires_at: None,
            created_at: now(),
            revoked_at: None,
        };
        let record = settings.apply(blank)?;
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_hash, models, created_at, admin, rpm, images_per_min, daily_images, \
             monthly_images, monthly_tokens, expires_at) VALUES ($1, $2, $3, $4, $5, 0, NULL, NULL, NULL, NULL, NULL, NULL)",
        )
        .bind(&record.id)
        .bind(&record.name)
        .bind(hash(&secret))
        .bind(Option::<String>::None)
        .bind(record.created_at)
        .execute(&self.db)
        .await?;
        self.checked.ever.store(true, Ordering::Relaxed);
        self.write(&record).await?;
        Ok(NewKey { record, plaintext: format!("{PREFIX}{id}-{secret}") })
    }

    /// Changes an active key; `None` when there is none with that id.
    pub async fn update(&self, id: &str, settings: KeySettings) -> anyhow::Result<Option<KeyRecord>> {
        let Some(current) = self.get(id).await?.filter(|k| k.revoked_at.is_none()) else { return Ok(None) };
        let record = settings.apply(current)?;
        self.write(&record).await?;
        Ok(Some(record))
    }

    /// Stores every setting of `record`.
    async fn write(&self, record: &KeyRecord) -> anyhow::Result<()> {
        let limit = |v: Option<u64>| v.map(|v| v as i64);
        let l = &record.limits;
        sqlx::query(
            "UPDATE api_keys SET name = $1, models = $2, admin = $3, rpm = $4, images_per_min = $5, daily_images = $6, \
             monthly_images = $7, monthly_tokens = $8, expires_at = $9 WHERE id = $10",
        )
        .bind(&record.name)
        .bind(record.models.as_ref().map(serde_json::to_string).transpose()?)
        .bind(i32::from(record.admin))
        .bind(limit(l.rpm))
        .bind(limit(l.images_per_min))
        .bind(limit(l.daily_images))
        .bind(limit(l.monthly_images))
        .bind(limit(l.monthly_tokens))
        .bind(record.expires_at)
        .bind(&record.id)
        .execute(&self.db)
        .await?;
        self.checked.forget(&record.id);
        Ok(())
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<Option<KeyRecord>> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?;
        row.as_ref().map(record).transpose()
    }

    pub async fn list(&self) -> anyhow::Result<Vec<KeyRecord>> {
        let rows = sqlx::query(concat!("SELECT ", columns!(), " FROM api_keys ORDER BY created_at, id"))
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
        self.checked.forget(id);
        Ok(done.rows_affected() > 0)
    }

    /// The active key a client presented, or `None`.
    pub async fn verify(&self, presented: &str) -> anyhow::Result<Option<KeyRecord>> {
        let Some((id, secret)) = parse(presented) else {
            return Ok(None);
        };
        let (key, stored) = match self.checked.row(id) {
            Some(checked) => checked,
            None => {
                let generation = self.checked.generation();
                let row = sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    ", secret_hash FROM api_keys WHERE id = $1 AND revoked_at IS NULL"
                ))
                .bind(id)
                .fetch_optional(&self.db)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let (key, stored) = (record(&row)?, row.try_get::<String, _>("secret_hash")?);
                self.checked.keep(&key, &stored, generation);
                (key, stored)
            }
        };
        Ok(bool::from(stored.as_bytes().ct_eq(hash(secret).as_bytes())).then_some(key))
    }

    /// Whether any key was ever made, revoked ones included: a server that has had a key never
    /// runs open again.
    pub async fn any_ever(&self) -> anyhow::Result<bool> {
        if self.checked.ever.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let none_since = *self.checked.none_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if none_since.is_some_and(|at| at.elapsed() < RECHECK_AFTER) {
            return Ok(false);
        }
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys").fetch_one(&self.db).await?;
        let ever = row.try_get::<i64, _>("n")? > 0;
        if ever {
            self.checked.ever.store(true, Ordering::Relaxed);
        } else {
            *self.checked.none_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        }
        Ok(ever)
    }
}

fn record(row: &sqlx::any::AnyRow) -> anyhow::Result<KeyRecord> {
    let models: Option<String> = row.try_get("models")?;
    let limit = |name: &str| -> anyhow::Result<Option<u64>> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(|v| v.max(0) as u64))
    };
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        models: models.map(|m| serde_json::from_str(&m)).transpose()?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        limits: Limits {
            rpm: limit("rpm")?,
            images_per_min: limit("images_per_min")?,
            daily_images: limit("daily_images")?,
            monthly_images: limit("monthly_images")?,
            monthly_tokens: limit("monthly_tokens")?,
        },
        expires_at: row.try_get("expires_at")?,
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
