//! The storage layer against every engine it supports: each behaviour is one function, run by
//! a test per engine (`<behaviour>::sqlite` / `::postgres`, `::local` / `::s3`), on real
//! services (see `storage/services.rs`), so a query or a blob call that works on one engine
//! only fails a test.

mod limits;
mod schema;
pub mod services;
mod writer;

use bytes::Bytes;
use easel_core::usage::Usage;
use easel_server::storage::blobs::Blobs;
use easel_server::storage::db::{self, Db, Engine};
use easel_server::storage::keys::{ApiKeys, KeySettings, RECHECK_AFTER};
use easel_server::storage::records::{self, ImageRecord, UsageRecord};
use easel_server::storage::{now, sweep};
use services::TestBlobs;
use sqlx::Row;

/// `mod $name { sqlite, postgres }`, each calling `$name(db)` on a fresh database.
macro_rules! on_each_database {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let test = super::services::sqlite().await;
                super::$name(&test.db).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(test) = super::services::postgres().await else { return };
                super::$name(&test.db).await;
            }
        }
    };
}

/// `mod $name { local, s3 }`, each calling `$name(blobs)` on a fresh, empty store.
macro_rules! on_each_blob_store {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn local() {
                super::$name(&super::services::local_blobs()).await;
            }

            #[tokio::test]
            async fn s3() {
                let Some(test) = super::services::s3_blobs() else { return };
                super::$name(&test).await;
            }
        }
    };
}

on_each_database!(keys_lifecycle);
async fn keys_lifecycle(db: &Db) {
    let keys = ApiKeys::new(db.clone());
    assert!(!keys.any_ever().await.unwrap());
    let all = keys.create(KeySettings::named("ci")).await.unwrap();
    let limited = keys.create(KeySettings::named("limited").models(&["turbo", "flux"])).await.unwrap();
    assert!(keys.any_ever().await.unwrap());

    let verified = keys.verify(&limited.plaintext).await.unwrap().expect("a new key verifies");
    assert_eq!(verified, limited.record);
    assert!(verified.allows("flux") && !verified.allows("other"));
    assert!(keys.verify(&all.plaintext).await.unwrap().unwrap().allows("anything"));
    // Same id, another secret of the right shape: not a key.
    let forged = format!("{}{}", &all.plaintext[..all.plaintext.len() - 4], "zzzz");
    assert_ne!(forged, all.plaintext);
    assert_eq!(keys.verify(&forged).await.unwrap(), None);
    assert_eq!(keys.verify("sk-easel-nonsense").await.unwrap(), None);

    let listed = keys.list().await.unwrap();
    let mut expected = vec![all.record.clone(), limited.record.clone()];
    expected.sort_by_key(|k| (k.created_at, k.id.clone()));
    assert_eq!(listed, expected, "list shows every key, by creation then id");

    assert!(keys.revoke(&all.record.id).await.unwrap(), "revoking by id");
    assert!(!keys.revoke(&all.record.id).await.unwrap(), "a revoked key is not revoked twice");
    assert_eq!(keys.verify(&all.plaintext).await.unwrap(), None);
    assert!(keys.revoke(&limited.plaintext).await.unwrap(), "revoking by the whole key");
    assert!(keys.any_ever().await.unwrap(), "a database that has had a key never counts as keyless again");
    let listed = keys.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.revoked_at.is_some_and(|at| at >= k.created_at)));
}

on_each_database!(keys_changed_elsewhere_are_seen_within_the_recheck);
/// Two stores on one database are two nodes (or a node and the CLI): what one changes, the
/// other sees within `RECHECK_AFTER`; the one that changed it sees it at once.
async fn keys_changed_elsewhere_are_seen_within_the_recheck(db: &Db) {
    let (a, b) = (ApiKeys::new(db.clone()), ApiKeys::new(db.clone()));
    assert!(!b.any_ever().await.unwrap());
    let key = a.create(KeySettings::named("shared")).await.unwrap();
    assert!(a.any_ever().await.unwrap(), "the node that made a key is closed at once");
    tokio::time::sleep(RECHECK_AFTER).await;
    assert!(b.any_ever().await.unwrap(), "and the other within the recheck");

    assert_eq!(b.verify(&key.plaintext).await.unwrap(), Some(key.record.clone()));
    assert_eq!(a.verify(&key.plaintext).await.unwrap(), Some(key.record.clone()));
    let limits = KeySettings { rpm: Some(7), ..KeySettings::default() };
    a.update(&key.record.id, limits).await.unwrap().expect("an active key");
    assert_eq!(a.verify(&key.plaintext).await.unwrap().unwrap().limits.rpm, Some(7), "changed here: at once");
    tokio::time::sleep(RECHECK_AFTER).await;
    assert_eq!(b.verify(&key.plaintext).await.unwrap().unwrap().limits.rpm, Some(7), "elsewhere: within the recheck");

    assert!(a.revoke(&key.record.id).await.unwrap());
    assert_eq!(a.verify(&key.plaintext).await.unwrap(), None, "revoked here: refused at once");
    tokio::time::sleep(RECHECK_AFTER).await;
    assert_eq!(b.verify(&key.plaintext).await.unwrap(), None, "revoked elsewhere: refused within the recheck");
    // A wrong secret for a key that was just checked is still refused.
    let other = a.create(KeySettings::named("other")).await.unwrap();
    assert!(a.verify(&other.plaintext).await.unwrap().is_some());
    let forged = format!("{}{}", &other.plaintext[..other.plaintext.len() - 4], "zzzz");
    assert_eq!(a.verify(&forged).await.unwrap(), None);
}

fn usage_record(images: usize) -> UsageRecord {
    UsageRecord {
        id: uuid::Uuid::now_v7(),
        key_id: Some("abc123def456".into()),
        model: "turbo".into(),
        backend: "local".into(),
        operation: "generate".into(),
        outcome: "ok".into(),
        status: 200,
        size: Some("512x512".into()),
        quality: None,
        output_format: Some("png".into()),
        usage: Usage { input_text_tokens: 7, input_image_tokens: 0, output_tokens: 272 * images as u64 },
        latency_ms: 1234,
        end_user: None,
        // Past i32::MAX, so an INTEGER column where BIGINT belongs fails on PostgreSQL.
        created_at: 4_102_444_800,
        once: false,
    }
}

fn image_record(hosted_until: Option<i64>) -> ImageRecord {
    let id = uuid::Uuid::now_v7();
    ImageRecord {
        id,
        width: 512,
        height: 768,
        format: "png".into(),
        bytes: 3_000_000_000,
        blob_key: hosted_until.map(|at| Blobs::key_for(&id, "png", at)),
        expires_at: hosted_until,
    }
}

on_each_database!(usage_and_images_are_one_transaction);
async fn usage_and_images_are_one_transaction(db: &Db) {
    let usage = usage_record(2);
    let hosted = image_record(Some(now() + 3600));
    let inline = image_record(None);
    records::record(db, &usage, &[hosted.clone(), inline.clone()]).await.unwrap();

    let row = sqlx::query(
        "SELECT status, image_count, total_tokens, latency_ms, created_at, quality, key_id FROM usage WHERE id = $1",
    )
    .bind(usage.id.to_string())
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(row.try_get::<i64, _>("status").unwrap(), 200);
    assert_eq!(row.try_get::<i64, _>("image_count").unwrap(), 2);
    assert_eq!(row.try_get::<i64, _>("total_tokens").unwrap(), 7 + 2 * 272);
    assert_eq!(row.try_get::<i64, _>("latency_ms").unwrap(), 1234);
    assert_eq!(row.try_get::<i64, _>("created_at").unwrap(), usage.created_at);
    assert_eq!(row.try_get::<Option<String>, _>("quality").unwrap(), None);
    assert_eq!(row.try_get::<Option<String>, _>("key_id").unwrap(), usage.key_id);
    let row = sqlx::query("SELECT COUNT(*) AS n FROM images WHERE usage_id = $1")
        .bind(usage.id.to_string())
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(row.try_get::<i64, _>("n").unwrap(), 2);
    let row = sqlx::query("SELECT width, height, bytes FROM images WHERE id = $1")
        .bind(hosted.id.to_string())
        .fetch_one(db)
        .await
        .unwrap();
    let dims: (i64, i64, i64) =
        (row.try_get("width").unwrap(), row.try_get("height").unwrap(), row.try_get("bytes").unwrap());
    assert_eq!(dims, (512, 768, 3_000_000_000));

    // A failing image insert (a duplicate id) rolls the usage row back with it.
    let failed = usage_record(2);
    let err = records::record(db, &failed, &[image_record(None), inline.clone()]).await;
    assert!(err.is_err(), "a duplicate image id is rejected");
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM usage WHERE id = $1")
        .bind(failed.id.to_string())
        .fetch_one(db)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(n, 0, "no usage row without its images");
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM images").fetch_one(db).await.unwrap().try_get("n").unwrap();
    assert_eq!(n, 2, "no images from the failed request");
}

on_each_database!(hosted_image_lookup);
async fn hosted_image_lookup(db: &Db) {
    let hosted = image_record(Some(now() + 3600));
    let inline = image_record(None);
    records::record(db, &usage_record(2), &[hosted.clone(), inline.clone()]).await.unwrap();
    let found = records::hosted_image(db, &hosted.id.to_string()).await.unwrap();
    assert_eq!(found, Some((hosted.blob_key.clone().unwrap(), hosted.expires_at)));
    assert_eq!(records::hosted_image(db, &inline.id.to_string()).await.unwrap(), None, "not hosted");
    assert_eq!(records::hosted_image(db, &uuid::Uuid::now_v7().to_string()).await.unwrap(), None);
    records::mark_deleted(db, &hosted.id.to_string(), now()).await.unwrap();
    assert_eq!(records::hosted_image(db, &hosted.id.to_string()).await.unwrap(), None, "swept");
}

on_each_blob_store!(blob_round_trip);
async fn blob_round_trip(test: &TestBlobs) {
    let blobs = &test.blobs;
    blobs.check().await.unwrap_or_else(|e| panic!("{}: {e:#}", test.spec));
    let key = Blobs::key_for(&uuid::Uuid::now_v7(), "webp", now());
    assert_eq!(blobs.get(&key).await.unwrap(), None);
    let bytes = Bytes::from((0..=255u8).cycle().take(300_000).collect::<Vec<_>>());
    blobs.put(&key, bytes.clone()).await.unwrap();
    assert_eq!(blobs.get(&key).await.unwrap(), Some(bytes));
    blobs.put(&key, Bytes::from_static(b"second")).await.unwrap();
    assert_eq!(blobs.get(&key).await.unwrap().as_deref(), Some(b"second".as_slice()), "put overwrites");
    blobs.delete(&key).await.unwrap();
    assert_eq!(blobs.get(&key).await.unwrap(), None);
    blobs.delete(&key).await.expect("deleting a missing blob succeeds");
}

on_each_blob_store!(stores_are_isolated_by_location);
async fn stores_are_isolated_by_location(test: &TestBlobs) {
    test.blobs.put("images/1/a.png", Bytes::from_static(b"a")).await.unwrap();
    let same = Blobs::open(&test.spec).unwrap();
    assert_eq!(same.get("images/1/a.png").await.unwrap().as_deref(), Some(b"a".as_slice()), "reopened");
    let sibling = Blobs::open(&format!("{}-other", test.spec)).unwrap();
    assert_eq!(sibling.get("images/1/a.png").await.unwrap(), None);
}

/// The expiry sweep on a database and a blob store: expired hosted images lose their blob and
/// their link, everything else stays.
async fn sweep_expired(db: &Db, blobs: &Blobs) {
    let expired = image_record(Some(now() - 10));
    let live = image_record(Some(now() + 3600));
    let inline = image_record(None);
    let usage = usage_record(3);
    records::record(db, &usage, &[expired.clone(), live.clone(), inline]).await.unwrap();
    for image in [&expired, &live] {
        blobs.put(image.blob_key.as_ref().unwrap(), Bytes::from_static(b"png")).await.unwrap();
    }

    assert_eq!(sweep::sweep_once(db, blobs).await.unwrap(), 1);
    assert_eq!(blobs.get(expired.blob_key.as_ref().unwrap()).await.unwrap(), None, "the expired blob is gone");
    assert!(blobs.get(live.blob_key.as_ref().unwrap()).await.unwrap().is_some(), "the live blob stays");
    assert_eq!(records::hosted_image(db, &expired.id.to_string()).await.unwrap(), None);
    assert!(records::hosted_image(db, &live.id.to_string()).await.unwrap().is_some());
    let deleted_at: Option<i64> = sqlx::query("SELECT deleted_at FROM images WHERE id = $1")
        .bind(expired.id.to_string())
        .fetch_one(db)
        .await
        .unwrap()
        .try_get("deleted_at")
        .unwrap();
    assert!(deleted_at.is_some(), "the row is kept for the ledger, marked deleted");
    assert_eq!(sweep::sweep_once(db, blobs).await.unwrap(), 0, "nothing left to sweep");
}

mod sweep_expired {
    #[tokio::test]
    async fn sqlite_and_local() {
        let (db, blobs) = (super::services::sqlite().await, super::services::local_blobs());
        super::sweep_expired(&db.db, &blobs.blobs).await;
    }

    #[tokio::test]
    async fn postgres_and_s3() {
        let db = super::services::postgres().await;
        let blobs = super::services::s3_blobs();
        let (Some(db), Some(blobs)) = (db, blobs) else { return };
        super::sweep_expired(&db.db, &blobs.blobs).await;
    }
}

#[tokio::test]
async fn migration_sets_define_the_same_schema() {
    let Some(postgres) = services::postgres().await else { return };
    let sqlite = services::sqlite().await;
    let sqlite_schema = schema::describe(&sqlite.db, Engine::Sqlite).await;
    let postgres_schema = schema::describe(&postgres.db, Engine::Postgres).await;
    for table in ["api_keys", "usage", "images"] {
        assert!(sqlite_schema.iter().any(|l| l.starts_with(&format!("column {table}."))), "{sqlite_schema:#?}");
    }
    assert!(sqlite_schema.iter().any(|l| l.contains("index images_expiry") && l.ends_with("(partial)")));
    let only_in = |a: &[String], b: &[String]| a.iter().filter(|l| !b.contains(l)).cloned().collect::<Vec<_>>();
    let (sqlite_only, postgres_only) =
        (only_in(&sqlite_schema, &postgres_schema), only_in(&postgres_schema, &sqlite_schema));
    assert!(
        sqlite_only.is_empty() && postgres_only.is_empty(),
        "migrations/sqlite and migrations/postgres define different schemas:\n only in SQLite: {sqlite_only:#?}\n \
         only in PostgreSQL: {postgres_only:#?}"
    );
    // Connecting again finds every migration applied (and unchanged).
    db::connect(&postgres.url).await.expect("a migrated PostgreSQL database reopens");
    db::connect(&sqlite.url).await.expect("a migrated SQLite database reopens");
}

/// A SQLite database the server creates has the server's page size (`db::SQLITE_PAGE_SIZE`,
/// smaller than SQLite's default, for the ledger's write traffic); one created before, with
/// SQLite's default, keeps its own and takes rows as before.
#[tokio::test]
async fn a_new_sqlite_database_has_the_servers_page_size_and_an_old_one_keeps_its_own() {
    async fn page_size(db: &Db) -> i64 {
        sqlx::query("PRAGMA page_size").fetch_one(db).await.unwrap().try_get(0).unwrap()
    }
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());

    let new = db::connect(&url("new.db")).await.unwrap();
    assert_eq!(page_size(&new).await, i64::from(db::SQLITE_PAGE_SIZE));
    records::record(&new, &usage_record(1), &[image_record(None)]).await.unwrap();
    // The ledger's backstop checkpoint counts pages: the same 64 MiB of log at either size.
    let backstop = |name: &str| {
        let conn = easel_server::storage::sqlite_ledger::open(&dir.path().join(name)).unwrap();
        let pages: i64 = conn.query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0)).unwrap();
        let size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0)).unwrap();
        pages * size
    };
    assert_eq!(backstop("new.db"), 64 << 20);

    sqlx::any::install_default_drivers();
    let before = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url("old.db")).await.unwrap();
    sqlx::Executor::execute(&before, "PRAGMA journal_mode = WAL").await.unwrap();
    let default = page_size(&before).await;
    assert_ne!(default, i64::from(db::SQLITE_PAGE_SIZE), "SQLite's default page size");
    before.close().await;
    let old = db::connect(&url("old.db")).await.unwrap();
    assert_eq!(page_size(&old).await, default, "an existing database keeps its page size");
    assert_eq!(backstop("old.db"), 64 << 20);
    records::record(&old, &usage_record(2), &[image_record(None), image_record(Some(now() + 60))]).await.unwrap();
}

/// A SQLite ledger written before migration 4 (rowid tables) keeps every row and its foreign key
/// when `connect` rebuilds the tables in id order, and takes new rows as before.
#[tokio::test]
async fn a_sqlite_ledger_from_before_the_clustered_tables_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("easel.db").display());
    sqlx::any::install_default_drivers();
    let old = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    sqlx::Executor::execute(&old, "PRAGMA foreign_keys = ON").await.unwrap();
    // The database as migrations 1 to 3 left it.
    let mut before = db::migrator(Engine::Sqlite);
    before.migrations.to_mut().retain(|m| m.version < 4);
    assert_eq!(before.migrations.len(), 3);
    before.run(&old).await.unwrap();
    let usage = usage_record(2);
    let images = [image_record(Some(now() + 3600)), image_record(None)];
    records::record(&old, &usage, &images).await.unwrap();
    old.close().await;

    let db = db::connect(&url).await.expect("migration 4 applies to a ledger with rows");
    let tables = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%WITHOUT ROWID'")
        .fetch_all(&db)
        .await
        .unwrap();
    let mut tables = tables.iter().map(|r| r.try_get::<String, _>(0).unwrap()).collect::<Vec<_>>();
    tables.sort();
    assert_eq!(tables, ["images", "usage"]);
    let kept = sqlx::query(
        "SELECT u.id, u.total_tokens, COUNT(i.id) FROM usage u JOIN images i ON i.usage_id = u.id GROUP BY u.id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].try_get::<String, _>(0).unwrap(), usage.id.to_string());
    assert_eq!(kept[0].try_get::<i64, _>(1).unwrap(), usage.usage.total_tokens() as i64);
    assert_eq!(kept[0].try_get::<i64, _>(2).unwrap(), 2);
    assert_eq!(
        records::hosted_image(&db, &images[0].id.to_string()).await.unwrap(),
        Some((images[0].blob_key.clone().unwrap(), images[0].expires_at)),
        "the hosted image is still found by its id"
    );
    // The foreign key still points at the (new) usage table.
    let err = sqlx::query(
        "INSERT INTO images (id, usage_id, model, width, height, format, bytes, created_at) \
         VALUES ($1, 'no-such-usage', 'm', 1, 1, 'png', 1, 0)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .execute(&db)
    .await
    .expect_err("an image without its usage row is refused");
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
    records::record(&db, &usage_record(1), &[image_record(None)]).await.unwrap();
}

#[tokio::test]
async fn unreachable_s3_bucket_fails_the_check_clearly() {
    if services::service("EASEL_TEST_S3_URL", "an S3 endpoint").is_none() {
        return;
    }
    let spec = format!("s3://easel-missing-{:016x}", rand::random::<u64>());
    let blobs = Blobs::open(&spec).unwrap();
    let err = format!("{:#}", blobs.check().await.unwrap_err());
    assert!(err.contains(&spec), "the error names the store: {err}");
}
