//! Per-key limits and quotas, kept in the database so they hold across every node sharing it.
//!
//! Each limit is a counter per window (a UTC minute, day or month): `used` is settled, `reserved`
//! is held by requests still running. Taking an amount is one conditional `UPDATE ... WHERE used +
//! reserved + amount <= limit`, atomic on SQLite (one writer) and PostgreSQL (row locks, the
//! condition re-checked after a concurrent commit), so two requests can never both take the last
//! unit, whichever nodes they hit. A request:
//!
//! 1. is counted against requests per minute as it arrives ([`Limiter::admit`]);
//! 2. once validated, reserves its images and its estimated tokens ([`Limiter::reserve`]), all
//!    windows in one transaction, recorded in a reservation row with an expiry;
//! 3. settles what was delivered ([`Limiter::settle`]: images returned, tokens counted) or, on
//!    failure, releases the reservation. Deleting the reservation row is the claim: only the one
//!    who deletes it moves `reserved` to `used`, so nothing is charged twice, and a reservation
//!    whose node died is released by any node's [`Limiter::sweep`] once it expires.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::db::Db;

/// A key's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Images per minute.
    pub images_per_min: Option<u64>,
    pub daily_images: Option<u64>,
    pub monthly_images: Option<u64>,
    /// Input plus output tokens per month.
    pub monthly_tokens: Option<u64>,
}

impl Limits {
    /// `0` means no limit, as on the command line (`--rpm 0` lifts the limit).
    pub fn normalized(self) -> Self {
        let f = |v: Option<u64>| v.filter(|&v| v > 0);
        Self {
            rpm: f(self.rpm),
            images_per_min: f(self.images_per_min),
            daily_images: f(self.daily_images),
            monthly_images: f(self.monthly_images),
            monthly_tokens: f(self.monthly_tokens),
        }
    }
}

/// What is limited: a quantity over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    RequestsPerMinute,
    ImagesPerMinute,
    ImagesPerDay,
    ImagesPerMonth,
    TokensPerMonth,
}

/// The quantity a counter counts, which names its `x-ratelimit-*-<dimension>` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Images,
    Tokens,
}

impl Dimension {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Images => "images",
            Self::Tokens => "tokens",
        }
    }
}

impl Counter {
    const IMAGES: [Self; 3] = [Self::ImagesPerMinute, Self::ImagesPerDay, Self::ImagesPerMonth];

    pub const fn name(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests/minute",
            Self::ImagesPerMinute => "images/minute",
            Self::ImagesPerDay => "images/day",
            Self::ImagesPerMonth => "images/month",
            Self::TokensPerMonth => "tokens/month",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::RequestsPerMinute, Self::ImagesPerMinute, Self::ImagesPerDay, Self::ImagesPerMonth, Self::TokensPerMonth]
            .into_iter()
            .find(|c| c.name() == name)
    }

    pub const fn dimension(self) -> Dimension {
        match self {
            Self::RequestsPerMinute => Dimension::Requests,
            Self::ImagesPerMinute | Self::ImagesPerDay | Self::ImagesPerMonth => Dimension::Images,
            Self::TokensPerMonth => Dimension::Tokens,
        }
    }

    /// Per-minute limits are rates; daily and monthly ones are quotas.
    pub const fn is_quota(self) -> bool {
        !matches!(self, Self::RequestsPerMinute | Self::ImagesPerMinute)
    }

    pub fn limit(self, limits: &Limits) -> Option<u64> {
        match self {
            Self::RequestsPerMinute => limits.rpm,
            Self::ImagesPerMinute => limits.images_per_min,
            Self::ImagesPerDay => limits.daily_images,
            Self::ImagesPerMonth => limits.monthly_images,
            Self::TokensPerMonth => limits.monthly_tokens,
        }
    }

    /// The start and end of the window holding `now`, in Unix seconds (UTC).
    pub fn window(self, now: i64) -> (i64, i64) {
        match self {
            Self::RequestsPerMinute | Self::ImagesPerMinute => {
                let start = now - now.rem_euclid(60);
                (start, start + 60)
            }
            Self::ImagesPerDay => {
                let start = now - now.rem_euclid(86_400);
                (start, start + 86_400)
            }
            Self::ImagesPerMonth | Self::TokensPerMonth => {
                let at = DateTime::from_timestamp(now, 0).unwrap_or_default();
                let first = |y, m| Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().map_or(now, |d| d.timestamp());
                let (y, m) = (at.year(), at.month());
                let next = if m == 12 { first(y + 1, 1) } else { first(y, m + 1) };
                (first(y, m), next)
            }
        }
    }
}

/// Where one counter stands after a request took from it: for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub counter: Counter,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// A request over a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub standing: Standing,
    /// What the request asked for.
    pub asked: u64,
}

impl Exceeded {
    pub fn message(&self) -> String {
        let s = &self.standing;
        let reset = DateTime::from_timestamp(Utc::now().timestamp() + s.reset_secs as i64, 0)
            .map_or_else(String::new, |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string());
        let kind = if s.counter.is_quota() { "quota" } else { "rate limit" };
        format!(
            "This API key's {kind} of {} {} is reached: {} left, {} asked for. It resets in {} (at {reset}).",
            s.limit,
            s.counter.name(),
            s.remaining,
            self.asked,
            format_duration(s.reset_secs),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{}", .0.message())]
    Exceeded(Exceeded),
    #[error(transparent)]
    Db(#[from] anyhow::Error),
}

impl From<sqlx::Error> for LimitError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e.into())
    }
}

/// Amounts held for a request in flight; settle or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    items: Vec<(Counter, i64, u64)>,
}

impl Reservation {
    /// The reservation as JSON, so work that ends later, on any node, can settle it (async
    /// tasks keep it in their row).
    pub fn to_json(&self) -> String {
        let items: Vec<(&str, i64, u64)> = self.items.iter().map(|&(c, w, a)| (c.name(), w, a)).collect();
        serde_json::json!({ "id": self.id, "items": items }).to_string()
    }

    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct Stored {
            id: String,
            items: Vec<(String, i64, u64)>,
        }
        let stored: Stored = serde_json::from_str(text)?;
        Ok(Self { id: stored.id, items: parse_items(stored.items) })
    }
}

fn parse_items(items: Vec<(String, i64, u64)>) -> Vec<(Counter, i64, u64)> {
    items.into_iter().filter_map(|(c, w, a)| Counter::parse(&c).map(|c| (c, w, a))).collect()
}

/// `1m0s`, `42s`, `3d4h`: a short duration for messages and headers (OpenAI's style).
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m{s}s"),
        _ => format!("{d}d{h}h{m}m"),
    }
}

#[derive(Debug, Clone)]
pub struct Limiter {
    db: Db,
    /// How long a reservation is held before a sweep releases it.
    ttl: Duration,
}

impl Limiter {
    pub fn new(db: Db, ttl: Duration) -> Self {
        Self { db, ttl }
    }

    /// Counts a request against the key's requests per minute.
    pub async fn admit(&self, key_id: &str, limits: &Limits, now: i64) -> Result<Vec<Standing>, LimitError> {
        let Some(limit) = limits.rpm else { return Ok(Vec::new()) };
        let mut tx = self.db.begin().await?;
        let standing = take(&mut tx, key_id, Counter::RequestsPerMinute, limit, 1, now, Column::Used).await?;
        tx.commit().await?;
        Ok(vec![standing])
    }

    /// Reserves `images` and `tokens` against every image and token limit the key has, all or
    /// nothing.
    pub async fn reserve(
        &self,
        key_id: &str,
        limits: &Limits,
        images: u64,
        tokens: u64,
        now: i64,
    ) -> Result<(Option<Reservation>, Vec<Standing>), LimitError> {
        let wanted: Vec<(Counter, u64, u64)> = Counter::IMAGES
            .into_iter()
            .map(|c| (c, images))
            .chain([(Counter::TokensPerMonth, tokens)])
            .filter_map(|(c, amount)| c.limit(limits).map(|limit| (c, limit, amount)))
            .collect();
        if wanted.is_empty() {
            return Ok((None, Vec::new()));
        }
        let mut tx = self.db.begin().await?;
        let mut standings = Vec::with_capacity(wanted.len());
        let mut items = Vec::with_capacity(wanted.len());
        for (counter, limit, amount) in wanted {
            standings.push(take(&mut tx, key_id, counter, limit, amount, now, Column::Reserved).await?);
            items.push((counter, counter.window(now).0, amount));
        }
        let reservation = Reservation { id: uuid::Uuid::now_v7().to_string(), items };
        let json: Vec<(&str, i64, u64)> = reservation.items.iter().map(|&(c, w, a)| (c.name(), w, a)).collect();
        sqlx::query("INSERT INTO limit_reservations (id, key_id, items, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(&reservation.id)
            .bind(key_id)
            .bind(serde_json::to_string(&json).map_err(anyhow::Error::from)?)
            .bind(now + self.ttl.as_secs() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((Some(reservation), standings))
    }

    /// Charges what was delivered and lets go of the rest. If the reservation has already been
    /// released (it outlived its expiry), the delivery is still charged.
    pub async fn settle(
        &self,
        key_id: &str,
        reservation: &Reservation,
        images: u64,
        tokens: u64,
    ) -> anyhow::Result<()> {
        let delivered = |c: Counter| if c == Counter::TokensPerMonth { tokens } else { images };
        let mut tx = self.db.begin().await?;
        let claimed = claim(&mut tx, &reservation.id).await?;
        for &(counter, window, reserved) in &reservation.items {
            let held = if claimed { reserved } else { 0 };
            sqlx::query(
                "UPDATE limit_counters SET used = used + $1, reserved = reserved - $2 \
                 WHERE key_id = $3 AND counter = $4 AND window_start = $5",
            )
            .bind(delivered(counter) as i64)
            .bind(held as i64)
            .bind(key_id)
            .bind(counter.name())
            .bind(window)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Lets go of a reservation whose request failed: nothing was delivered.
    pub async fn release(&self, key_id: &str, reservation: &Reservation) -> anyhow::Result<()> {
        self.settle(key_id, reservation, 0, 0).await
    }

    /// Releases reservations past their expiry (their node died or lost track of them) and
    /// forgets windows long past; returns how many reservations were released.
    pub async fn sweep(&self, now: i64) -> anyhow::Result<usize> {
        let rows = sqlx::query("SELECT id, key_id, items FROM limit_reservations WHERE expires_at < $1 LIMIT 500")
            .bind(now)
            .fetch_all(&self.db)
            .await?;
        let mut released = 0;
        for row in rows {
            let (id, key_id, items): (String, String, String) =
                (row.try_get("id")?, row.try_get("key_id")?, row.try_get("items")?);
            let parsed: Vec<(String, i64, u64)> = serde_json::from_str(&items)?;
            let reservation = Reservation { id, items: parse_items(parsed) };
            let mut tx = self.db.begin().await?;
            if claim(&mut tx, &reservation.id).await? {
                for &(counter, window, amount) in &reservation.items {
                    sqlx::query(
                        "UPDATE limit_counters SET reserved = reserved - $1 \
                         WHERE key_id = $2 AND counter = $3 AND window_start = $4",
                    )
                    .bind(amount as i64)
                    .bind(&key_id)
                    .bind(counter.name())
                    .bind(window)
                    .execute(&mut *tx)
                    .await?;
                }
                released += 1;
            }
            tx.commit().await?;
        }
        // Minute windows matter for a minute, day windows for a day; months are kept for two.
        sqlx::query("DELETE FROM limit_counters WHERE window_start < $1 AND reserved = 0")
            .bind(now - 62 * 86_400)
            .execute(&self.db)
            .await?;
        sqlx::query("DELETE FROM limit_counters WHERE counter IN ($1, $2, $3) AND window_start < $4 AND reserved = 0")
            .bind(Counter::RequestsPerMinute.name())
            .bind(Counter::ImagesPerMinute.name())
            .bind(Counter::ImagesPerDay.name())
            .bind(now - 2 * 86_400)
            .execute(&self.db)
            .await?;
        Ok(released)
    }
}

/// Which column a take goes to: requests are used at once, images and tokens are reserved.
#[derive(Debug, Clone, Copy)]
enum Column {
    Used,
    Reserved,
}

/// The condition that makes a take atomic: it applies only if the amount still fits.
macro_rules! take_where {
    () => {
        " WHERE key_id = $2 AND counter = $3 AND window_start = $4 AND used + reserved + $1 <= $5 RETURNING used, reserved"
    };
}

/// Takes `amount` from `counter`'s current window if it fits under `limit`, in the caller's
/// transaction; otherwise the error says where the counter stands.
async fn take(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key_id: &str,
    counter: Counter,
    limit: u64,
    amount: u64,
    now: i64,
    column: Column,
) -> Result<Standing, LimitError> {
    let (start, end) = counter.window(now);
    sqlx::query(
        "INSERT INTO limit_counters (key_id, counter, window_start, used, reserved) VALUES ($1, $2, $3, 0, 0) \
         ON CONFLICT (key_id, counter, window_start) DO NOTHING",
    )
    .bind(key_id)
    .bind(counter.name())
    .bind(start)
    .execute(&mut **tx)
    .await?;
    let sql = match column {
        Column::Used => concat!("UPDATE limit_counters SET used = used + $1", take_where!()),
        Column::Reserved => concat!("UPDATE limit_counters SET reserved = reserved + $1", take_where!()),
    };
    let taken = sqlx::query(sql)
        .bind(amount as i64)
        .bind(key_id)
        .bind(counter.name())
        .bind(start)
        .bind(limit as i64)
        .fetch_optional(&mut **tx)
        .await?;
    let (row, over) = match taken {
        Some(row) => (row, false),
        None => {
            let row = sqlx::query(
                "SELECT used, reserved FROM limit_counters WHERE key_id = $1 AND counter = $2 AND window_start = $3",
            )
            .bind(key_id)
            .bind(counter.name())
            .bind(start)
            .fetch_one(&mut **tx)
            .await?;
            (row, true)
        }
    };
    let held = row.try_get::<i64, _>("used")? + row.try_get::<i64, _>("reserved")?;
    let standing = Standing {
        counter,
        limit,
        remaining: limit.saturating_sub(held.max(0) as u64),
        reset_secs: (end - now).max(1) as u64,
    };
    if over {
        return Err(LimitError::Exceeded(Exceeded { standing, asked: amount }));
    }
    Ok(standing)
}

/// Deletes the reservation row; true for the one caller that did.
async fn claim(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM limit_reservations WHERE id = $1").bind(id).execute(&mut **tx).await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_utc_minutes_days_and_months() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 30).unwrap().timestamp();
        assert_eq!(Counter::RequestsPerMinute.window(t), (t - 30, t + 30));
        assert_eq!(Counter::ImagesPerDay.window(t).1, t + 30);
        let (start, end) = Counter::TokensPerMonth.window(t);
        assert_eq!(start, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap().timestamp());
        assert_eq!(end, t + 30, "December ends at the new year");
        let feb = Utc.with_ymd_and_hms(2028, 2, 10, 0, 0, 0).unwrap().timestamp();
        let (s, e) = Counter::ImagesPerMonth.window(feb);
        assert_eq!((e - s) / 86_400, 29, "a leap February");
    }

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(format_duration(42), "42s");
        assert_eq!(format_duration(60), "1m0s");
        assert_eq!(format_duration(3725), "1h2m5s");
        assert_eq!(format_duration(2 * 86_400 + 3600), "2d1h0m");
    }

    #[test]
    fn zero_lifts_a_limit() {
        let limits = Limits { rpm: Some(0), daily_images: Some(5), ..Limits::default() }.normalized();
        assert_eq!((limits.rpm, limits.daily_images), (None, Some(5)));
    }
}
