//! `easel keys create|update|list|revoke`: keys and their limits, straight in the database (the
//! admin API does the same over HTTP).

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::storage::db;
use crate::storage::keys::{ApiKeys, KeyRecord, KeySettings};
use crate::storage::limits::format_duration;
use crate::storage::reports::parse_time;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (it is shown only once).
    Create {
        #[arg(long)]
        name: String,
        /// May use the admin API (`/admin/v1/...`).
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Change a key's limits, models or expiry (0 lifts a limit or the expiry).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Make it an admin key, or not.
        #[arg(long)]
        admin: Option<bool>,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by its id (or the whole key).
    Revoke { id: String },
}

/// The settings `create` and `update` share; for `update`, what is not given stays.
#[derive(Debug, Args)]
pub struct SettingArgs {
    /// Requests per minute (0 = unlimited).
    #[arg(long)]
    rpm: Option<u64>,
    /// Images per minute (0 = unlimited).
    #[arg(long)]
    images_per_min: Option<u64>,
    /// Images per UTC day (0 = unlimited).
    #[arg(long)]
    daily_images: Option<u64>,
    /// Images per UTC month (0 = unlimited).
    #[arg(long)]
    monthly_images: Option<u64>,
    /// Input plus output tokens per UTC month (0 = unlimited).
    #[arg(long)]
    monthly_tokens: Option<u64>,
    /// Comma-separated model ids the key may use ('' = all).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// The day the key stops working (YYYY-MM-DD, UTC; it works until the end of the day before),
    /// an RFC 3339 time, or 0 for never.
    #[arg(long, value_parser = parse_expiry)]
    expires: Option<i64>,
}

fn parse_expiry(text: &str) -> Result<i64, String> {
    if text.trim() == "0" { Ok(0) } else { parse_time(text) }
}

impl SettingArgs {
    fn into_settings(self, name: Option<String>, admin: Option<bool>) -> KeySettings {
        KeySettings {
            name,
            models: self.models,
            admin,
            rpm: self.rpm,
            images_per_min: self.images_per_min,
            daily_images: self.daily_images,
            monthly_images: self.monthly_images,
            monthly_tokens: self.monthly_tokens,
            expires_at: self.expires,
        }
    }
}

pub async fn run(command: KeysCommand, config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.storage.data_dir)?;
    let keys = ApiKeys::new(db::connect(&config.database_url()).await?);
    match command {
        KeysCommand::Create { name, admin, settings } => {
            let key = keys.create(settings.into_settings(Some(name), Some(admin))).await?;
            println!("{}", key.plaintext);
            eprintln!(
                "Created {}key '{}' (id {}){}. Store it now: it cannot be shown again.",
                if key.record.admin { "admin " } else { "" },
                key.record.name,
                key.record.id,
                describe_limits(&key.record),
            );
        }
        KeysCommand::Update { id, name, admin, settings } => {
            let key = keys
                .update(&id, settings.into_settings(name, admin))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no active key with id '{id}'"))?;
            println!("updated {}{}", key.id, describe_limits(&key));
        }
        KeysCommand::List => {
            println!("{:<14} {:<20} {:<8} {:<6} {:<36} MODELS", "ID", "NAME", "STATUS", "ADMIN", "LIMITS");
            let now = crate::storage::now();
            for key in keys.list().await? {
                let status = match (key.revoked_at, key.is_expired(now)) {
                    (Some(_), _) => "revoked",
                    (None, true) => "expired",
                    (None, false) => "active",
                };
                let models = key.models.clone().map_or_else(|| "*".to_string(), |m| m.join(","));
                let limits = describe_limits(&key);
                let limits = limits.trim_start_matches(", ");
                let admin = if key.admin { "yes" } else { "" };
                println!("{:<14} {:<20} {status:<8} {admin:<6} {limits:<36} {models}", key.id, key.name);
            }
        }
        KeysCommand::Revoke { id } => {
            anyhow::ensure!(keys.revoke(&id).await?, "no active key with id '{id}'");
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// `, 60 rpm, 1000 images/day, expires 2027-01-31` (empty when unlimited).
fn describe_limits(key: &KeyRecord) -> String {
    let l = &key.limits;
    let mut parts: Vec<String> = [
        (l.rpm, "rpm"),
        (l.images_per_min, "images/min"),
        (l.daily_images, "images/day"),
        (l.monthly_images, "images/month"),
        (l.monthly_tokens, "tokens/month"),
    ]
    .into_iter()
    .filter_map(|(v, what)| v.map(|v| format!("{v} {what}")))
    .collect();
    if let Some(at) = key.expires_at {
        let left = (at - crate::storage::now()).max(0) as u64;
        let when = chrono::DateTime::from_timestamp(at, 0)
            .map_or_else(|| at.to_string(), |d| d.format("%Y-%m-%d").to_string());
        parts.push(format!("expires {when} (in {})", format_duration(left)));
    }
    parts.iter().map(|p| format!(", {p}")).collect()
}
