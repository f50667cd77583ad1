//! Faults of the engines under Easel: a database that goes away answers 503
//! `database_unavailable` (never a hang or a panic) and Easel recovers on its own when it is back;
//! an S3 store that refuses a write fails that request cleanly, with nothing recorded as
//! delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Row;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{assert_error, json_body, spawn_app_with, test_models};
use crate::storage::services;

/// A TCP proxy in front of PostgreSQL that can be cut, as a database host that went away: while
/// down it has closed every connection it carried and its port refuses new ones.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (down, changed) = (Arc::new(AtomicBool::new(false)), Arc::new(tokio::sync::Notify::new()));
        let (down2, changed2) = (Arc::clone(&down), Arc::clone(&changed));
        tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let Some(open) = &listener else {
                    changed2.notified().await;
                    if !down2.load(Ordering::SeqCst) {
                        listener = Some(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
                    }
                    continue;
                };
                tokio::select! {
                    accepted = open.accept() => {
                        let Ok((mut client, _)) = accepted else { return };
                        let (target, changed) = (target.clone(), Arc::clone(&changed2));
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(&target).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                () = changed.notified() => {}
                            }
                        });
                    }
                    () = changed2.notified() => {
                        if down2.load(Ordering::SeqCst) {
                            listener = None;
                        }
                    }
                }
            }
        });
        Self { port, down, changed }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[tokio::test]
async fn a_database_that_goes_away_is_a_503_and_comes_back_by_itself() {
    let Some(pg) = services::postgres().await else { return };
    let url = url::Url::parse(&pg.url).unwrap();
    let proxy = Proxy::start(format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())).await;
    let mut through = url.clone();
    through.set_port(Some(proxy.port)).unwrap();
    let database = through.to_string();
    let app = spawn_app_with(move |c| c.storage.database = Some(database), test_models()).await;
    json_body(app.generate(json!({"model": "test-image", "prompt": "p"})).await, 200).await;

    proxy.set_down(true);
    let started = Instant::now();
    let response = app.generate(json!({"model": "test-image", "prompt": "p"})).await;
    let retry = response.headers()["x-should-retry"].to_str().unwrap().to_string();
    assert_eq!(retry, "true", "{:?}", response.text().await);
    let response = app.generate(json!({"model": "test-image", "prompt": "p"})).await;
    assert_error(response, 503, None, "database_unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(15), "answered after {:?}", started.elapsed());
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 503);

    proxy.set_down(false);
    let back = Instant::now();
    loop {
        let response = app.generate(json!({"model": "test-image", "prompt": "p"})).await;
        if response.status() == 200 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(30), "not back after 30 s: {}", response.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_blob_store_that_refuses_a_write_fails_the_request_and_records_no_delivery() {
    let Some(_) = services::service("EASEL_TEST_S3_URL", "an S3 bucket") else { return };
    // The credentials are valid, the bucket does not exist: every write is refused.
    let app = spawn_app_with(|c| c.storage.blobs = Some("s3://no-such-bucket-for-easel".into()), test_models()).await;
    let response = app.generate(json!({"model": "test-image", "prompt": "p", "response_format": "url"})).await;
    let status = response.status().as_u16();
    assert!(status >= 500, "status {status}");
    let body = json_body(response, status).await;
    assert!(!body["error"]["message"].as_str().unwrap().contains("no-such-bucket"), "no storage detail leaks: {body}");
    let images: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM images").fetch_one(&app.app_state.db).await.unwrap().get("n");
    let delivered: i64 = sqlx::query("SELECT COUNT(*) AS n FROM usage WHERE outcome = 'ok'")
        .fetch_one(&app.app_state.db)
        .await
        .unwrap()
        .get("n");
    assert_eq!((images, delivered), (0, 0));
    // Inline answers need no store and still work.
    json_body(app.generate(json!({"model": "test-image", "prompt": "p"})).await, 200).await;
}
