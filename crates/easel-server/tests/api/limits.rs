//! Per-key limits and quotas over HTTP, the admin API, and `easel keys` / `easel usage`.

use std::process::Command;
use std::time::Duration;

use easel_core::error::BackendError;
use easel_server::storage::keys::KeySettings;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, early_in_a_minute, json_body, spawn_app};

async fn key(app: &TestApp, settings: KeySettings) -> String {
    app.app_state.keys.create(settings).await.unwrap().plaintext
}

async fn generate(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url("/v1/images/generations")).bearer_auth(key).json(&body).send().await.unwrap()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).unwrap_or_else(|| panic!("no {name} in {headers:?}")).to_str().unwrap()
}

#[tokio::test]
async fn requests_per_minute_answer_429_with_openais_headers() {
    let app = spawn_app().await;
    let key = key(&app, KeySettings { rpm: Some(2), ..KeySettings::named("rpm") }).await;
    let body = json!({"model": "test-image", "prompt": "p"});
    early_in_a_minute(std::time::Duration::from_secs(20)).await;
    let first = generate(&app, &key, body.clone()).await;
    assert_eq!(
        (
            header(first.headers(), "x-ratelimit-limit-requests"),
            header(first.headers(), "x-ratelimit-remaining-requests")
        ),
        ("2", "1")
    );
    assert!(header(first.headers(), "x-ratelimit-reset-requests").ends_with('s'));
    json_body(first, 200).await;
    // A refused request (bad input) still counts: it was a request.
    assert_error(
        generate(&app, &key, json!({"model": "test-image"})).await,
        400,
        Some("prompt"),
        "missing_required_parameter",
    )
    .await;
    let third = generate(&app, &key, body).await;
    let retry_after: u64 = header(third.headers(), "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(header(third.headers(), "x-ratelimit-remaining-requests"), "0");
    let message = assert_error(third, 429, None, "rate_limit_exceeded").await;
    assert!(message.contains("2 requests/minute") && message.contains("resets in"), "{message}");
    let metrics = app.client.get(app.url("/metrics")).bearer_auth(&key).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("easel_limit_rejections_total{limit=\"requests/minute\"}"), "{metrics}");
}

#[tokio::test]
async fn image_quotas_charge_what_was_delivered_and_release_failures() {
    let app = spawn_app().await;
    let key = key(&app, KeySettings { daily_images: Some(3), ..KeySettings::named("quota") }).await;
    let ok = generate(&app, &key, json!({"model": "test-image", "prompt": "p", "n": 2})).await;
    assert_eq!(header(ok.headers(), "x-ratelimit-remaining-images"), "1");
    json_body(ok, 200).await;
    let over = generate(&app, &key, json!({"model": "test-image", "prompt": "p", "n": 2})).await;
    assert_eq!(over.headers()["x-ratelimit-limit-images"], "3");
    let message = assert_error(over, 429, None, "quota_exceeded").await;
    assert!(message.contains("3 images/day") && message.contains("1 left, 2 asked for"), "{message}");
    // A failed generation charges nothing: the last image is still there afterwards.
    *app.backend("test-image").fail_with.lock().unwrap() =
        Some(BackendError::Upstream { status: Some(500), message: "x".into() });
    assert_error(
        generate(&app, &key, json!({"model": "test-image", "prompt": "p"})).await,
        502,
        None,
        "upstream_error",
    )
    .await;
    *app.backend("test-image").fail_with.lock().unwrap() = None;
    json_body(generate(&app, &key, json!({"model": "test-image", "prompt": "p"})).await, 200).await;
    assert_error(
        generate(&app, &key, json!({"model": "test-image", "prompt": "p"})).await,
        429,
        None,
        "quota_exceeded",
    )
    .await;
}

#[tokio::test]
async fn concurrent_requests_never_take_the_last_image_twice() {
    let app = spawn_app().await;
    let key = key(&app, KeySettings { monthly_images: Some(4), ..KeySettings::named("race") }).await;
    let requests = (0..12).map(|_| generate(&app, &key, json!({"model": "test-image", "prompt": "p"})));
    let statuses: Vec<u16> = futures::future::join_all(requests).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 4, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 8, "{statuses:?}");
}

#[tokio::test]
async fn token_quotas_count_tokens_and_expired_keys_are_refused() {
    let app = spawn_app().await;
    let tokens = key(&app, KeySettings { monthly_tokens: Some(1000), ..KeySettings::named("tokens") }).await;
    // One 64x64 image costs far fewer tokens than a 1024x1024 one.
    let small =
        generate(&app, &tokens, json!({"model": "test-image", "prompt": "p", "size": "64x64", "quality": "low"})).await;
    assert!(header(small.headers(), "x-ratelimit-limit-tokens") == "1000");
    json_body(small, 200).await;
    let big =
        generate(&app, &tokens, json!({"model": "test-image", "prompt": "p", "size": "1024x1024", "quality": "high"}))
            .await;
    assert_error(big, 429, None, "quota_exceeded").await;

    let expired = key(&app, KeySettings { expires_at: Some(1_000_000_000), ..KeySettings::named("old") }).await;
    let message = assert_error(
        generate(&app, &expired, json!({"model": "test-image", "prompt": "p"})).await,
        401,
        None,
        "invalid_api_key",
    )
    .await;
    assert!(message.contains("expired"), "{message}");
}

async fn admin(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_admin_api_manages_keys_and_reports_usage() {
    use reqwest::Method;
    let app = spawn_app().await;
    let root = key(&app, KeySettings { admin: Some(true), ..KeySettings::named("root") }).await;
    let plain = key(&app, KeySettings::named("plain")).await;
    assert_error(admin(&app, &plain, Method::GET, "/admin/v1/keys", None).await, 403, None, "admin_key_required").await;
    assert_error(admin(&app, &plain, Method::GET, "/admin/v1/usage", None).await, 403, None, "admin_key_required")
        .await;

    let made = admin(
        &app,
        &root,
        Method::POST,
        "/admin/v1/keys",
        Some(json!({"name": "team-a", "rpm": 5, "daily_images": 2, "models": ["test-image"]})),
    )
    .await;
    let made = json_body(made, 201).await;
    let (id, secret) = (made["id"].as_str().unwrap().to_string(), made["key"].as_str().unwrap().to_string());
    assert_eq!(
        (made["rpm"].as_u64(), made["daily_images"].as_u64(), made["admin"].as_bool()),
        (Some(5), Some(2), Some(false))
    );
    assert_error(
        admin(&app, &root, Method::POST, "/admin/v1/keys", Some(json!({"name": "x", "rpm": -1}))).await,
        400,
        Some("rpm"),
        "invalid_type",
    )
    .await;
    assert_error(
        admin(&app, &root, Method::POST, "/admin/v1/keys", Some(json!({"name": "x", "rpmm": 1}))).await,
        400,
        Some("rpmm"),
        "unknown_parameter",
    )
    .await;
    assert_error(
        admin(&app, &root, Method::POST, "/admin/v1/keys", Some(json!({"rpm": 1}))).await,
        400,
        Some("name"),
        "missing_required_parameter",
    )
    .await;

    // The new key works, within its models and limits.
    json_body(generate(&app, &secret, json!({"model": "test-image", "prompt": "p", "n": 2})).await, 200).await;
    assert_error(
        generate(&app, &secret, json!({"model": "test-fixed", "prompt": "p"})).await,
        403,
        Some("model"),
        "model_not_allowed",
    )
    .await;
    let updated = admin(
        &app,
        &root,
        Method::PATCH,
        &format!("/admin/v1/keys/{id}"),
        Some(json!({"daily_images": 0, "models": []})),
    )
    .await;
    let updated = json_body(updated, 200).await;
    assert!(updated["daily_images"].is_null() && updated["models"].is_null(), "{updated}");
    json_body(generate(&app, &secret, json!({"model": "test-fixed", "prompt": "p"})).await, 200).await;

    let listed = json_body(admin(&app, &root, Method::GET, "/admin/v1/keys", None).await, 200).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);
    assert!(!listed.to_string().contains(&secret), "secrets are never listed");

    let usage =
        json_body(admin(&app, &root, Method::GET, &format!("/admin/v1/usage?by=model&key={id}"), None).await, 200)
            .await;
    let rows = usage["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{usage}");
    let image = rows.iter().find(|r| r["group"] == "test-image").unwrap();
    assert_eq!((image["requests"].as_i64(), image["images"].as_i64()), (Some(1), Some(2)));
    assert!(image["total_tokens"].as_i64().unwrap() > 0);
    let by_key = json_body(admin(&app, &root, Method::GET, "/admin/v1/usage?by=key", None).await, 200).await;
    let mine = by_key["data"].as_array().unwrap().iter().find(|r| r["group"] == id.as_str()).unwrap();
    // Two generations reached a model; the refused model never did, so the ledger has two.
    assert_eq!(mine["requests"].as_i64(), Some(2), "{by_key}");
    let by_day =
        json_body(admin(&app, &root, Method::GET, "/admin/v1/usage?by=day&since=2020-01-01", None).await, 200).await;
    assert_eq!(by_day["data"][0]["group"].as_str().unwrap().len(), 10, "{by_day}");
    assert_error(
        admin(&app, &root, Method::GET, "/admin/v1/usage?by=week", None).await,
        400,
        Some("by"),
        "invalid_value",
    )
    .await;
    assert_error(
        admin(&app, &root, Method::GET, "/admin/v1/usage?since=yesterday", None).await,
        400,
        Some("since"),
        "invalid_value",
    )
    .await;

    json_body(admin(&app, &root, Method::DELETE, &format!("/admin/v1/keys/{id}"), None).await, 200).await;
    assert_error(
        generate(&app, &secret, json!({"model": "test-image", "prompt": "p"})).await,
        401,
        None,
        "invalid_api_key",
    )
    .await;
    assert_error(
        admin(&app, &root, Method::DELETE, &format!("/admin/v1/keys/{id}"), None).await,
        404,
        None,
        "key_not_found",
    )
    .await;
}

#[tokio::test]
async fn the_keys_and_usage_clis_set_limits_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let easel = |args: &[&str]| {
        let output =
            Command::new(env!("CARGO_BIN_EXE_easel")).args(args).arg("--data-dir").arg(dir.path()).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, out) =
        easel(&["keys", "create", "--name", "bob", "--rpm", "60", "--daily-images", "100", "--expires", "2099-01-31"]);
    assert!(ok, "{out}");
    let id = out.trim_start_matches("sk-easel-").split('-').next().unwrap().to_string();
    let (ok, out) = easel(&["keys", "update", &id, "--rpm", "0", "--monthly-tokens", "5000"]);
    // The key's random id may itself contain "rpm" (it did: "arpm0euaqzhe").
    assert!(ok && out.contains("5000 tokens/month") && !out.replace(&id, "").contains("rpm"), "{out}");
    let (_, list) = easel(&["keys", "list"]);
    assert!(list.contains("100 images/day") && list.contains("expires 2099-01-31"), "{list}");
    let (ok, out) = easel(&["keys", "create", "--name", "x", "--rpm=-3"]);
    assert!(!ok && out.contains("--rpm"), "a bad limit names its flag: {out}");
    let (ok, out) = easel(&["keys", "update", "nosuchkey", "--rpm", "1"]);
    assert!(!ok && out.contains("no active key"), "{out}");

    // Usage from a server on the same data directory, then the report in each format.
    let app = crate::helpers::spawn_app_with(
        |c| c.storage.data_dir = dir.path().to_path_buf(),
        crate::helpers::test_models(),
    )
    .await;
    let secret = app.app_state.keys.create(KeySettings::named("carol")).await.unwrap().plaintext;
    json_body(generate(&app, &secret, json!({"model": "test-image", "prompt": "p", "n": 3})).await, 200).await;
    drop(app);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, table) = easel(&["usage", "--by", "model"]);
    assert!(ok && table.contains("test-image") && table.contains("IMAGES"), "{table}");
    let (_, json) = easel(&["usage", "--format", "json", "--since", "2020-01-01"]);
    let report: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(report["data"][0]["images"], 3, "{report}");
    let (_, csv) = easel(&["usage", "--format", "csv", "--by", "key"]);
    assert!(csv.starts_with("group,requests,failed,images,input_tokens,output_tokens,total_tokens"), "{csv}");
}
