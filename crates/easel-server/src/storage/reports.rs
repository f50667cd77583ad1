//! Usage reports from the ledger: requests, images and tokens, filtered by key, model and time,
//! grouped by model, key or UTC day. The admin API (`/admin/v1/usage`) and `easel usage` print
//! the same rows.

use chrono::{DateTime, NaiveDate, NaiveTime};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::db::Db;

/// How rows are grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    Model,
    Key,
    Day,
}

/// Which requests count; `None` is no filter. Times are Unix seconds, `until` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub key: Option<String>,
    pub model: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// The model id, the key id (`open` for requests made without a key) or the day
    /// (`YYYY-MM-DD`).
    pub group: String,
    pub requests: i64,
    /// Requests that ended in an error.
    pub failed: i64,
    pub images: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
}

/// The query for each grouping (sums cast to BIGINT: PostgreSQL sums BIGINTs as NUMERIC); static strings, the filters bound as parameters (`$1` key, `$2`
/// model, `$3` since, `$4` until; a NULL parameter filters nothing).
macro_rules! report_sql {
    ($group:literal) => {
        concat!(
            "SELECT ",
            $group,
            " AS grp, COUNT(*) AS requests, \
             CAST(SUM(CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END) AS BIGINT) AS failed, \
             CAST(SUM(CASE WHEN outcome = 'ok' THEN image_count ELSE 0 END) AS BIGINT) AS images, \
             CAST(SUM(input_text_tokens + input_image_tokens) AS BIGINT) AS input_tokens, \
             CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, CAST(SUM(total_tokens) AS BIGINT) AS total_tokens \
             FROM usage \
             WHERE ($1 IS NULL OR key_id = $1) AND ($2 IS NULL OR model = $2) \
             AND ($3 IS NULL OR created_at >= $3) AND ($4 IS NULL OR created_at < $4) \
             GROUP BY grp ORDER BY grp"
        )
    };
}

pub async fn usage(db: &Db, filter: &Filter, by: GroupBy) -> anyhow::Result<Vec<ReportRow>> {
    let sql = match by {
        GroupBy::Model => report_sql!("model"),
        GroupBy::Key => report_sql!("COALESCE(key_id, 'open')"),
        GroupBy::Day => report_sql!("created_at / 86400"),
    };
    let rows = sqlx::query(sql)
        .bind(&filter.key)
        .bind(&filter.model)
        .bind(filter.since)
        .bind(filter.until)
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|row| {
            let group = match by {
                GroupBy::Day => day(row.try_get::<i64, _>("grp")?),
                GroupBy::Model | GroupBy::Key => row.try_get("grp")?,
            };
            let sum = |name: &str| -> anyhow::Result<i64> { Ok(row.try_get::<Option<i64>, _>(name)?.unwrap_or(0)) };
            Ok(ReportRow {
                group,
                requests: row.try_get("requests")?,
                failed: sum("failed")?,
                images: sum("images")?,
                input_tokens: sum("input_tokens")?,
                output_tokens: sum("output_tokens")?,
                total_tokens: sum("total_tokens")?,
            })
        })
        .collect()
}

/// `YYYY-MM-DD` of a day number since the epoch.
fn day(days: i64) -> String {
    DateTime::from_timestamp(days * 86_400, 0).map_or_else(|| days.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// A time given as `YYYY-MM-DD` (its UTC midnight), RFC 3339, or Unix seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(NaiveTime::MIN).and_utc().timestamp());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .map_err(|_| format!("'{text}' is not a date: expected YYYY-MM-DD, an RFC 3339 time or Unix seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_three_forms() {
        assert_eq!(parse_time("2027-01-31").unwrap(), 1_801_353_600);
        assert_eq!(parse_time("2027-01-31T00:00:00Z").unwrap(), 1_801_353_600);
        assert_eq!(parse_time("1801353600").unwrap(), 1_801_353_600);
        assert!(parse_time("31/01/2027").unwrap_err().contains("YYYY-MM-DD"));
        assert_eq!(day(1_801_353_600 / 86_400), "2027-01-31");
    }
}
