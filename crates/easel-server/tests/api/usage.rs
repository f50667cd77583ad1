//! Every request leaves a usage row, and image rows in the same transaction.

use reqwest::multipart::Form;
use serde_json::json;
use sqlx::Row;

use easel_server::storage::keys::KeySettings;

use crate::helpers::{file_part, json_body, png, spawn_app};

#[tokio::test]
async fn usage_and_images_are_recorded_with_the_response_figures() {
    let app = spawn_app().await;
    let key = app.app_state.keys.create(KeySettings::named("billing")).await.unwrap();
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .bearer_auth(&key.plaintext)
        .json(&json!({"model": "test-image", "prompt": "a red fox in snow", "n": 3, "size": "64x64", "quality": "low", "user": "end-user-7"}))
        .send()
        .await
        .unwrap();
    let body = json_body(response, 200).await;
    let row = sqlx::query("SELECT * FROM usage").fetch_one(&app.app_state.db).await.unwrap();
    assert_eq!(row.get::<Option<String>, _>("key_id").as_deref(), Some(key.record.id.as_str()));
    assert_eq!(row.get::<String, _>("model"), "test-image");
    assert_eq!(row.get::<String, _>("backend"), "test");
    assert_eq!(row.get::<String, _>("operation"), "generate");
    assert_eq!(row.get::<String, _>("outcome"), "ok");
    assert_eq!(row.get::<i32, _>("image_count"), 3);
    assert_eq!(row.get::<String, _>("size"), "64x64");
    assert_eq!(row.get::<String, _>("quality"), "low");
    assert_eq!(row.get::<Option<String>, _>("end_user").as_deref(), Some("end-user-7"));
    assert_eq!(row.get::<i64, _>("total_tokens") as u64, body["usage"]["total_tokens"].as_u64().unwrap());
    assert_eq!(
        row.get::<i64, _>("input_text_tokens") as u64,
        body["usage"]["input_tokens_details"]["text_tokens"].as_u64().unwrap()
    );
    assert_eq!(row.get::<i64, _>("output_tokens") as u64, body["usage"]["output_tokens"].as_u64().unwrap());
    assert!(row.get::<i64, _>("latency_ms") >= 0);
    let usage_id: String = row.get("id");
    let images = sqlx::query("SELECT * FROM images WHERE usage_id = $1")
        .bind(&usage_id)
        .fetch_all(&app.app_state.db)
        .await
        .unwrap();
    assert_eq!(images.len(), 3);
    assert!(images.iter().all(|i| i.get::<Option<String>, _>("blob_key").is_none() && i.get::<i32, _>("width") == 64));
}

#[tokio::test]
async fn edits_count_input_image_tokens_and_failures_are_recorded() {
    let app = spawn_app().await;
    let form = Form::new()
        .text("model", "test-image")
        .text("prompt", "p")
        .part("image", file_part(png(512, 512, [1, 1, 1]), "a.png"));
    let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    assert_eq!(body["usage"]["input_tokens_details"]["image_tokens"], 194);

    app.generate(json!({"model": "test-image", "prompt": "p", "size": "7x7"})).await;
    let row = sqlx::query("SELECT outcome, status, image_count FROM usage WHERE outcome <> 'ok'")
        .fetch_one(&app.app_state.db)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("outcome"), "invalid_value");
    assert_eq!(row.get::<i32, _>("status"), 400);
    assert_eq!(row.get::<i32, _>("image_count"), 0);
}
