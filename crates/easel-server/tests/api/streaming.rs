//! `stream=true`: SSE as the OpenAI SDKs parse it.

use std::time::Duration;

use futures::StreamExt;
use reqwest::multipart::Form;
use serde_json::{Value, json};
use sqlx::Row;

use crate::backend::{TestBackend, capabilities};
use crate::helpers::{file_part, png, spawn_app, spawn_app_with};

/// (event name, JSON data) pairs and the comment lines of an SSE body.
fn parse_sse(text: &str) -> (Vec<(String, Value)>, Vec<String>) {
    let mut events = Vec::new();
    let mut comments = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                comments.push(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("event:") {
                name = Some(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("data:") {
                data = Some(serde_json::from_str::<Value>(rest.trim()).expect("every data line is JSON"));
            }
        }
        if let Some(data) = data {
            events.push((name.expect("every event is named"), data));
        }
    }
    (events, comments)
}

async fn sse(response: reqwest::Response) -> (Vec<(String, Value)>, Vec<String>) {
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    parse_sse(&response.text().await.unwrap())
}

#[tokio::test]
async fn generation_stream_sends_partials_then_completed() {
    let app = spawn_app().await;
    let response = app
        .generate(json!({"model": "test-image", "prompt": "p", "stream": true, "partial_images": 2, "size": "32x32", "output_format": "webp"}))
        .await;
    let (events, _) = sse(response).await;
    let kinds: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        kinds,
        ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"]
    );
    for (index, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "the JSON type matches the event name");
        for field in ["b64_json", "created_at", "size", "quality", "background", "output_format"] {
            assert!(!data[field].is_null(), "{field} missing in {data}");
        }
        if index < 2 {
            assert_eq!(data["partial_image_index"], index);
        }
    }
    let completed = &events[2].1;
    assert_eq!(completed["size"], "32x32");
    assert_eq!(completed["output_format"], "webp");
    let usage = &completed["usage"];
    assert!(usage["input_tokens_details"]["text_tokens"].is_u64());
    assert!(usage.get("output_tokens_details").is_none());
    assert!(usage["output_tokens"].as_u64().unwrap() >= 200, "each partial image costs 100 output tokens");
}

#[tokio::test]
async fn edit_stream_uses_edit_event_types_and_n_completions() {
    let app = spawn_app().await;
    let form = Form::new()
        .text("model", "test-image")
        .text("prompt", "p")
        .text("stream", "true")
        .text("n", "2")
        .text("partial_images", "1")
        .part("image", file_part(png(16, 16, [1, 2, 3]), "a.png"));
    let (events, _) = sse(app.post_form("/v1/images/edits", form).await).await;
    let kinds: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(kinds, ["image_edit.partial_image", "image_edit.completed", "image_edit.completed"]);
    // Each completed event carries its share of the job's usage: summed, they are the job's,
    // as recorded in the ledger, counted once.
    let sum = |field: &str| -> u64 { events[1..].iter().map(|(_, data)| data["usage"][field].as_u64().unwrap()).sum() };
    let row = sqlx::query("SELECT total_tokens, output_tokens FROM usage").fetch_one(&app.app_state.db).await.unwrap();
    use sqlx::Row;
    assert_eq!(sum("total_tokens"), row.get::<i64, _>("total_tokens") as u64);
    assert_eq!(sum("output_tokens"), row.get::<i64, _>("output_tokens") as u64);
}

#[tokio::test]
async fn keep_alives_while_the_model_works() {
    let mut slow = TestBackend::new(capabilities());
    slow.delay = Duration::from_millis(2500);
    let app = spawn_app_with(|c| c.server.keep_alive_secs = 1, vec![("slow".into(), slow)]).await;
    let (events, comments) = sse(app.generate(json!({"model": "slow", "prompt": "p", "stream": true})).await).await;
    assert!(comments.iter().any(|c| c == "keep-alive"), "{comments:?}");
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn an_error_after_the_stream_started_is_an_error_event() {
    let app = spawn_app().await;
    *app.backend("test-image").fail_with.lock().unwrap() =
        Some(easel_core::error::BackendError::Timeout { message: "upstream too slow".into() });
    let (events, _) = sse(app.generate(json!({"model": "test-image", "prompt": "p", "stream": true})).await).await;
    assert_eq!(events.len(), 1);
    let (name, data) = &events[0];
    assert_eq!(name, "error");
    assert_eq!(data["error"]["code"], "upstream_timeout");
    assert_eq!(data["error"]["message"], "upstream too slow");
}

#[tokio::test]
async fn errors_before_the_stream_are_plain_json() {
    let app = spawn_app().await;
    let response = app.generate(json!({"model": "test-image", "stream": true})).await;
    crate::helpers::assert_error(response, 400, Some("prompt"), "missing_required_parameter").await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_work() {
    let mut slow = TestBackend::new(capabilities());
    slow.delay = Duration::from_secs(30);
    let app = spawn_app_with(|c| c.server.keep_alive_secs = 1, vec![("slow".into(), slow)]).await;
    let response = app.generate(json!({"model": "slow", "prompt": "p", "stream": true})).await;
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap();
    assert!(first.is_some());
    drop(body);
    assert_eq!(wait_for_outcome(&app).await, "request_cancelled");
}

#[tokio::test]
async fn non_streaming_clients_that_leave_cancel_too() {
    let mut slow = TestBackend::new(capabilities());
    slow.delay = Duration::from_secs(30);
    let app = spawn_app_with(|_| {}, vec![("slow".into(), slow)]).await;
    let request =
        app.client.post(app.url("/v1/images/generations")).json(&json!({"model": "slow", "prompt": "p"})).send();
    assert!(tokio::time::timeout(Duration::from_millis(500), request).await.is_err(), "still running");
    assert_eq!(wait_for_outcome(&app).await, "request_cancelled");
}

/// The outcome of the first usage row, once the job has recorded it (at most 5 s).
async fn wait_for_outcome(app: &crate::helpers::TestApp) -> String {
    for _ in 0..50 {
        let row = sqlx::query("SELECT outcome FROM usage").fetch_optional(&app.app_state.db).await.unwrap();
        if let Some(row) = row {
            return row.get("outcome");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the job recorded no outcome within 5 s");
}

#[tokio::test]
async fn a_stream_short_of_images_after_one_retry_ends_with_an_error_event() {
    let app = spawn_app().await;
    app.backend("test-image").short_by.lock().unwrap().extend([1, 1]);
    let (events, _) =
        sse(app.generate(json!({"model": "test-image", "prompt": "p", "n": 2, "stream": true})).await).await;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["error"], "no completed event for a short answer");
    assert_eq!(events[0].1["error"]["code"], "upstream_error");
}
