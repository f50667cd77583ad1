//! `easel usage`: the usage report of `/admin/v1/usage`, as a table, JSON or CSV.

use clap::{Args, ValueEnum};

use crate::config::Config;
use crate::storage::db;
use crate::storage::reports::{self, Filter, GroupBy, ReportRow, parse_time};

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this key's requests (its id).
    #[arg(long)]
    key: Option<String>,
    /// Only this model's requests.
    #[arg(long)]
    model: Option<String>,
    /// From this time (YYYY-MM-DD, RFC 3339 or Unix seconds; UTC).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Up to this time, exclusive.
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    #[arg(long, value_enum, default_value_t = GroupBy::Model)]
    by: GroupBy,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

pub async fn run(args: UsageArgs, config: &Config) -> anyhow::Result<()> {
    let db = db::connect(&config.database_url()).await?;
    let filter = Filter { key: args.key, model: args.model, since: args.since, until: args.until };
    let rows = reports::usage(&db, &filter, args.by).await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "by": args.by, "data": rows }))?,
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            for row in &rows {
                writer.serialize(row)?;
            }
            writer.flush()?;
            return Ok(());
        }
        Format::Table => {
            table(&mut out, &rows)?;
            return Ok(());
        }
    }
    use std::io::Write as _;
    writeln!(out)?;
    Ok(())
}

fn table(out: &mut impl std::io::Write, rows: &[ReportRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:>9} {:>7} {:>9} {:>13} {:>13} {:>13}",
        "GROUP", "REQUESTS", "FAILED", "IMAGES", "INPUT TOKENS", "OUTPUT TOKENS", "TOTAL TOKENS"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<24} {:>9} {:>7} {:>9} {:>13} {:>13} {:>13}",
            r.group, r.requests, r.failed, r.images, r.input_tokens, r.output_tokens, r.total_tokens
        )?;
    }
    Ok(())
}
