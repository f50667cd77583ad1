//! Many nodes, for real: two API nodes (each an `easel serve` process) sharing one PostgreSQL
//! database and one Garage bucket, and a worker node (another `easel serve`, with a tiny local
//! model) that both reach as an upstream provider of `kind = "easel"`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{ServeProcess, assert_error, early_in_a_minute, json_body};
use crate::storage::services;

/// The environment every node gets: the shared URL signing key, and the worker's (unused) key.
const ENV: &[(&str, &str)] = &[
    ("EASEL_URL_KEY", "a-url-signing-key-shared-by-every-api-node-0123456789"),
    ("EASEL_WORKER_KEY", "sk-worker-any"),
];

/// One `easel serve` process with [`ENV`].
fn node(config: &Path) -> ServeProcess {
    ServeProcess::start(config, ENV)
}

fn worker_config(dir: &Path) -> PathBuf {
    let path = dir.join("worker.toml");
    let config = format!(
        r#"
[server]
bind = "127.0.0.1:0"
[storage]
data_dir = {data:?}
[[models]]
id = "turbo"
backend = "local"
family = "sd-turbo"
path = {model:?}
min_edge = 32
max_edge = 512
default_size = "64x64"
steps = 2
"#,
        data = dir.join("worker-data"),
        model = crate::local::model_dir(),
    );
    std::fs::write(&path, config).unwrap();
    path
}

fn api_config(dir: &Path, name: &str, database: &str, blobs: &str, worker: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let config = format!(
        r#"
[server]
bind = "127.0.0.1:0"
shutdown_grace_secs = 30
[storage]
data_dir = {data:?}
database = {database:?}
blobs = {blobs:?}
[auth]
url_signing_key_env = "EASEL_URL_KEY"
[[providers]]
id = "worker"
kind = "easel"
base_url = "{worker}/v1"
api_key_env = "EASEL_WORKER_KEY"
retries = 1
backoff_base_secs = 0.05
timeout_secs = 60.0
[[models]]
id = "turbo"
backend = "upstream"
targets = [{{ provider = "worker", model = "turbo" }}]
sizes = {{ min_edge = 32, max_edge = 512, multiple_of = 8 }}
default_size = "64x64"
"#,
        data = dir.join(format!("{name}-data")),
    );
    std::fs::write(&path, config).unwrap();
    path
}

async fn post(client: &reqwest::Client, node: &ServeProcess, key: &str, body: Value) -> reqwest::Response {
    client.post(node.url("/v1/images/generations")).bearer_auth(key).json(&body).send().await.unwrap()
}

fn key_id(key: &str) -> String {
    key.trim().trim_start_matches("sk-easel-").split('-').next().unwrap().to_string()
}

async fn usage_rows(db: &easel_server::storage::db::Db, key: &str, outcome: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM usage WHERE key_id = $1 AND outcome = $2")
        .bind(key_id(key))
        .bind(outcome)
        .fetch_one(db)
        .await
        .unwrap()
        .get("n")
}

#[tokio::test]
async fn two_api_nodes_and_a_worker_share_postgres_and_garage() {
    let Some(pg) = services::postgres().await else { return };
    let Some(s3) = services::s3_blobs() else { return };
    let temp = tempfile::Builder::new().prefix("easel-cluster").tempdir().unwrap();
    // EASEL_KEEP_CLUSTER=1 keeps the nodes' configs and logs for a failing test's reader.
    let (_temp, dir) = match std::env::var("EASEL_KEEP_CLUSTER") {
        Ok(_) => (None, temp.keep()),
        Err(_) => {
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let dir = dir.as_path();
    eprintln!("node configs and logs: {}", dir.display());
    let client = reqwest::Client::new();

    let worker = node(&worker_config(dir));
    let a = node(&api_config(dir, "a", &pg.url, &s3.spec, &worker.address));
    let b_config = api_config(dir, "b", &pg.url, &s3.spec, &worker.address);
    let mut b = node(&b_config);

    // A key made through node A's database is honoured on B at once.
    // One request a minute: a loaded machine takes seconds per request, and a higher rate would
    // refill the bucket before the test reaches the limit.
    let key = a.cli(&["keys", "create", "--name", "tenant", "--rpm", "1"]).trim().to_string();
    let body = json!({"model": "turbo", "prompt": "a lighthouse", "seed": 3, "response_format": "url"});
    early_in_a_minute(Duration::from_secs(30)).await;
    let made = json_body(post(&client, &b, &key, body.clone()).await, 200).await;

    // A hosted URL minted on B downloads from A: the bytes are in Garage, the key is shared.
    let url = made["data"][0]["url"].as_str().unwrap().to_string();
    let on_a = url.replacen(&b.address, &a.address, 1);
    assert_ne!(url, on_a);
    let image = client.get(&on_a).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert!(image.bytes().await.unwrap().starts_with(b"\x89PNG"));

    // The rate limit holds across both nodes: B's request used the minute's one on A too.
    assert_error(
        post(&client, &a, &key, json!({"model": "turbo", "prompt": "p"})).await,
        429,
        None,
        "rate_limit_exceeded",
    )
    .await;

    // A node stopped mid-request finishes that request, exits 0, and serves again on restart.
    let key2 = a.cli(&["keys", "create", "--name", "tenant-2"]).trim().to_string();
    let slow = json!({"model": "turbo", "prompt": "slow", "size": "128x128", "steps": 6});
    let in_flight = tokio::spawn({
        let (client, url, key2, slow) = (client.clone(), b.url("/v1/images/generations"), key2.clone(), slow.clone());
        async move { client.post(url).bearer_auth(key2).json(&slow).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || b.terminate()).await.unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    json_body(in_flight.await.unwrap(), 200).await;
    b = node(&b_config);
    assert_eq!(client.get(on_a.replacen(&a.address, &b.address, 1)).send().await.unwrap().status(), 200);
    json_body(post(&client, &b, &key2, json!({"model": "turbo", "prompt": "again"})).await, 200).await;

    // Revoked on A: refused on B within a second.
    a.cli(&["keys", "revoke", &key_id(&key)]);
    let revoked = Instant::now();
    loop {
        let status = post(&client, &b, &key, json!({"model": "turbo", "prompt": "p"})).await.status();
        if status == 401 {
            break;
        }
        assert!(revoked.elapsed() < Duration::from_secs(1), "still {status} a second after revoking");
    }

    // The worker dies mid-request: a clean 502/504 envelope, and one usage row for it.
    let dying = tokio::spawn({
        let (client, url, key2) = (client.clone(), a.url("/v1/images/generations"), key2.clone());
        async move { client.post(url).bearer_auth(key2).json(&slow).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(worker);
    let response = dying.await.unwrap();
    let status = response.status().as_u16();
    assert!(status == 502 || status == 504, "status {status}");
    let body = json_body(response, status).await;
    assert!(body["error"]["code"].as_str().unwrap().starts_with("upstream_"), "{body}");

    // Nothing lost or doubled: every request that reached a model left exactly one row.
    assert_eq!(usage_rows(&pg.db, &key, "ok").await, 1);
    assert_eq!(usage_rows(&pg.db, &key2, "ok").await, 2);
    let failed: i64 = sqlx::query("SELECT COUNT(*) AS n FROM usage WHERE key_id = $1 AND outcome LIKE 'upstream_%'")
        .bind(key_id(&key2))
        .fetch_one(&pg.db)
        .await
        .unwrap()
        .get("n");
    assert_eq!(failed, 1);
    drop(a);
}
