//! Where facts and bytes live: facts (keys, usage, image records) in a SQL database through sqlx,
//! bytes (hosted images) in an object store. Embedded defaults are SQLite and a local folder
//! under `data_dir`; several nodes share PostgreSQL ([`db::connect`]) and an S3 bucket
//! ([`blobs::Blobs::open`]).

pub mod blobs;
pub mod db;
pub mod keys;
pub mod limits;
pub mod records;
pub mod reports;
pub mod signing;
pub mod sqlite_ledger;
pub mod sweep;
pub mod tasks;
pub mod writer;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
