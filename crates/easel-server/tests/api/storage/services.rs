//! The real services the storage tests run against, one fresh instance per test so tests run in
//! parallel: a SQLite file in a temp dir, a new PostgreSQL database (`CREATE DATABASE` with a
//! random name on the server at `EASEL_TEST_POSTGRES_URL`, dropped afterwards), a temp folder,
//! or a random prefix in the S3 bucket at `EASEL_TEST_S3_URL` (endpoint and credentials in the
//! `AWS_*` variables). `scripts/services.sh` starts PostgreSQL and Garage and sets them all.
//!
//! A test whose service is not configured is skipped with a notice, so a bare `cargo nextest
//! run` works on a laptop; under `EASEL_TEST_REQUIRE_SERVICES=1` (set by `scripts/test.sh`) it
//! fails instead, so the suite can never pass by silently skipping them.

use easel_server::storage::blobs::Blobs;
use easel_server::storage::db::{self, Db};
use sqlx::{AssertSqlSafe, Connection, Executor};

/// The value of `var`, or `None` (with a notice) when the test should be skipped.
///
/// # Panics
/// When `var` is unset and `EASEL_TEST_REQUIRE_SERVICES` is set.
pub fn service(var: &str, what: &str) -> Option<String> {
    if let Some(value) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
        return Some(value);
    }
    let required = std::env::var("EASEL_TEST_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "EASEL_TEST_REQUIRE_SERVICES is set but {var} is not: this test needs {what} (scripts/services.sh starts one)"
    );
    eprintln!("SKIPPED: {var} is not set, so this test cannot reach {what}; ./scripts/test.sh starts one");
    None
}

pub struct TestDb {
    pub db: Db,
    pub url: String,
    /// Removes the SQLite file's folder, or drops the PostgreSQL database, when the test ends.
    _dir: Option<tempfile::TempDir>,
    _database: Option<DropDatabase>,
}

/// A migrated SQLite database in a fresh temp dir.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("easel.db").display());
    let db = db::connect(&url).await.expect("SQLite opens and migrates");
    TestDb { db, url, _dir: Some(dir), _database: None }
}

/// A migrated, freshly created PostgreSQL database, or `None` to skip.
pub async fn postgres() -> Option<TestDb> {
    let admin = service("EASEL_TEST_POSTGRES_URL", "a PostgreSQL server")?;
    let name = format!("easel_test_{:016x}", rand::random::<u64>());
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to EASEL_TEST_POSTGRES_URL={admin}: {e}"));
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("CREATE DATABASE");
    conn.close().await.unwrap();
    let mut url = url::Url::parse(&admin).expect("EASEL_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    let url = url.to_string();
    let db = db::connect(&url).await.expect("PostgreSQL migrates");
    Some(TestDb { db, url, _dir: None, _database: Some(DropDatabase { admin, name }) })
}

/// Drops the test's database when the test ends, passed or not (on its own thread and runtime,
/// since `Drop` cannot await; `WITH (FORCE)` ends the pool's connections first).
struct DropDatabase {
    admin: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let what = name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = sqlx::AnyConnection::connect(&admin).await?;
                conn.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {what}: {dropped:?}");
        }
    }
}

pub struct TestBlobs {
    pub blobs: Blobs,
    pub spec: String,
    _dir: Option<tempfile::TempDir>,
}

/// A blob store in a fresh temp folder.
pub fn local_blobs() -> TestBlobs {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("blobs").display().to_string();
    let blobs = Blobs::open(&spec).expect("a local blob store opens");
    TestBlobs { blobs, spec, _dir: Some(dir) }
}

/// A blob store under a random prefix of the test bucket, or `None` to skip.
pub fn s3_blobs() -> Option<TestBlobs> {
    let base = service("EASEL_TEST_S3_URL", "an S3 bucket")?;
    let spec = format!("{}/test-{:016x}", base.trim_end_matches('/'), rand::random::<u64>());
    let blobs = Blobs::open(&spec).unwrap_or_else(|e| panic!("{spec} opens: {e:#}"));
    Some(TestBlobs { blobs, spec, _dir: None })
}
