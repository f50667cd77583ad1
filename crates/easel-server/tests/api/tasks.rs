//! Async tasks on the OpenAI routes (`Prefer: respond-async`, `/v1/tasks`): submit, poll, list,
//! cancel; durable across a restart; claimed once by racing nodes; a lease that runs out.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use easel_server::config::{Config, Role};
use easel_server::storage::keys::KeySettings;
use easel_server::storage::now;
use easel_server::storage::tasks as rows;
use serde_json::{Value, json};
use sqlx::Row as _;

use crate::backend::TestBackend;
use crate::helpers::{TestApp, assert_error, data_url, json_body, png, spawn_app, spawn_app_with, test_models};

const GENERATIONS: &str = "/v1/images/generations";

async fn submit(app: &TestApp, key: Option<&str>, path: &str, body: &Value) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).header("Prefer", "respond-async").json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn call(app: &TestApp, key: Option<&str>, method: reqwest::Method, path: &str) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

/// Submits and returns the task's id, checking the 202.
async fn accepted(app: &TestApp, key: Option<&str>, path: &str, body: &Value) -> String {
    let response = submit(app, key, path, body).await;
    let location = response.headers().get("location").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(response.headers().get("preference-applied").unwrap(), "respond-async");
    let task = json_body(response, 202).await;
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(location, Some(format!("/v1/tasks/{id}")));
    assert_eq!((task["object"].as_str(), task["status"].as_str()), (Some("image.task"), Some("queued")), "{task}");
    assert!(task["created_at"].is_i64(), "{task}");
    id
}

async fn task(app: &TestApp, key: Option<&str>, id: &str) -> Value {
    json_body(call(app, key, reqwest::Method::GET, &format!("/v1/tasks/{id}")).await, 200).await
}

/// Polls the task until `done` says so.
async fn wait_until(app: &TestApp, key: Option<&str>, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let body = task(app, key, id).await;
        if done(&body) {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the task did not get there: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_final(app: &TestApp, key: Option<&str>, id: &str) -> Value {
    wait_until(app, key, id, |t| !["queued", "running"].contains(&t["status"].as_str().unwrap())).await
}

/// The standard models with `test-image` slow: its calls run until canceled.
fn slow_models() -> Vec<(String, TestBackend)> {
    let mut models = test_models();
    models[0].1.delay = Duration::from_secs(600);
    models
}

/// An app on the data folder `dir`, in `role`.
async fn node(dir: &Path, role: Role, configure: impl FnOnce(&mut Config)) -> TestApp {
    node_with(dir, role, configure, test_models()).await
}

async fn node_with(
    dir: &Path,
    role: Role,
    configure: impl FnOnce(&mut Config),
    models: Vec<(String, TestBackend)>,
) -> TestApp {
    let dir = dir.to_path_buf();
    spawn_app_with(
        move |config| {
            config.storage.data_dir = dir;
            config.server.role = role;
            config.tasks.poll_interval_ms = 20;
            configure(config);
        },
        models,
    )
    .await
}

#[tokio::test]
async fn a_task_is_submitted_polled_and_succeeds_with_hosted_images() {
    let app = spawn_app().await;
    let id = accepted(&app, None, GENERATIONS, &json!({"model": "test-image", "prompt": "a fox", "n": 2})).await;
    let done = wait_final(&app, None, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!((done["model"].as_str(), done["n"].as_i64()), (Some("test-image"), Some(2)), "{done}");
    assert!(done["started_at"].is_i64() && done["finished_at"].is_i64(), "{done}");
    let data = done["result"]["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{done}");
    assert!(done["result"]["usage"]["total_tokens"].is_u64(), "{done}");
    let url = data[0]["url"].as_str().unwrap();
    assert!(data[0].get("b64_json").is_none(), "{done}");
    let image = app.client.get(url).send().await.unwrap();
    assert_eq!(image.status(), 200);
    image::load_from_memory(&image.bytes().await.unwrap()).unwrap();
    assert_eq!(app.backend("test-image").calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn edits_keep_their_input_images_and_base64_is_honoured() {
    let app = spawn_app().await;
    let body = json!({
        "model": "test-image", "prompt": "p", "response_format": "b64_json",
        "images": [{"image_url": data_url(&png(64, 64, [1, 2, 3]))}],
    });
    let id = accepted(&app, None, "/v1/images/edits", &body).await;
    let done = wait_final(&app, None, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["result"]["data"][0]["b64_json"].is_string(), "{done}");
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.images.len(), 1);
}

/// Everything that can refuse a request refuses it before the 202, with the synchronous answer.
#[tokio::test]
async fn bad_requests_are_refused_synchronously() {
    let app = spawn_app().await;
    let too_many = submit(&app, None, GENERATIONS, &json!({"model": "test-dalle", "prompt": "p", "n": 2})).await;
    assert_error(too_many, 400, Some("n"), "integer_above_max_value").await;
    let unknown = submit(&app, None, GENERATIONS, &json!({"model": "nope", "prompt": "p"})).await;
    assert_error(unknown, 404, Some("model"), "model_not_found").await;
    let missing = submit(&app, None, "/v1/images/edits", &json!({"model": "test-image", "prompt": "p"})).await;
    assert_error(missing, 400, Some("image"), "missing_required_parameter").await;
    let streaming =
        submit(&app, None, GENERATIONS, &json!({"model": "test-image", "prompt": "p", "stream": true})).await;
    assert_error(streaming, 400, Some("stream"), "invalid_value").await;
    let listed = json_body(call(&app, None, reqwest::Method::GET, "/v1/tasks").await, 200).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "{listed}");
}

#[tokio::test]
async fn a_task_belongs_to_its_key() {
    let app = spawn_app().await;
    let alice = app.app_state.keys.create(KeySettings::named("alice")).await.unwrap().plaintext;
    let bob = app.app_state.keys.create(KeySettings::named("bob")).await.unwrap().plaintext;
    let id = accepted(&app, Some(&alice), GENERATIONS, &json!({"model": "test-image", "prompt": "p"})).await;
    let path = format!("/v1/tasks/{id}");
    assert_error(call(&app, Some(&bob), reqwest::Method::GET, &path).await, 404, Some("task_id"), "task_not_found")
        .await;
    let cancel = call(&app, Some(&bob), reqwest::Method::POST, &format!("{path}/cancel")).await;
    assert_error(cancel, 404, Some("task_id"), "task_not_found").await;
    let listed = json_body(call(&app, Some(&bob), reqwest::Method::GET, "/v1/tasks").await, 200).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "{listed}");
    assert_eq!(wait_final(&app, Some(&alice), &id).await["status"], "succeeded");
    let unknown = call(&app, Some(&alice), reqwest::Method::GET, "/v1/tasks/no-such-task").await;
    assert_error(unknown, 404, Some("task_id"), "task_not_found").await;
}

#[tokio::test]
async fn tasks_are_listed_newest_first_with_a_filter_and_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let app = node(dir.path(), Role::Api, |_| {}).await;
    let mut ids = Vec::new();
    for prompt in ["a", "b", "c"] {
        ids.push(accepted(&app, None, GENERATIONS, &json!({"model": "test-image", "prompt": prompt})).await);
    }
    let canceled =
        json_body(call(&app, None, reqwest::Method::POST, &format!("/v1/tasks/{}/cancel", ids[1])).await, 200).await;
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert_eq!(canceled["error"]["code"], "request_cancelled", "{canceled}");

    let list = |query: &str| {
        let path = format!("/v1/tasks{query}");
        let app = &app;
        async move { json_body(call(app, None, reqwest::Method::GET, &path).await, 200).await }
    };
    let ids_of = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect()
    };
    let all = list("").await;
    assert_eq!(ids_of(&all), vec![ids[2].clone(), ids[1].clone(), ids[0].clone()], "{all}");
    assert_eq!((all["object"].as_str(), all["has_more"].as_bool()), (Some("list"), Some(false)));
    let first = list("?limit=2").await;
    assert_eq!(ids_of(&first), vec![ids[2].clone(), ids[1].clone()]);
    assert_eq!((first["has_more"].as_bool(), first["last_id"].as_str()), (Some(true), Some(ids[1].as_str())));
    let next = list(&format!("?limit=2&after={}", ids[1])).await;
    assert_eq!(ids_of(&next), vec![ids[0].clone()]);
    assert_eq!(next["has_more"], false);
    assert_eq!(ids_of(&list("?status=queued").await), vec![ids[2].clone(), ids[0].clone()]);
    assert_eq!(ids_of(&list("?status=canceled").await), vec![ids[1].clone()]);

    let bad = |query: &'static str| {
        let app = &app;
        async move { call(app, None, reqwest::Method::GET, &format!("/v1/tasks{query}")).await }
    };
    assert_error(bad("?status=done").await, 400, Some("status"), "invalid_value").await;
    assert_error(bad("?limit=0").await, 400, Some("limit"), "integer_below_min_value").await;
    assert_error(bad("?limit=101").await, 400, Some("limit"), "integer_above_max_value").await;
    assert_error(bad("?limit=x").await, 400, Some("limit"), "invalid_type").await;
    assert_error(bad("?order=asc").await, 400, Some("order"), "unknown_parameter").await;
}

#[tokio::test]
async fn a_running_task_is_canceled_between_steps_and_a_finished_one_is_a_409() {
    let app = spawn_app_with(|_| {}, slow_models()).await;
    let id = accepted(&app, None, GENERATIONS, &json!({"model": "test-image", "prompt": "p"})).await;
    wait_until(&app, None, &id, |t| t["status"] == "running").await;
    let cancel = format!("/v1/tasks/{id}/cancel");
    let answered = json_body(call(&app, None, reqwest::Method::POST, &cancel).await, 200).await;
    assert!(["running", "canceled"].contains(&answered["status"].as_str().unwrap()), "{answered}");
    let done = wait_final(&app, None, &id).await;
    assert_eq!(done["status"], "canceled", "{done}");
    assert_eq!(done["error"]["code"], "request_cancelled", "{done}");
    assert!(done.get("result").is_none(), "{done}");
    let again = call(&app, None, reqwest::Method::POST, &cancel).await;
    let message = assert_error(again, 409, None, "task_already_finished").await;
    assert!(message.contains(&id), "{message}");
}

#[tokio::test]
async fn a_failed_task_carries_the_error_envelope() {
    let app = spawn_app().await;
    *app.backend("test-image").fail_with.lock().unwrap() =
        Some(easel_core::error::BackendError::ContentPolicy { message: "no foxes".into() });
    let id = accepted(&app, None, GENERATIONS, &json!({"model": "test-image", "prompt": "a fox"})).await;
    let done = wait_final(&app, None, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = &done["error"];
    assert_eq!(
        (error["code"].as_str(), error["type"].as_str()),
        (Some("content_policy_violation"), Some("invalid_request_error"))
    );
    assert!(error["message"].as_str().unwrap().contains("no foxes"), "{done}");
    let cancel = call(&app, None, reqwest::Method::POST, &format!("/v1/tasks/{id}/cancel")).await;
    assert_error(cancel, 409, None, "task_already_finished").await;
}

/// An API-only node accepts tasks and runs none; a worker started later on the same data folder
/// runs them (their input images included), and serves no API itself.
#[tokio::test]
async fn queued_tasks_survive_a_restart_and_run_on_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let api = node(dir.path(), Role::Api, |_| {}).await;
    let edit = json!({
        "model": "test-image", "prompt": "p",
        "images": [{"image_url": data_url(&png(64, 64, [9, 9, 9]))}],
    });
    let id = accepted(&api, None, "/v1/images/edits", &edit).await;
    assert_eq!(task(&api, None, &id).await["status"], "queued");
    assert_eq!(api.backend("test-image").calls.load(Ordering::SeqCst), 0);
    drop(api);

    let worker = node(dir.path(), Role::Worker, |_| {}).await;
    let unknown = call(&worker, None, reqwest::Method::GET, &format!("/v1/tasks/{id}")).await;
    assert_error(unknown, 404, None, "unknown_url").await;
    assert_eq!(call(&worker, None, reqwest::Method::GET, "/healthz").await.status(), 200);
    let started = Instant::now();
    while worker.backend("test-image").calls.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "the worker never ran the task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = node(dir.path(), Role::Api, |_| {}).await;
    let done = wait_final(&api, None, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let call = worker.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.images.len(), 1, "the input image was kept");
}

/// A task whose worker died (its lease ran out) runs once more, on any worker; quotas are
/// charged once.
#[tokio::test]
async fn a_task_whose_lease_runs_out_is_queued_again_and_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let api = node(dir.path(), Role::Api, |_| {}).await;
    let key = api
        .app_state
        .keys
        .create(KeySettings { daily_images: Some(3), ..KeySettings::named("k") })
        .await
        .unwrap()
        .plaintext;
    let id = accepted(&api, Some(&key), GENERATIONS, &json!({"model": "test-image", "prompt": "p", "n": 2})).await;
    // A worker claims it and dies: its lease is already over.
    let claimed = rows::claim(&api.app_state.db, "dead-worker", now() - 1, now()).await.unwrap().unwrap();
    assert_eq!((claimed.id.as_str(), claimed.attempts), (id.as_str(), 1));
    assert_eq!(task(&api, Some(&key), &id).await["status"], "running");

    let _worker = node(dir.path(), Role::Worker, |_| {}).await;
    let done = wait_final(&api, Some(&key), &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["data"].as_array().unwrap().len(), 2);
    // Two of three images used: two more is over the quota, one fits.
    let over = api
        .client
        .post(api.url(GENERATIONS))
        .bearer_auth(&key)
        .json(&json!({"model": "test-image", "prompt": "p", "n": 2}));
    assert_error(over.send().await.unwrap(), 429, None, "quota_exceeded").await;
    let fits =
        api.client.post(api.url(GENERATIONS)).bearer_auth(&key).json(&json!({"model": "test-image", "prompt": "p"}));
    json_body(fits.send().await.unwrap(), 200).await;
}

/// A worker that delivered a task and died before recording its end: the task runs again, and
/// its usage is recorded once, not once per delivery.
#[tokio::test]
async fn a_task_delivered_twice_has_one_usage_row() {
    let dir = tempfile::tempdir().unwrap();
    let api = node(dir.path(), Role::Api, |_| {}).await;
    let key = api.app_state.keys.create(KeySettings::named("k")).await.unwrap().plaintext;
    let id = accepted(&api, Some(&key), GENERATIONS, &json!({"model": "test-image", "prompt": "p"})).await;
    let worker = node(dir.path(), Role::Worker, |_| {}).await;
    assert_eq!(wait_final(&api, Some(&key), &id).await["status"], "succeeded");
    // As if the worker had died after its delivery was committed but before the task's end was:
    // the row still says running, under a lease that has run out.
    sqlx::query(
        "UPDATE tasks SET status = 'running', lease_owner = 'dead-worker', lease_expires_at = $1, \
         result = NULL, finished_at = NULL, expires_at = NULL WHERE id = $2",
    )
    .bind(now() - 1)
    .bind(&id)
    .execute(&api.app_state.db)
    .await
    .unwrap();
    let done = wait_final(&api, Some(&key), &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(worker.backend("test-image").calls.load(Ordering::SeqCst), 2, "the task ran again");
    let rows: i64 = sqlx::query("SELECT COUNT(*) AS n FROM usage WHERE id = $1")
        .bind(&id)
        .fetch_one(&api.app_state.db)
        .await
        .unwrap()
        .get("n");
    let all: i64 = sqlx::query("SELECT COUNT(*) AS n FROM usage").fetch_one(&api.app_state.db).await.unwrap().get("n");
    assert_eq!((rows, all), (1, 1), "one usage row, under the task's id");
}

/// With `retry_running = false` a task whose lease runs out fails, and its quota is released.
#[tokio::test]
async fn without_retries_a_task_whose_lease_runs_out_fails() {
    let dir = tempfile::tempdir().unwrap();
    let api = node(dir.path(), Role::Api, |_| {}).await;
    let key = api
        .app_state
        .keys
        .create(KeySettings { daily_images: Some(1), ..KeySettings::named("k") })
        .await
        .unwrap()
        .plaintext;
    let id = accepted(&api, Some(&key), GENERATIONS, &json!({"model": "test-image", "prompt": "p"})).await;
    rows::claim(&api.app_state.db, "dead-worker", now() - 1, now()).await.unwrap().unwrap();
    let worker = node(dir.path(), Role::Worker, |c| c.tasks.retry_running = false).await;
    let done = wait_final(&api, Some(&key), &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!((done["error"]["type"].as_str(), done["error"]["code"].as_str()), (Some("server_error"), None));
    assert_eq!(worker.backend("test-image").calls.load(Ordering::SeqCst), 0);
    let fits =
        api.client.post(api.url(GENERATIONS)).bearer_auth(&key).json(&json!({"model": "test-image", "prompt": "p"}));
    json_body(fits.send().await.unwrap(), 200).await;
}

/// Two worker nodes on one PostgreSQL database race for the same queue: every task runs once.
#[tokio::test]
async fn two_workers_on_postgres_run_each_task_once() {
    let Some(db) = crate::storage::services::postgres().await else { return };
    let blobs = tempfile::tempdir().unwrap();
    let shared = |role: Role| {
        let (url, blobs) = (db.url.clone(), blobs.path().display().to_string());
        move |config: &mut Config| {
            config.storage.database = Some(url);
            config.storage.blobs = Some(blobs);
            config.server.role = role;
            config.tasks.poll_interval_ms = 10;
            config.tasks.concurrency = 3;
        }
    };
    let api = spawn_app_with(shared(Role::Api), test_models()).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(accepted(&api, None, GENERATIONS, &json!({"model": "test-image", "prompt": format!("p{i}")})).await);
    }
    let one = spawn_app_with(shared(Role::Worker), test_models()).await;
    let two = spawn_app_with(shared(Role::Worker), test_models()).await;
    for id in &ids {
        assert_eq!(wait_final(&api, None, id).await["status"], "succeeded");
    }
    let calls = |app: &TestApp| app.backend("test-image").calls.load(Ordering::SeqCst);
    assert_eq!(calls(&one) + calls(&two), ids.len(), "each task ran exactly once");
    let attempts: i64 =
        sqlx::query_scalar("SELECT CAST(SUM(attempts) AS BIGINT) FROM tasks").fetch_one(&db.db).await.unwrap();
    assert_eq!(attempts, ids.len() as i64);
}

/// A local model reports its denoising steps: a running task shows them, a finished one keeps
/// the last (both images run in one batch, so six steps make the job).
#[tokio::test]
async fn a_local_model_reports_its_steps() {
    let app = crate::local::local_app().await;
    let body = json!({"model": "turbo", "prompt": "a red square", "n": 2, "steps": 6, "size": "64x64"});
    let id = accepted(&app, None, GENERATIONS, &body).await;
    let done = wait_final(&app, None, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"], json!({"steps_done": 6, "steps_total": 6}), "{done}");
}

/// A finished task's result expires with its hosted images: then the task is gone.
#[tokio::test]
async fn a_finished_task_expires_with_its_images() {
    let app = spawn_app_with(|c| c.storage.url_ttl_secs = 600, test_models()).await;
    let id = accepted(&app, None, GENERATIONS, &json!({"model": "test-image", "prompt": "p"})).await;
    let done = wait_final(&app, None, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The task expires with its images: the links say when, the row agrees.
    let url = done["result"]["data"][0]["url"].as_str().unwrap();
    let link_expires: i64 = url.split("expires=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
    let task_expires: i64 = sqlx::query("SELECT expires_at FROM tasks WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.app_state.db)
        .await
        .unwrap()
        .get("expires_at");
    assert!((task_expires - link_expires).abs() <= 1, "task {task_expires}, links {link_expires}");
    assert!(task_expires >= done["finished_at"].as_i64().unwrap() + 600 - 1, "{done}");
    // Once that time has passed (moved rather than waited for), the task is gone.
    sqlx::query("UPDATE tasks SET expires_at = $1 WHERE id = $2")
        .bind(now() - 1)
        .bind(&id)
        .execute(&app.app_state.db)
        .await
        .unwrap();
    let path = format!("/v1/tasks/{id}");
    assert_error(call(&app, None, reqwest::Method::GET, &path).await, 404, Some("task_id"), "task_not_found").await;
    let listed = json_body(call(&app, None, reqwest::Method::GET, "/v1/tasks").await, 200).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "{listed}");
}

/// A cancel sent to one node stops the task running on another: the flag travels in the
/// database and the worker reads it with its lease.
#[tokio::test]
async fn a_task_running_on_another_node_is_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let api = node(dir.path(), Role::Api, |_| {}).await;
    let worker = node_with(dir.path(), Role::Worker, |c| c.tasks.lease_secs = 3, slow_models()).await;
    let id = accepted(&api, None, GENERATIONS, &json!({"model": "test-image", "prompt": "p"})).await;
    wait_until(&api, None, &id, |t| t["status"] == "running").await;
    let answered =
        json_body(call(&api, None, reqwest::Method::POST, &format!("/v1/tasks/{id}/cancel")).await, 200).await;
    assert!(["running", "canceled"].contains(&answered["status"].as_str().unwrap()), "{answered}");
    let done = wait_final(&api, None, &id).await;
    assert_eq!(done["status"], "canceled", "{done}");
    assert_eq!(worker.backend("test-image").calls.load(Ordering::SeqCst), 1);
}

/// Canceling a task whose model waits on a DashScope task still in DashScope's queue cancels
/// that task upstream too, by its id, so it stops billing.
#[tokio::test]
async fn canceling_a_task_on_a_dashscope_model_cancels_it_upstream() {
    let fake = easel_upstream::testing::Fake::start(&std::env::var("CARGO_PKG_NAME").unwrap()).await;
    fake.state.lock().unwrap().queued = true;
    let provider = json!({
        "id": "dash", "kind": "dashscope", "base_url": fake.url(), "api_key_env": "CARGO_PKG_NAME",
        "allow_hosts": [format!("http://{}", fake.addr)],
        "poll_interval_secs": 0.01, "poll_max_interval_secs": 0.02,
    });
    let mut options = serde_json::Map::new();
    options.insert("targets".into(), json!([{"provider": "dash", "model": "wanx-v1"}]));
    let model = easel_server::config::ModelConfig {
        id: "wanx-v1".into(),
        backend: "upstream".into(),
        response_format: None,
        options,
    };
    let app = spawn_app_with(
        move |c| {
            c.providers = vec![provider];
            c.models = vec![model];
            c.tasks.poll_interval_ms = 20;
        },
        Vec::new(),
    )
    .await;
    let id = accepted(&app, None, GENERATIONS, &json!({"model": "wanx-v1", "prompt": "p"})).await;
    let started = Instant::now();
    while fake.hits("/api/v1/tasks/task-1").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "DashScope was never polled: {:?}", fake.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    json_body(call(&app, None, reqwest::Method::POST, &format!("/v1/tasks/{id}/cancel")).await, 200).await;
    let done = wait_final(&app, None, &id).await;
    assert_eq!(done["status"], "canceled", "{done}");
    while !fake.state.lock().unwrap().tasks["task-1"].cancelled {
        assert!(started.elapsed() < Duration::from_secs(60), "never cancelled upstream: {:?}", fake.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancels: Vec<String> = fake.hits("/cancel").iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(cancels, ["POST /api/v1/tasks/task-1/cancel"]);
}
