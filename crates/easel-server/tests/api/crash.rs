//! Crash safety with the real binary: `easel serve` is killed with SIGKILL (`kill -9`) during a
//! generation, between the upload of hosted images and the commit of their rows, and under load,
//! then restarted on the same data folder (SQLite and blob folder). Each time the database is
//! whole and its ledger tables agree, reservations the dead process held are released, orphan
//! blobs are swept, and every request that got a 200 has exactly one usage row. SIGTERM drains.
//!
//! No fault hook in the server: the moment of each kill is held from outside. The upstream
//! provider is a [`Gated`] one in this process that answers only when the test opens its gate,
//! so a kill lands while a job surely runs; the commit of a delivery is held by taking SQLite's
//! write lock from the test.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use base64::Engine as _;
use easel_server::storage::db::{self, Db};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::watch;

use crate::helpers::{ServeProcess, assert_error, json_body, png};

/// The provider's key variable (Cargo sets it for every test process, so the child inherits it).
const KEY_ENV: &str = "CARGO_PKG_NAME";

/// An OpenAI-compatible image provider on loopback that holds every answer until its gate is
/// open, counting the requests that arrived.
struct Gated {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    arrived: watch::Sender<usize>,
}

impl Gated {
    async fn start(open: bool) -> Self {
        let (open, _) = watch::channel(open);
        let (arrived, _) = watch::channel(0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/images/generations", axum::routing::post(Self::answer))
            .with_state((open.clone(), arrived.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, open, arrived }
    }

    async fn answer(
        State((open, arrived)): State<(watch::Sender<bool>, watch::Sender<usize>)>,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::Json<Value> {
        arrived.send_modify(|n| *n += 1);
        let _ = open.subscribe().wait_for(|open| *open).await;
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        let image = base64::engine::general_purpose::STANDARD.encode(png(64, 64, [30, 90, 160]));
        axum::Json(json!({
            "created": 1_700_000_000,
            "data": vec![json!({"b64_json": image}); n],
            "usage": {"total_tokens": 30, "input_tokens": 10, "output_tokens": 20,
                      "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}},
        }))
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// Waits until `count` requests have arrived in all.
    async fn arrivals(&self, count: usize) {
        let mut arrived = self.arrived.subscribe();
        tokio::time::timeout(Duration::from_secs(60), arrived.wait_for(|&n| n >= count))
            .await
            .unwrap_or_else(|_| panic!("fewer than {count} requests reached the provider"))
            .unwrap();
    }
}

/// A data folder with a config whose model `relay` is gpt-image-1 on `provider`.
struct Site {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Site {
    fn new(provider: &Gated) -> Self {
        let temp = tempfile::Builder::new().prefix("easel-crash").tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let config = dir.join("easel.toml");
        let text = format!(
            r#"
[server]
bind = "127.0.0.1:0"
shutdown_grace_secs = 60
[storage]
data_dir = {data:?}
sweep_interval_secs = 1
[limits]
reservation_ttl_secs = 2
[[providers]]
id = "gated"
kind = "openai"
base_url = "http://{addr}/v1"
api_key_env = "{KEY_ENV}"
retries = 0
timeout_secs = 120.0
[[models]]
id = "relay"
backend = "upstream"
targets = [{{ provider = "gated", model = "gpt-image-1" }}]
sizes = ["64x64"]
native_sizes = ["64x64"]
"#,
            data = dir.join("data"),
            addr = provider.addr,
        );
        std::fs::write(&config, text).unwrap();
        Self { _temp: temp, dir, config }
    }

    fn start(&self) -> ServeProcess {
        ServeProcess::start(&self.config, &[])
    }

    async fn db(&self) -> Db {
        db::connect(&format!("sqlite://{}?mode=rwc", self.dir.join("data/easel.db").display())).await.unwrap()
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("data/blobs")
    }

    /// Every file in the blob folder, by its key (path under the folder).
    fn blob_files(&self) -> HashSet<String> {
        let root = self.blobs();
        let mut found = HashSet::new();
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.map(Result::unwrap) {
                if entry.file_type().unwrap().is_dir() {
                    pending.push(entry.path());
                } else {
                    found.insert(entry.path().strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        found
    }

    /// Makes a blob look written two hours ago, past the orphan grace period.
    fn age(&self, key: &str) {
        let file = std::fs::File::options().write(true).open(self.blobs().join(key)).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(2 * 3600)).unwrap();
    }
}

async fn generate(client: &reqwest::Client, node: &ServeProcess, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = client.post(node.url("/v1/images/generations")).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(db).await.unwrap().get(0)
}

/// Hosted images with a live row, by blob key.
async fn live_blob_keys(db: &Db) -> HashSet<String> {
    let rows = sqlx::query("SELECT blob_key FROM images WHERE blob_key IS NOT NULL AND deleted_at IS NULL")
        .fetch_all(db)
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

/// The database is whole and its ledger tables agree: SQLite's own checks, every image row
/// belongs to a usage row whose `image_count` it matches, and each counter's `reserved` is what
/// the live reservations hold.
async fn assert_consistent(db: &Db) {
    let integrity: String = sqlx::query("PRAGMA integrity_check").fetch_one(db).await.unwrap().get(0);
    assert_eq!(integrity, "ok");
    assert!(sqlx::query("PRAGMA foreign_key_check").fetch_all(db).await.unwrap().is_empty());
    let dangling = "SELECT COUNT(*) FROM images WHERE usage_id NOT IN (SELECT id FROM usage)";
    assert_eq!(count(db, dangling).await, 0, "image rows without their usage row");
    let miscounted = "SELECT COUNT(*) FROM usage u WHERE image_count <> \
                      (SELECT COUNT(*) FROM images i WHERE i.usage_id = u.id)";
    assert_eq!(count(db, miscounted).await, 0, "usage rows whose image_count differs from their image rows");
    let negative = "SELECT COUNT(*) FROM limit_counters WHERE used < 0 OR reserved < 0";
    assert_eq!(count(db, negative).await, 0);
    let mut held: HashMap<(String, String, i64), i64> = HashMap::new();
    for row in sqlx::query("SELECT key_id, items FROM limit_reservations").fetch_all(db).await.unwrap() {
        let items: Vec<(String, i64, i64)> = serde_json::from_str(&row.get::<String, _>("items")).unwrap();
        for (counter, window, amount) in items {
            *held.entry((row.get("key_id"), counter, window)).or_default() += amount;
        }
    }
    for row in
        sqlx::query("SELECT key_id, counter, window_start, reserved FROM limit_counters").fetch_all(db).await.unwrap()
    {
        let slot = (row.get("key_id"), row.get("counter"), row.get("window_start"));
        let reserved: i64 = row.get("reserved");
        assert_eq!(reserved, held.get(&slot).copied().unwrap_or(0), "counter {slot:?}");
    }
}

/// Polls `check` every 20 ms until it holds, failing after a minute.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(60), "still not the case after a minute: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Killed while its provider works on two requests (one hosted, one inline): no usage row for
/// either, their quota reservations are released after the restart, and the request answered
/// before the kill keeps its one row and its charge.
#[tokio::test]
async fn a_kill_during_a_generation_loses_nothing_and_releases_its_reservations() {
    let provider = Gated::start(true).await;
    let site = Site::new(&provider);
    let client = reqwest::Client::new();
    let node = site.start();
    let key = node.cli(&["keys", "create", "--name", "tenant", "--daily-images", "100"]);
    let done = json_body(generate(&client, &node, Some(&key), json!({"model": "relay", "prompt": "p"})).await, 200);
    assert_eq!(done.await["data"].as_array().unwrap().len(), 1);

    provider.set_open(false);
    let mut running = Vec::new();
    for format in ["url", "b64_json"] {
        let body = json!({"model": "relay", "prompt": "p", "n": 2, "response_format": format});
        let (client, url, key) = (client.clone(), node.url("/v1/images/generations"), key.clone());
        running.push(tokio::spawn(async move { client.post(url).bearer_auth(key).json(&body).send().await }));
    }
    provider.arrivals(3).await;
    node.kill_9();
    for request in running {
        assert!(request.await.unwrap().is_err(), "no answer can come from a killed process");
    }

    let db = site.db().await;
    assert_consistent(&db).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM usage").await, 1, "only the answered request is recorded");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM limit_reservations").await, 2, "the dead process's reservations");
    let reserved = "SELECT reserved FROM limit_counters WHERE counter = 'images/day'";
    assert_eq!(count(&db, reserved).await, 4);
    assert!(site.blob_files().is_empty(), "nothing was uploaded");

    provider.set_open(true);
    let node = site.start();
    eventually("the reservations expire and are released", || async {
        count(&db, "SELECT COUNT(*) FROM limit_reservations").await == 0
    })
    .await;
    assert_consistent(&db).await;
    assert_eq!(count(&db, reserved).await, 0);
    assert_eq!(count(&db, "SELECT used FROM limit_counters WHERE counter = 'images/day'").await, 1);
    let again = generate(&client, &node, Some(&key), json!({"model": "relay", "prompt": "p", "n": 2})).await;
    assert_eq!(json_body(again, 200).await["data"].as_array().unwrap().len(), 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM usage WHERE outcome = 'ok'").await, 2);
    assert_consistent(&db).await;
}

/// Killed after it uploaded a request's hosted images and while their rows wait to commit (the
/// test holds SQLite's write lock): no row, three orphan blobs. After the restart the sweep
/// deletes the orphans older than the grace period, and a partial write, and keeps the one still
/// within it.
#[tokio::test]
async fn a_kill_between_upload_and_commit_leaves_orphans_that_the_sweep_deletes() {
    let provider = Gated::start(true).await;
    let site = Site::new(&provider);
    let client = reqwest::Client::new();
    let node = site.start();
    let db = site.db().await;

    let mut lock = db.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await.unwrap();
    let body = json!({"model": "relay", "prompt": "p", "n": 3, "response_format": "url"});
    let request = tokio::spawn({
        let (client, url) = (client.clone(), node.url("/v1/images/generations"));
        async move { client.post(url).json(&body).send().await }
    });
    // Whole blobs only: a local put writes `<key>#<n>` first, then renames it.
    let whole = || site.blob_files().into_iter().filter(|key| !key.contains('#')).count();
    eventually("three hosted images are uploaded", || async { whole() == 3 }).await;
    node.kill_9();
    sqlx::query("ROLLBACK").execute(&mut *lock).await.unwrap();
    drop(lock);
    assert!(request.await.unwrap().is_err());

    assert_consistent(&db).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM usage").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM images").await, 0);
    let mut orphans: Vec<String> = site.blob_files().into_iter().collect();
    orphans.sort();
    let fresh = orphans.pop().unwrap();
    for key in &orphans {
        site.age(key);
    }
    let partial = format!("{fresh}#4");
    std::fs::write(site.blobs().join(&partial), b"half an image").unwrap();
    site.age(&partial);

    let node = site.start();
    eventually("the orphans past the grace period are deleted", || async {
        site.blob_files() == HashSet::from([fresh.clone()])
    })
    .await;
    let hosted = json_body(
        generate(&client, &node, None, json!({"model": "relay", "prompt": "p", "response_format": "url"})).await,
        200,
    )
    .await;
    let image = client.get(hosted["data"][0]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(image.status(), 200);
    let live = live_blob_keys(&db).await;
    assert_eq!(live.len(), 1);
    assert_eq!(site.blob_files(), live.union(&HashSet::from([fresh])).cloned().collect());
    assert_consistent(&db).await;
}

/// Killed at an arbitrary moment under load (hosted and inline, n of 1 and 2, each request
/// named by its `user`): every request answered with a 200 has exactly one usage row with its
/// images, no request has two, and after the restart the blob folder holds exactly the hosted
/// images that have a row.
#[tokio::test]
async fn a_kill_under_load_doubles_and_loses_no_usage_row() {
    let provider = Gated::start(true).await;
    let site = Site::new(&provider);
    let node = site.start();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for worker in 0..4 {
        let (url, answered) = (node.url("/v1/images/generations"), Arc::clone(&answered));
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut delivered = Vec::new();
            for i in 0.. {
                let (user, n) = (format!("user-{worker}-{i}"), 1 + i % 2);
                let format = if (worker + i) % 2 == 0 { "url" } else { "b64_json" };
                let body = json!({"model": "relay", "prompt": "p", "n": n, "response_format": format, "user": user});
                let Ok(response) = client.post(&url).json(&body).send().await else { break };
                let status = response.status();
                if response.bytes().await.is_err() {
                    break;
                }
                assert_eq!(status, 200, "{user}");
                delivered.push((user, n));
                answered.fetch_add(1, Ordering::SeqCst);
            }
            delivered
        }));
    }
    eventually("some requests are answered", || async { answered.load(Ordering::SeqCst) >= 40 }).await;
    node.kill_9();
    let mut delivered = Vec::new();
    for client in clients {
        delivered.extend(client.await.unwrap());
    }

    let db = site.db().await;
    assert_consistent(&db).await;
    let rows = sqlx::query("SELECT end_user, COUNT(*) AS n, MAX(image_count) AS images FROM usage GROUP BY end_user")
        .fetch_all(&db)
        .await
        .unwrap();
    let recorded: HashMap<String, (i64, i64)> =
        rows.iter().map(|r| (r.get("end_user"), (r.get("n"), r.get("images")))).collect();
    for (user, n) in &delivered {
        assert_eq!(recorded.get(user), Some(&(1, *n as i64)), "{user} was answered with a 200");
    }
    assert!(recorded.values().all(|&(rows, _)| rows == 1), "a request recorded twice");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM usage WHERE outcome <> 'ok'").await, 0);
    let live = live_blob_keys(&db).await;
    assert!(live.is_subset(&site.blob_files()), "a committed hosted image without its blob");

    for key in site.blob_files() {
        site.age(&key);
    }
    let _node = site.start();
    eventually("the blob folder holds exactly the recorded hosted images", || async { site.blob_files() == live })
        .await;
    assert_consistent(&db).await;
}

/// SIGTERM to the real binary: readiness fails and new requests get a 503 envelope while the
/// request in flight is still running; that request is then delivered and recorded, and the
/// process exits 0.
#[tokio::test]
async fn sigterm_drains_the_real_binary() {
    let provider = Gated::start(false).await;
    let site = Site::new(&provider);
    let client = reqwest::Client::new();
    let mut node = site.start();
    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), node.url("/v1/images/generations"));
        async move { client.post(url).json(&json!({"model": "relay", "prompt": "p", "user": "kept"})).send().await }
    });
    provider.arrivals(1).await;
    node.sigterm();
    eventually("readiness fails while draining", || async {
        client.get(node.url("/readyz")).send().await.unwrap().status() == 503
    })
    .await;
    let refused = generate(&client, &node, None, json!({"model": "relay", "prompt": "p"})).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_error(refused, 503, None, "shutting_down").await;

    provider.set_open(true);
    json_body(in_flight.await.unwrap().unwrap(), 200).await;
    let status = node.child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let db = site.db().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM usage WHERE end_user = 'kept' AND outcome = 'ok'").await, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM usage").await, 1, "the refused request reached no model");
    assert_consistent(&db).await;
}

/// The orphan sweep on its own, on each blob store: blobs with no live row older than the cutoff
/// go, those with a row or written after it stay, and keys that are not Easel's are left alone.
async fn sweep_orphans(db: &Db, blobs: &easel_server::storage::blobs::Blobs) {
    use bytes::Bytes;
    use easel_server::storage::blobs::Blobs;
    use easel_server::storage::sweep;

    let day = easel_server::storage::now();
    let (kept, orphan) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let (kept_key, orphan_key) = (Blobs::key_for(&kept, "png", day), Blobs::key_for(&orphan, "png", day));
    let image = easel_server::storage::records::ImageRecord {
        id: kept,
        width: 1,
        height: 1,
        format: "png".into(),
        bytes: 3,
        blob_key: Some(kept_key.clone()),
        expires_at: Some(day + 3600),
    };
    let usage = easel_server::storage::records::UsageRecord {
        id: uuid::Uuid::now_v7(),
        key_id: None,
        model: "relay".into(),
        backend: "upstream".into(),
        operation: "generate".into(),
        outcome: "ok".into(),
        status: 200,
        size: Some("1x1".into()),
        quality: None,
        output_format: Some("png".into()),
        usage: easel_core::usage::Usage::default(),
        latency_ms: 1,
        end_user: None,
        created_at: day,
        once: false,
    };
    easel_server::storage::records::record(db, &usage, &[image]).await.unwrap();
    for key in [&kept_key, &orphan_key, &"images/notes.txt".to_string()] {
        blobs.put(key, Bytes::from_static(b"png")).await.unwrap();
    }
    let now = easel_server::storage::now();
    assert_eq!(sweep::sweep_orphans(db, blobs, now - 3600).await.unwrap(), 0, "all within the grace period");
    assert_eq!(sweep::sweep_orphans(db, blobs, now + 5).await.unwrap(), 1);
    assert_eq!(blobs.get(&orphan_key).await.unwrap(), None);
    assert!(blobs.get(&kept_key).await.unwrap().is_some());
    assert!(blobs.get("images/notes.txt").await.unwrap().is_some(), "not an Easel key");
}

mod sweep_orphans {
    #[tokio::test]
    async fn sqlite_and_local() {
        let (db, blobs) = (crate::storage::services::sqlite().await, crate::storage::services::local_blobs());
        super::sweep_orphans(&db.db, &blobs.blobs).await;
    }

    #[tokio::test]
    async fn postgres_and_s3() {
        let db = crate::storage::services::postgres().await;
        let blobs = crate::storage::services::s3_blobs();
        let (Some(db), Some(blobs)) = (db, blobs) else { return };
        super::sweep_orphans(&db.db, &blobs.blobs).await;
    }
}
