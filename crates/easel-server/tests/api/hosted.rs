//! `response_format=url`: signed, expiring links served by Easel, and the sweep.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{assert_error, json_body, spawn_app, spawn_app_with, test_models};

#[tokio::test]
async fn hosted_links_work_until_tampered_or_expired() {
    // Three seconds of validity leave room for a busy CI machine between the response and the fetches.
    let app = spawn_app_with(|c| c.storage.url_ttl_secs = 3, test_models()).await;
    let body = json_body(
        app.generate(json!({"model": "test-image", "prompt": "p", "response_format": "url", "output_format": "jpeg"}))
            .await,
        200,
    )
    .await;
    let url = body["data"][0]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&app.address), "{url}");
    let response = app.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert!(response.bytes().await.unwrap().starts_with(&[0xFF, 0xD8]));

    let tampered = url.replace("signature=", "signature=00");
    assert_error(app.client.get(&tampered).send().await.unwrap(), 403, None, "invalid_signature").await;
    let unsigned = url.split('?').next().unwrap();
    assert_error(app.client.get(unsigned).send().await.unwrap(), 403, None, "invalid_signature").await;
    let other_expiry = url.replace("expires=", "expires=9");
    assert_error(app.client.get(&other_expiry).send().await.unwrap(), 403, None, "invalid_signature").await;

    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_error(app.client.get(&url).send().await.unwrap(), 403, None, "url_expired").await;
}

#[tokio::test]
async fn the_sweep_deletes_expired_blobs() {
    let app = spawn_app_with(|c| c.storage.url_ttl_secs = 1, test_models()).await;
    let body =
        json_body(app.generate(json!({"model": "test-image", "prompt": "p", "response_format": "url"})).await, 200)
            .await;
    let url = body["data"][0]["url"].as_str().unwrap();
    let name = url.split("/files/").nth(1).unwrap().split('?').next().unwrap().to_string();
    let blobs_dir = app.dir.path().join("blobs");
    let count = || walk(&blobs_dir).into_iter().filter(|p| p.to_string_lossy().contains("/images/")).count();
    assert_eq!(count(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let swept = easel_server::storage::sweep::sweep_once(&app.app_state.db, &app.app_state.blobs).await.unwrap();
    assert_eq!(swept, 1);
    assert_eq!(count(), 0);
    // A freshly signed link to the swept image is a 404.
    let expires = easel_server::storage::now() + 60;
    let signature = app.app_state.signer.sign(&name, expires);
    let fresh = app.url(&format!("/v1/images/files/{name}?expires={expires}&signature={signature}"));
    assert_error(app.client.get(&fresh).send().await.unwrap(), 404, None, "image_not_found").await;
}

#[tokio::test]
async fn default_response_format_is_configurable() {
    let app =
        spawn_app_with(|c| c.server.default_response_format = easel_core::types::ResponseFormat::Url, test_models())
            .await;
    let body = json_body(app.generate(json!({"model": "test-image", "prompt": "p"})).await, 200).await;
    assert!(body["data"][0]["url"].is_string());
    let app = spawn_app().await;
    let body = json_body(app.generate(json!({"model": "test-image", "prompt": "p"})).await, 200).await;
    assert!(body["data"][0]["b64_json"].is_string() && body["data"][0].get("url").is_none());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
        }
    }
    out
}
