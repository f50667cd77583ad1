//! DashScope's own routes (`/api/v1/services/aigc/...`, `/api/v1/tasks/...`) against the
//! documented example bodies: the sync multimodal call (Qwen-Image, Qwen-Image-Edit), the async
//! text2image and image2image submits, polling, cancelling, listing, and DashScope's error body
//! with its codes and statuses.

use std::time::{Duration, Instant};

use easel_core::error::BackendError;
use easel_server::storage::keys::KeySettings;
use serde_json::{Value, json};

use crate::helpers::{TestApp, data_url, png, spawn_app};

const MULTIMODAL: &str = "/api/v1/services/aigc/multimodal-generation/generation";
const TEXT2IMAGE: &str = "/api/v1/services/aigc/text2image/image-synthesis";
const IMAGE2IMAGE: &str = "/api/v1/services/aigc/image2image/image-synthesis";

async fn post(app: &TestApp, path: &str, body: &Value, asynchronous: bool) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).bearer_auth("sk-test").json(body);
    if asynchronous {
        request = request.header("X-DashScope-Async", "enable");
    }
    request.send().await.unwrap()
}

/// A DashScope body with this status; the `request_id` is the response's `x-request-id`.
async fn dash_body(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let request_id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "body: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "{body}");
    body
}

/// Asserts DashScope's error body (`code`, `message`, `request_id`, nothing else); returns the
/// message.
async fn assert_dash_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let body = dash_body(response, status).await;
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    body["message"].as_str().unwrap().to_string()
}

/// Polls the task until it ends.
async fn wait(app: &TestApp, task_id: &str) -> Value {
    let started = Instant::now();
    loop {
        let response = app.client.get(app.url(&format!("/api/v1/tasks/{task_id}"))).bearer_auth("sk-test");
        let body = dash_body(response.send().await.unwrap(), 200).await;
        let status = body["output"]["task_status"].as_str().unwrap().to_string();
        assert_eq!(body["output"]["task_id"], task_id);
        if !["PENDING", "RUNNING"].contains(&status.as_str()) {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the task did not end: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fetch_png(app: &TestApp, url: &str) -> image::DynamicImage {
    let response = app.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    image::load_from_memory(&response.bytes().await.unwrap()).unwrap()
}

/// The Qwen-Image example: text only, answered at once, every image in one choice's content.
#[tokio::test]
async fn multimodal_generation_answers_as_qwen_image() {
    let app = spawn_app().await;
    let body = json!({
        "model": "test-image",
        "input": {"messages": [{"role": "user", "content": [{"text": "a red kite over the sea"}]}]},
        "parameters": {"size": "96*64", "n": 2, "prompt_extend": true, "watermark": false, "seed": 3}
    });
    let answer = dash_body(post(&app, MULTIMODAL, &body, false).await, 200).await;
    let choices = answer["output"]["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1, "{answer}");
    assert_eq!(choices[0]["finish_reason"], "stop");
    assert_eq!(choices[0]["message"]["role"], "assistant");
    let content = choices[0]["message"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    for item in content {
        assert_eq!(item["type"], "image");
        let image = fetch_png(&app, item["image"].as_str().unwrap()).await;
        assert_eq!((image.width(), image.height()), (96, 64));
    }
    assert_eq!(answer["usage"], json!({"image_count": 2, "width": 96, "height": 64}));
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.prompt, "a red kite over the sea");
    assert_eq!(call.options.extensions.seed, Some(3));
}

/// The Qwen-Image-Edit example: an image part and the instruction make an edit.
#[tokio::test]
async fn multimodal_generation_edits_with_image_parts() {
    let app = spawn_app().await;
    let body = json!({
        "model": "test-image",
        "input": {"messages": [{"role": "user", "content": [
            {"image": data_url(&png(64, 48, [10, 20, 30]))},
            {"text": "Replace the words HEALTH INSURANCE"}
        ]}]},
        "parameters": {"n": 1}
    });
    let answer = dash_body(post(&app, MULTIMODAL, &body, false).await, 200).await;
    assert_eq!(answer["usage"]["image_count"], 1);
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.operation, easel_core::types::Operation::Edit);
    assert_eq!(call.images.len(), 1);
}

/// DashScope refuses the wrong mode on each route: async on the sync route, sync on the async
/// ones.
#[tokio::test]
async fn each_route_has_its_mode() {
    let app = spawn_app().await;
    let messages =
        json!({"model": "test-image", "input": {"messages": [{"role": "user", "content": [{"text": "x"}]}]}});
    let message = assert_dash_error(post(&app, MULTIMODAL, &messages, true).await, 403, "AccessDenied").await;
    assert!(message.contains("asynchronous"), "{message}");
    let prompt = json!({"model": "test-image", "input": {"prompt": "x"}});
    for path in [TEXT2IMAGE, IMAGE2IMAGE] {
        let message = assert_dash_error(post(&app, path, &prompt, false).await, 403, "AccessDenied").await;
        assert!(message.contains("synchronous"), "{message}");
    }
    assert_eq!(app.backend("test-image").calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Malformed bodies: DashScope's codes, and messages that name the DashScope field.
#[tokio::test]
async fn malformed_bodies_get_dashscope_codes() {
    let app = spawn_app().await;
    let text = |t: &str| json!([{"role": "user", "content": [{"text": t}]}]);
    assert_dash_error(
        post(&app, MULTIMODAL, &json!({"input": {"messages": text("x")}}), false).await,
        400,
        "BadRequest.EmptyModel",
    )
    .await;
    assert_dash_error(
        post(&app, TEXT2IMAGE, &json!({"model": "test-image"}), true).await,
        400,
        "BadRequest.EmptyInput",
    )
    .await;
    let message = assert_dash_error(
        post(
            &app,
            MULTIMODAL,
            &json!({"model": "test-image", "input": {"messages": text("x")}, "parameters": {"n": "two"}}),
            false,
        )
        .await,
        400,
        "InvalidParameter",
    )
    .await;
    assert!(message.contains("parameters.n"), "{message}");
    let message = assert_dash_error(
        post(&app, TEXT2IMAGE, &json!({"model": "test-image", "input": {}}), true).await,
        400,
        "InvalidParameter",
    )
    .await;
    assert!(message.contains("input.prompt"), "{message}");
    let edit = json!({"model": "test-image", "input": {"function": "colorization", "prompt": "x", "base_image_url": data_url(&png(8, 8, [0, 0, 0]))}});
    let message = assert_dash_error(post(&app, IMAGE2IMAGE, &edit, true).await, 400, "InvalidParameter").await;
    assert!(message.contains("input.function"), "{message}");
    let broken = app.client.post(app.url(MULTIMODAL)).body("{not json").header("content-type", "application/json");
    assert_dash_error(broken.send().await.unwrap(), 400, "InvalidParameter").await;
    let unknown = json!({"model": "wanx-nowhere", "input": {"messages": text("x")}});
    assert_dash_error(post(&app, MULTIMODAL, &unknown, false).await, 404, "ModelNotFound").await;
    let bad_image = json!({"model": "test-image", "input": {"messages": [{"role": "user", "content": [
        {"image": data_url(b"not an image")}, {"text": "x"}]}]}});
    assert_dash_error(post(&app, MULTIMODAL, &bad_image, false).await, 400, "InvalidParameter.DataInspection").await;
}

/// `Authorization: Bearer` as on DashScope; refusals are `InvalidApiKey`, on every route.
#[tokio::test]
async fn bearer_keys_as_dashscope() {
    let app = spawn_app().await;
    let key = app.app_state.keys.create(KeySettings::named("ds")).await.unwrap();
    let body = json!({"model": "test-image", "input": {"messages": [{"role": "user", "content": [{"text": "x"}]}]}});
    assert_dash_error(post(&app, MULTIMODAL, &body, false).await, 401, "InvalidApiKey").await;
    let no_key = app.client.post(app.url(TEXT2IMAGE)).header("X-DashScope-Async", "enable").json(&body);
    assert_dash_error(no_key.send().await.unwrap(), 401, "InvalidApiKey").await;
    let poll = app.client.get(app.url("/api/v1/tasks/some-task")).bearer_auth("sk-wrong");
    assert_dash_error(poll.send().await.unwrap(), 401, "InvalidApiKey").await;
    let ok = app.client.post(app.url(MULTIMODAL)).bearer_auth(&key.plaintext).json(&body);
    dash_body(ok.send().await.unwrap(), 200).await;
}

/// The text2image example: submitted, then polled until SUCCEEDED with its links, usage and
/// metrics.
#[tokio::test]
async fn text2image_tasks_run_and_are_polled() {
    let app = spawn_app().await;
    let body = json!({
        "model": "test-image",
        "input": {"prompt": "a lighthouse", "negative_prompt": "fog"},
        "parameters": {"size": "64*64", "n": 2, "seed": 42, "prompt_extend": true, "watermark": false}
    });
    let submitted = dash_body(post(&app, TEXT2IMAGE, &body, true).await, 200).await;
    assert_eq!(submitted["output"]["task_status"], "PENDING", "{submitted}");
    assert_eq!(submitted.as_object().unwrap().len(), 2, "{submitted}");
    let task_id = submitted["output"]["task_id"].as_str().unwrap();
    let done = wait(&app, task_id).await;
    let output = &done["output"];
    assert_eq!(output["task_status"], "SUCCEEDED", "{done}");
    assert_eq!(output["task_metrics"], json!({"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}));
    assert_eq!(done["usage"], json!({"image_count": 2}));
    for time in ["submit_time", "end_time"] {
        let text = output[time].as_str().unwrap();
        assert!(chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.3f").is_ok(), "{text}");
    }
    let results = output["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for result in results {
        let image = fetch_png(&app, result["url"].as_str().unwrap()).await;
        assert_eq!((image.width(), image.height()), (64, 64));
    }
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.options.extensions.negative_prompt.as_deref(), Some("fog"));
}

/// The image2image example (wanx2.1-imageedit's `description_edit`) runs as an edit of
/// `base_image_url`.
#[tokio::test]
async fn image2image_tasks_edit_the_base_image() {
    let app = spawn_app().await;
    let body = json!({
        "model": "test-image",
        "input": {"function": "description_edit", "prompt": "make it snow", "base_image_url": data_url(&png(64, 64, [1, 2, 3]))},
        "parameters": {"n": 1}
    });
    let submitted = dash_body(post(&app, IMAGE2IMAGE, &body, true).await, 200).await;
    let done = wait(&app, submitted["output"]["task_id"].as_str().unwrap()).await;
    assert_eq!(done["output"]["task_status"], "SUCCEEDED", "{done}");
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.operation, easel_core::types::Operation::Edit);
    assert_eq!(call.prompt, "make it snow");
}

/// A task that fails says why in `output.code` / `output.message`, with DashScope's code.
#[tokio::test]
async fn failed_tasks_carry_dashscope_codes() {
    let app = spawn_app().await;
    *app.backend("test-image").fail_with.lock().unwrap() = Some(BackendError::ContentPolicy { message: "no".into() });
    let body = json!({"model": "test-image", "input": {"prompt": "x"}, "parameters": {"n": 1}});
    let submitted = dash_body(post(&app, TEXT2IMAGE, &body, true).await, 200).await;
    let done = wait(&app, submitted["output"]["task_id"].as_str().unwrap()).await;
    assert_eq!(done["output"]["task_status"], "FAILED", "{done}");
    assert_eq!(done["output"]["code"], "DataInspectionFailed", "{done}");
    assert!(done["output"]["message"].is_string());
    assert!(done.get("usage").is_none(), "{done}");
}

/// Unknown ids, another key's task: 404 `NotFound`; a finished task cannot be cancelled.
#[tokio::test]
async fn unknown_tasks_and_cancelling_finished_ones() {
    let app = spawn_app().await;
    let get = |id: &str, key: &str| app.client.get(app.url(&format!("/api/v1/tasks/{id}"))).bearer_auth(key).send();
    let cancel =
        |id: &str, key: &str| app.client.post(app.url(&format!("/api/v1/tasks/{id}/cancel"))).bearer_auth(key).send();
    assert_dash_error(get("no-such-task", "sk-test").await.unwrap(), 404, "NotFound").await;
    assert_dash_error(cancel("no-such-task", "sk-test").await.unwrap(), 404, "NotFound").await;

    let first = app.app_state.keys.create(KeySettings::named("one")).await.unwrap();
    let second = app.app_state.keys.create(KeySettings::named("two")).await.unwrap();
    let body = json!({"model": "test-image", "input": {"prompt": "x"}, "parameters": {"n": 1}});
    let submit = app
        .client
        .post(app.url(TEXT2IMAGE))
        .bearer_auth(&first.plaintext)
        .header("X-DashScope-Async", "enable")
        .json(&body);
    let submitted = dash_body(submit.send().await.unwrap(), 200).await;
    let task_id = submitted["output"]["task_id"].as_str().unwrap();
    assert_dash_error(get(task_id, &second.plaintext).await.unwrap(), 404, "NotFound").await;
    assert_dash_error(cancel(task_id, &second.plaintext).await.unwrap(), 404, "NotFound").await;
    let started = Instant::now();
    loop {
        let body = dash_body(get(task_id, &first.plaintext).await.unwrap(), 200).await;
        if body["output"]["task_status"] == "SUCCEEDED" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the task did not end: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let message =
        assert_dash_error(cancel(task_id, &first.plaintext).await.unwrap(), 400, "UnsupportedOperation").await;
    assert!(message.contains(task_id), "{message}");
}

/// Cancelling a task that has not finished: `{"request_id"}`, then the task is CANCELED.
#[tokio::test]
async fn cancelling_a_running_task() {
    let mut models = crate::helpers::test_models();
    models[0].1.delay = Duration::from_secs(600);
    let app = crate::helpers::spawn_app_with(|_| {}, models).await;
    let body = json!({"model": "test-image", "input": {"prompt": "x"}, "parameters": {"n": 1}});
    let submitted = dash_body(post(&app, TEXT2IMAGE, &body, true).await, 200).await;
    let task_id = submitted["output"]["task_id"].as_str().unwrap();
    let response = app.client.post(app.url(&format!("/api/v1/tasks/{task_id}/cancel"))).bearer_auth("sk-test");
    let canceled = dash_body(response.send().await.unwrap(), 200).await;
    assert_eq!(canceled.as_object().unwrap().len(), 1, "{canceled}");
    let done = wait(&app, task_id).await;
    assert_eq!(done["output"]["task_status"], "CANCELED", "{done}");
}

/// Alibaba's `dashscope` Python SDK (installed in `.venv` by `scripts/test.sh`), unmodified,
/// against the tiny local model: `tests/sdk/python/test_dashscope.py`.
#[tokio::test]
async fn python_dashscope_sdk() {
    let app = crate::local::local_app().await;
    let fixtures = tempfile::tempdir().unwrap();
    std::fs::write(fixtures.path().join("image.png"), png(64, 64, [200, 100, 50])).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/test.sh, which creates it", python.display());
    let mut command = std::process::Command::new(python);
    command
        .arg(root.join("tests/sdk/python/test_dashscope.py"))
        .env("EASEL_DASHSCOPE_URL", format!("{}/api/v1", app.address))
        .env("EASEL_FIXTURES", fixtures.path())
        .env("EASEL_MODEL", "turbo");
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("the SDK test starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the dashscope SDK test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
}

/// `GET /api/v1/tasks` with these query parameters, as `key`.
async fn list(app: &TestApp, key: &str, query: &[(&str, &str)]) -> reqwest::Response {
    let url = reqwest::Url::parse_with_params(&app.url("/api/v1/tasks"), query).unwrap();
    app.client.get(url).bearer_auth(key).send().await.unwrap()
}

/// The task ids of a list answer, in order.
fn listed(body: &Value) -> Vec<String> {
    body["data"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_string()).collect()
}

/// The task list as `ImageSynthesis.list` reads it: pages with `total` and `total_page`, newest
/// first, filtered by status, model and submit time, and only the caller's own tasks.
#[tokio::test]
async fn tasks_are_listed_a_page_at_a_time() {
    list_pages(&spawn_app().await).await;
}

/// The same on PostgreSQL (skipped without `EASEL_TEST_POSTGRES_URL`).
#[tokio::test]
async fn tasks_are_listed_a_page_at_a_time_on_postgres() {
    let Some(db) = crate::storage::services::postgres().await else { return };
    let url = db.url.clone();
    let app = crate::helpers::spawn_app_with(|c| c.storage.database = Some(url), crate::helpers::test_models()).await;
    list_pages(&app).await;
}

async fn list_pages(app: &TestApp) {
    let key = app.app_state.keys.create(KeySettings::named("lister")).await.unwrap();
    let other = app.app_state.keys.create(KeySettings::named("other")).await.unwrap();
    let submit = |model: &str| {
        let body = json!({"model": model, "input": {"prompt": "x"}, "parameters": {"n": 1}});
        let request = app.client.post(app.url(TEXT2IMAGE)).bearer_auth(&key.plaintext);
        request.header("X-DashScope-Async", "enable").json(&body).send()
    };
    let mut ids = Vec::new();
    for model in ["test-image", "test-image", "test-fixed"] {
        let submitted = dash_body(submit(model).await.unwrap(), 200).await;
        let id = submitted["output"]["task_id"].as_str().unwrap().to_string();
        wait_as(app, &id, &key.plaintext).await;
        ids.push(id);
    }
    *app.backend("test-image").fail_with.lock().unwrap() = Some(BackendError::ContentPolicy { message: "no".into() });
    let submitted = dash_body(submit("test-image").await.unwrap(), 200).await;
    let failed = submitted["output"]["task_id"].as_str().unwrap().to_string();
    wait_as(app, &failed, &key.plaintext).await;
    ids.push(failed.clone());
    ids.reverse(); // newest first

    let first = dash_body(list(app, &key.plaintext, &[("page_no", "1"), ("page_size", "3")]).await, 200).await;
    assert_eq!((first["total"].as_u64(), first["total_page"].as_u64()), (Some(4), Some(2)), "{first}");
    assert_eq!((first["page_no"].as_u64(), first["page_size"].as_u64()), (Some(1), Some(3)), "{first}");
    assert_eq!(listed(&first), ids[..3]);
    let task = &first["data"][0];
    assert_eq!((task["status"].as_str(), task["model_name"].as_str()), (Some("FAILED"), Some("test-image")));
    let created = task["gmt_create"].as_i64().unwrap();
    assert!(created > 1_700_000_000_000 && created % 1000 == 0, "milliseconds: {task}");
    assert!(task["end_time"].as_i64().unwrap() >= created, "{task}");
    let second = dash_body(list(app, &key.plaintext, &[("page_no", "2"), ("page_size", "3")]).await, 200).await;
    assert_eq!(listed(&second), ids[3..]);
    let beyond = dash_body(list(app, &key.plaintext, &[("page_no", "3"), ("page_size", "3")]).await, 200).await;
    assert!(listed(&beyond).is_empty() && beyond["total"] == 4, "{beyond}");
    let defaults = dash_body(list(app, &key.plaintext, &[]).await, 200).await;
    assert_eq!((defaults["page_no"].as_u64(), defaults["page_size"].as_u64()), (Some(1), Some(10)));
    assert_eq!(listed(&defaults), ids);

    let by_status = dash_body(list(app, &key.plaintext, &[("status", "FAILED")]).await, 200).await;
    assert_eq!((listed(&by_status), by_status["total"].as_u64()), (vec![failed], Some(1)), "{by_status}");
    let pending = dash_body(list(app, &key.plaintext, &[("status", "PENDING")]).await, 200).await;
    assert_eq!(pending["total"], 0, "{pending}");
    let by_model = dash_body(list(app, &key.plaintext, &[("model_name", "test-fixed")]).await, 200).await;
    assert_eq!((listed(&by_model), by_model["total"].as_u64()), (vec![ids[1].clone()], Some(1)), "{by_model}");

    let format = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).unwrap().format("%Y%m%d%H%M%S").to_string();
    let (hour_ago, in_an_hour) = (format(created / 1000 - 3600), format(created / 1000 + 3600));
    let around = [("start_time", hour_ago.as_str()), ("end_time", in_an_hour.as_str())];
    assert_eq!(dash_body(list(app, &key.plaintext, &around).await, 200).await["total"], 4);
    let before = [("start_time", "20200101000000"), ("end_time", hour_ago.as_str())];
    assert_eq!(dash_body(list(app, &key.plaintext, &before).await, 200).await["total"], 0);
    let after = [("start_time", in_an_hour.as_str())];
    assert_eq!(dash_body(list(app, &key.plaintext, &after).await, 200).await["total"], 0);

    let theirs = dash_body(list(app, &other.plaintext, &[]).await, 200).await;
    assert!(listed(&theirs).is_empty() && theirs["total"] == 0 && theirs["total_page"] == 0, "{theirs}");
}

/// Bad list parameters are `InvalidParameter`, naming the parameter.
#[tokio::test]
async fn bad_list_parameters_are_invalid_parameter() {
    let app = spawn_app().await;
    let cases: [(&str, &str); 7] = [
        ("page_size", "0"),
        ("page_size", "101"),
        ("page_size", "ten"),
        ("page_no", "0"),
        ("status", "DONE"),
        ("start_time", "2025-01-01"),
        ("end_time", "20251301000000"),
    ];
    for (name, value) in cases {
        let message = assert_dash_error(list(&app, "sk-test", &[(name, value)]).await, 400, "InvalidParameter").await;
        assert!(message.contains(name), "{name}={value}: {message}");
    }
    let message = assert_dash_error(list(&app, "sk-test", &[("colour", "red")]).await, 400, "InvalidParameter").await;
    assert!(message.contains("colour"), "{message}");
    app.app_state.keys.create(KeySettings::named("any")).await.unwrap();
    assert_dash_error(list(&app, "sk-wrong", &[]).await, 401, "InvalidApiKey").await;
}

/// Polls the task, as `key`, until it ends.
async fn wait_as(app: &TestApp, task_id: &str, key: &str) -> Value {
    let started = Instant::now();
    loop {
        let response = app.client.get(app.url(&format!("/api/v1/tasks/{task_id}"))).bearer_auth(key);
        let body = dash_body(response.send().await.unwrap(), 200).await;
        if !["PENDING", "RUNNING"].contains(&body["output"]["task_status"].as_str().unwrap()) {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the task did not end: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
