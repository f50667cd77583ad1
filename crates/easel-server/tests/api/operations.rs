//! Running Easel: `/metrics`, request ids in logs, and draining on shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::backend::{TestBackend, capabilities};
use crate::helpers::{assert_error, json_body, listening_address, spawn_app, spawn_app_with, test_models};

#[tokio::test]
async fn metrics_count_requests_by_route_status_and_model() {
    let app = spawn_app().await;
    json_body(app.generate(json!({"model": "test-image", "prompt": "p", "n": 3, "size": "64x64"})).await, 200).await;
    assert_error(
        app.generate(json!({"model": "test-image", "prompt": "p", "n": 11})).await,
        400,
        Some("n"),
        "integer_above_max_value",
    )
    .await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let line = |needle: &[&str]| {
        text.lines()
            .find(|l| needle.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"))
    };
    let ok = line(&[
        "easel_http_requests_total{",
        "route=\"/v1/images/generations\"",
        "status=\"200\"",
        "model=\"test-image\"",
    ]);
    assert!(ok.ends_with(" 1"), "{ok}");
    line(&["easel_http_requests_total{", "status=\"400\"", "model=\"test-image\""]);
    assert!(line(&["easel_images_total{", "model=\"test-image\"", "operation=\"generate\""]).ends_with(" 3"));
    line(&["easel_image_requests_total{", "outcome=\"integer_above_max_value\""]);
    line(&["easel_http_request_duration_seconds_bucket{", "route=\"/v1/images/generations\""]);
    line(&["easel_image_request_duration_seconds_count{", "model=\"test-image\""]);
}

#[tokio::test]
async fn metrics_can_have_a_private_listener_of_their_own() {
    let app = spawn_app_with(
        |c| {
            c.metrics.bind = Some("127.0.0.1:0".into());
        },
        test_models(),
    )
    .await;
    json_body(app.generate(json!({"model": "test-image", "prompt": "p"})).await, 200).await;
    let private = app.metrics_address.expect("a metrics listener");
    let text = reqwest::get(format!("http://{private}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("easel_images_total{"), "{text}");
    assert_error(app.client.get(app.url("/metrics")).send().await.unwrap(), 404, None, "unknown_url").await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/v1/models")).send().await.unwrap();
    let made = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    let response = app.client.get(app.url("/v1/models")).header("x-request-id", "trace-42").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");
}

/// After SIGTERM new requests get a 503 envelope and readiness fails, while the request in
/// flight finishes and is delivered.
#[tokio::test]
async fn shutdown_drains_in_flight_work_and_refuses_new_work() {
    let mut slow = TestBackend::new(capabilities());
    slow.delay = Duration::from_millis(1500);
    let app = spawn_app_with(|_| {}, vec![("slow".into(), slow)]).await;
    let in_flight = {
        let (client, url) = (app.client.clone(), app.url("/v1/images/generations"));
        tokio::spawn(async move { client.post(url).json(&json!({"model": "slow", "prompt": "p"})).send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = app
        .client
        .post(app.url("/v1/images/generations"))
        .json(&json!({"model": "slow", "prompt": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_error(refused, 503, None, "shutting_down").await;
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let delivered = in_flight.await.unwrap().unwrap();
    let body = json_body(delivered, 200).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
}

/// The real binary: JSON log lines carry the request id, and SIGTERM ends the process with 0.
#[tokio::test]
async fn sigterm_exits_zero_and_json_logs_name_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("EASEL__SERVER__LOG_FORMAT", "json")
        .env("EASEL__SERVER__SHUTDOWN_GRACE_SECS", "5")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = listening_address(&mut lines, Duration::from_secs(30));
    let response = reqwest::Client::new()
        .get(format!("http://{address}/v1/models"))
        .header("x-request-id", "req-7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let logged = loop {
        let line = lines.next().expect("no access log line").unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        if entry["span"]["request_id"] == "req-7" {
            break entry;
        }
    };
    assert_eq!(logged["span"]["path"], "/v1/models", "{logged}");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

/// A handler that panics answers with the internal-error envelope, and the server goes on.
#[tokio::test]
async fn a_panicking_handler_is_a_500_envelope_and_the_server_goes_on() {
    let app = spawn_app().await;
    app.backend("test-image").panic_on_readiness.store(true, std::sync::atomic::Ordering::SeqCst);
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body = json_body(response, 500).await;
    assert_eq!(
        (body["error"]["type"].as_str(), &body["error"]["code"]),
        (Some("server_error"), &serde_json::Value::Null)
    );
    app.backend("test-image").panic_on_readiness.store(false, std::sync::atomic::Ordering::SeqCst);
    json_body(app.generate(json!({"model": "test-image", "prompt": "p"})).await, 200).await;
}
