//! DashScope's three protocols and its ways of failing.

use std::time::{Duration, Instant};

use easel_core::backend::{CallContext, SharedBackend};
use easel_core::types::Operation;
use easel_upstream::testing::{Inner, Recorded};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;

async fn dash(model_name: &str, extra: Value) -> (Fake, SharedBackend) {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("dash", "dashscope", &fake, extra)]);
    let m = model(&gw, json!([{"provider": "dash", "model": model_name}]));
    (fake, m)
}

#[tokio::test]
async fn text2image_submits_async_polls_and_downloads() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    assert_eq!(m.kind(), "dashscope");
    assert_eq!(m.capabilities().max_n_per_call, 4);
    let mut c = call(Operation::Generate, 2, (1280, 720));
    c.options.extensions.seed = Some(5);
    c.options.extensions.negative_prompt = Some("people".into());
    let out = run(&m, c).await.unwrap();
    assert_eq!(sizes(&out), vec![(1280, 720), (1280, 720)]);
    assert_eq!(
        out.revised_prompt.as_deref(),
        Some("a red fox in the snow (extended)"),
        "actual_prompt is the revised prompt"
    );
    assert!(out.usage.is_none(), "DashScope reports images, not tokens: the core computes usage");

    let submit = &fake.hits("text2image/image-synthesis")[0];
    assert_eq!(submit.headers["x-dashscope-async"], "enable");
    assert_eq!(submit.headers["authorization"], format!("Bearer {}", api_key()));
    let body = submit.json.as_ref().unwrap();
    assert_eq!(body["model"], "wanx-v1");
    assert_eq!(body["input"]["prompt"], "a red fox in the snow");
    assert_eq!(body["input"]["negative_prompt"], "people");
    assert_eq!(body["parameters"]["size"], "1280*720");
    assert_eq!(body["parameters"]["n"], 2);
    assert_eq!(body["parameters"]["seed"], 5);
    assert!(body["parameters"].get("prompt_extend").is_none(), "the provider's default unless configured");
    assert_eq!(fake.hits("/api/v1/tasks/").len(), 3, "PENDING, RUNNING, SUCCEEDED");
    assert_eq!(fake.hits("/results/").len(), 2);
}

/// `prompt_extend`, `watermark` and wanx-v1's `style` from the request reach `parameters`; the
/// request's `prompt_extend` wins over the target's.
#[tokio::test]
async fn the_request_s_dashscope_switches_are_sent() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    let mut c = call(Operation::Generate, 1, (1024, 1024));
    let switches = &mut c.options.extensions.dashscope;
    switches.prompt_extend = Some(false);
    switches.watermark = Some(true);
    switches.style = Some("<watercolor>".into());
    c.options.extensions.steps = Some(30);
    run(&m, c).await.unwrap();
    let body = fake.hits("text2image/image-synthesis")[0].json.clone().unwrap();
    let p = &body["parameters"];
    assert_eq!(
        (&p["prompt_extend"], &p["watermark"], &p["style"]),
        (&json!(false), &json!(true), &json!("<watercolor>"))
    );
    assert!(p.get("steps").is_none(), "wanx-v1 takes no steps");
    // `style` is wanx-v1's alone.
    let (fake, m) = dash("wan2.2-t2i-flash", json!({})).await;
    let mut c = call(Operation::Generate, 1, (1024, 1024));
    c.options.extensions.dashscope.style = Some("<watercolor>".into());
    run(&m, c).await.unwrap();
    assert!(fake.hits("text2image/image-synthesis")[0].json.as_ref().unwrap()["parameters"].get("style").is_none());
}

/// `steps` and `guidance_scale` go out under DashScope's names, to the models that take them.
#[tokio::test]
async fn steps_and_guidance_use_dashscope_s_names() {
    for (model, guidance) in [("stable-diffusion-xl", "scale"), ("flux-dev", "guidance")] {
        let (fake, m) = dash(model, json!({})).await;
        let mut c = call(Operation::Generate, 1, (1024, 1024));
        c.options.extensions.steps = Some(25);
        c.options.extensions.guidance_scale = Some(3.5);
        run(&m, c).await.unwrap();
        let body = fake.hits("text2image/image-synthesis")[0].json.clone().unwrap();
        assert_eq!(body["parameters"]["steps"], 25, "{model}: {body}");
        assert_eq!(body["parameters"][guidance], 3.5, "{model}: {body}");
        assert!(body["parameters"].get("guidance_scale").is_none(), "{model}: {body}");
    }
}

#[tokio::test]
async fn sizes_wanx_cannot_make_are_sent_as_the_nearest_it_can() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    let out = run(&m, call(Operation::Generate, 1, (1024, 1536))).await.unwrap();
    assert_eq!(sizes(&out), vec![(720, 1280)], "made at the native size; the core resizes");
    assert_eq!(fake.hits("image-synthesis")[0].json.as_ref().unwrap()["parameters"]["size"], "720*1280");
}

#[tokio::test]
async fn partial_success_returns_the_images_that_were_made() {
    let (fake, m) = dash("wanx2.1-t2i-turbo", json!({})).await;
    let link = format!("http://{}/results/512x512-0.png", fake.addr);
    fake.state.lock().unwrap().polls.push_back(json!({
        "request_id": "r",
        "output": {"task_id": "task-1", "task_status": "SUCCEEDED", "results": [
            {"url": link, "actual_prompt": "x"},
            {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."}
        ], "task_metrics": {"TOTAL": 2, "SUCCEEDED": 1, "FAILED": 1}},
        "usage": {"image_count": 1}
    }));
    let out = run(&m, call(Operation::Generate, 2, (512, 512))).await.unwrap();
    assert_eq!(out.images.len(), 1);
}

#[tokio::test]
async fn a_failed_task_with_data_inspection_is_a_content_policy_error() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    fake.state.lock().unwrap().polls.push_back(json!({
        "request_id": "r",
        "output": {"task_id": "task-1", "task_status": "FAILED", "code": "DataInspectionFailed", "message": "Input data may contain inappropriate content."}
    }));
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::ContentPolicy { .. }), "{err:?}");
    assert!(err.to_string().contains("inappropriate"));
}

#[tokio::test]
async fn an_error_inside_http_200_is_recognised() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    fake.push(Reply::Json(
        200,
        json!({"request_id": "r", "code": "InvalidParameter", "message": "num_images_per_prompt must be 1"}),
        vec![],
    ));
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::InvalidInput { .. }), "{err:?}");
    assert!(err.to_string().contains("num_images_per_prompt"));
    assert!(fake.hits("/tasks/").is_empty());
}

#[tokio::test]
async fn an_expired_task_is_an_upstream_error_and_canceled_too() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    fake.state
        .lock()
        .unwrap()
        .polls
        .push_back(json!({"request_id": "r", "output": {"task_id": "task-1", "task_status": "UNKNOWN"}}));
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::Upstream { .. }), "{err:?}");
    assert!(err.to_string().contains("expired or unknown"));

    fake.state
        .lock()
        .unwrap()
        .polls
        .push_back(json!({"request_id": "r", "output": {"task_id": "task-2", "task_status": "CANCELED"}}));
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(err.to_string().contains("cancelled the task"), "{err}");
}

#[tokio::test]
async fn failed_polls_are_polled_again_without_resubmitting() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    {
        let mut s = fake.state.lock().unwrap();
        s.poll_script.push_back(Reply::Json(
            500,
            json!({"request_id": "r", "code": "InternalError", "message": "oops"}),
            vec![],
        ));
        s.poll_script.push_back(Reply::Truncated);
    }
    let out = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!(fake.hits("image-synthesis").len(), 1, "never submitted twice");
    assert_eq!(fake.hits("/api/v1/tasks/").len(), 5, "two failed polls, then PENDING, RUNNING, SUCCEEDED");
}

#[tokio::test]
async fn result_links_on_hosts_not_allowed_are_refused() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    fake.state.lock().unwrap().result_host = Some(format!("localhost:{}", fake.addr.port()));
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::Upstream { .. }), "{err:?}");
    assert!(err.to_string().contains("allow_hosts"), "{err}");
    assert!(fake.hits("/results/").is_empty(), "nothing was downloaded");
}

/// Waits (up to a minute, never as the thing tested) until `done` holds of the fake's state.
async fn wait_for(fake: &Fake, done: impl Fn(&Inner) -> bool) {
    let started = Instant::now();
    while !done(&fake.state.lock().unwrap()) {
        assert!(started.elapsed() < Duration::from_secs(60), "the fake never got there: {:?}", fake.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The fake's polls of `task`.
fn polls(log: &[Recorded], task: &str) -> usize {
    let path = format!("/api/v1/tasks/{task}");
    log.iter().filter(|r| r.method == "GET" && r.path.starts_with(&path)).count()
}

fn cancels(fake: &Fake) -> Vec<String> {
    fake.hits("/cancel").into_iter().map(|r| format!("{} {}", r.method, r.path)).collect()
}

/// Runs a call on `m` and cancels its job once the fake has seen `after` polls of `task`.
async fn cancelled_after(fake: &Fake, m: &SharedBackend, task: &'static str, after: usize) -> BackendError {
    let cancel = CancellationToken::new();
    let (later, watched) = (cancel.clone(), fake.clone());
    tokio::spawn(async move {
        wait_for(&watched, |s| polls(&s.log, task) >= after).await;
        later.cancel();
    });
    m.call(call(Operation::Generate, 1, (1024, 1024)), CallContext::new(cancel)).await.unwrap_err()
}

/// A job cancelled while its DashScope task waits in the queue stops polling and cancels that
/// task upstream, once, by its id and with the provider's key.
#[tokio::test]
async fn a_cancelled_job_cancels_its_pending_task_upstream_once() {
    let (fake, m) = dash("wanx-v1", json!({"poll_interval_secs": 0.01, "poll_max_interval_secs": 0.01})).await;
    fake.state.lock().unwrap().queued = true;
    let err = cancelled_after(&fake, &m, "task-1", 1).await;
    assert!(matches!(err, BackendError::Cancelled), "{err:?}");
    let polled = polls(&fake.log(), "task-1");
    wait_for(&fake, |s| s.tasks.get("task-1").is_some_and(|t| t.cancelled)).await;
    assert_eq!(cancels(&fake), ["POST /api/v1/tasks/task-1/cancel"]);
    assert_eq!(fake.hits("/cancel")[0].headers["authorization"], format!("Bearer {}", api_key()));
    // At most the poll already on the wire when the job was cancelled arrives later.
    assert!(polls(&fake.log(), "task-1") <= polled + 1, "no polling after cancellation");
}

/// DashScope cancels only PENDING tasks: a job cancelled once its task runs sends no cancel
/// (the later pending one's cancel is the only one the fake sees).
#[tokio::test]
async fn a_running_task_is_not_asked_to_cancel() {
    let (fake, m) = dash("wanx-v1", json!({"poll_interval_secs": 0.01, "poll_max_interval_secs": 0.01})).await;
    for _ in 0..1000 {
        fake.state
            .lock()
            .unwrap()
            .polls
            .push_back(json!({"request_id": "r", "output": {"task_id": "task-1", "task_status": "RUNNING"}}));
    }
    // Two polls: the first RUNNING answer has been read before the second poll went out.
    let err = cancelled_after(&fake, &m, "task-1", 2).await;
    assert!(matches!(err, BackendError::Cancelled), "{err:?}");
    {
        let mut s = fake.state.lock().unwrap();
        s.polls.clear();
        s.queued = true;
    }
    cancelled_after(&fake, &m, "task-2", 1).await;
    wait_for(&fake, |s| s.tasks.get("task-2").is_some_and(|t| t.cancelled)).await;
    assert_eq!(cancels(&fake), ["POST /api/v1/tasks/task-2/cancel"]);
}

/// Jobs whose tasks end (succeeded, failed) send no cancel.
#[tokio::test]
async fn a_job_that_finishes_sends_no_cancel() {
    let (fake, m) = dash("wanx-v1", json!({})).await;
    run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap();
    fake.state.lock().unwrap().polls.push_back(json!({
        "request_id": "r",
        "output": {"task_id": "task-2", "task_status": "FAILED", "code": "DataInspectionFailed", "message": "x"}
    }));
    run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(cancels(&fake).is_empty(), "{:?}", cancels(&fake));
}

/// The fake answers the cancel route as DashScope documents it: a PENDING task becomes
/// CANCELED; a running or unknown one is refused with `UnsupportedOperation`.
#[tokio::test]
async fn the_fake_cancels_only_pending_tasks() {
    let (fake, _) = dash("wanx-v1", json!({})).await;
    let client = reqwest::Client::new();
    let post = |path: String| client.post(format!("{}{path}", fake.url())).bearer_auth(api_key()).send();
    let submit = || {
        client
            .post(format!("{}/api/v1/services/aigc/text2image/image-synthesis", fake.url()))
            .bearer_auth(api_key())
            .header("X-DashScope-Async", "enable")
            .json(&json!({"model": "wanx-v1", "input": {"prompt": "p"}, "parameters": {"n": 1}}))
            .send()
    };
    let poll = |id: &str| client.get(format!("{}/api/v1/tasks/{id}", fake.url())).bearer_auth(api_key()).send();
    submit().await.unwrap();
    let answer = post("/api/v1/tasks/task-1/cancel".into()).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = poll("task-1").await.unwrap().json().await.unwrap();
    assert_eq!(body["output"]["task_status"], "CANCELED", "{body}");

    submit().await.unwrap();
    poll("task-2").await.unwrap();
    poll("task-2").await.unwrap(); // RUNNING now
    for id in ["task-2", "task-9"] {
        let answer = post(format!("/api/v1/tasks/{id}/cancel")).await.unwrap();
        assert_eq!(answer.status(), 400);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "UnsupportedOperation", "{body}");
    }
}

#[tokio::test]
async fn qwen_image_edit_is_a_sync_multimodal_call_with_images_then_text() {
    let (fake, m) = dash("qwen-image-edit", json!({})).await;
    let caps = m.capabilities();
    assert!(caps.supports(Operation::Edit) && !caps.supports(Operation::Generate));
    assert!(!caps.native_masks);
    let mut c = edit(1, 2);
    c.options.extensions.negative_prompt = Some("blur".into());
    let out = run(&m, c).await.unwrap();
    assert_eq!(sizes(&out), vec![(640, 480)]);
    let hit = &fake.hits("multimodal-generation/generation")[0];
    assert!(!hit.headers.contains_key("x-dashscope-async"));
    let body = hit.json.as_ref().unwrap();
    let content = body["input"]["messages"][0]["content"].as_array().unwrap();
    assert_eq!(body["input"]["messages"][0]["role"], "user");
    assert_eq!(content.len(), 3);
    assert!(content[0]["image"].as_str().unwrap().starts_with("data:image/png;base64,"));
    assert!(content[1]["image"].is_string());
    assert_eq!(content[2]["text"], "make it blue");
    assert!(body["parameters"].get("size").is_none(), "qwen-image-edit takes no size");
    assert_eq!(body["parameters"]["negative_prompt"], "blur");
}

#[tokio::test]
async fn qwen_image_generation_keeps_every_image() {
    let (fake, m) = dash("qwen-image-2.0", json!({})).await;
    let out = run(&m, call(Operation::Generate, 3, (1024, 1024))).await.unwrap();
    assert_eq!(out.images.len(), 3);
    assert_eq!(fake.hits("multimodal-generation")[0].json.as_ref().unwrap()["parameters"]["size"], "1024*1024");
}

#[tokio::test]
async fn moderation_on_the_sync_api_is_a_content_policy_error() {
    let (fake, m) = dash("qwen-image-plus", json!({})).await;
    fake.push(Reply::Json(400, json!({"request_id": "r", "code": "DataInspectionFailed", "message": "Input text data may contain inappropriate content."}), vec![]));
    let err = run(&m, call(Operation::Generate, 1, (1328, 1328))).await.unwrap_err();
    assert!(matches!(err, BackendError::ContentPolicy { .. }), "{err:?}");
}

#[tokio::test]
async fn wanx_image_edit_goes_to_image2image() {
    let (fake, m) = dash("wanx2.1-imageedit", json!({})).await;
    let out = run(&m, edit(1, 1)).await.unwrap();
    assert_eq!(out.images.len(), 1);
    let hit = &fake.hits("image2image/image-synthesis")[0];
    assert_eq!(hit.headers["x-dashscope-async"], "enable");
    let body = hit.json.as_ref().unwrap();
    assert_eq!(body["input"]["function"], "description_edit");
    assert!(body["input"]["base_image_url"].as_str().unwrap().starts_with("data:image/png;base64,"));
    assert_eq!(body["input"]["prompt"], "make it blue");
}

#[tokio::test]
async fn throttling_is_retried() {
    let (fake, m) = dash("qwen-image-plus", json!({})).await;
    fake.push(Reply::Json(
        429,
        json!({"request_id": "r", "code": "Throttling.RateQuota", "message": "Requests rate limit exceeded"}),
        vec![],
    ));
    run(&m, call(Operation::Generate, 1, (1328, 1328))).await.unwrap();
    assert_eq!(fake.hits("multimodal-generation").len(), 2);
}

#[tokio::test]
async fn wan_image_models_use_image_generation_and_i2i_sends_images() {
    let (fake, m) = dash("wan2.7-image", json!({})).await;
    run(&m, edit(1, 2)).await.unwrap();
    let body = fake.hits("image-generation/generation")[0].json.clone().unwrap();
    assert_eq!(body["input"]["messages"][0]["content"].as_array().unwrap().len(), 3);

    let (fake, m) = dash("wan2.5-i2i-preview", json!({})).await;
    run(&m, edit(1, 2)).await.unwrap();
    let body = fake.hits("image2image/image-synthesis")[0].json.clone().unwrap();
    assert_eq!(body["input"]["images"].as_array().unwrap().len(), 2);
    assert!(body["input"].get("function").is_none());
}

#[tokio::test]
async fn an_endless_answer_fails_at_max_response_bytes() {
    let (fake, m) = dash("wanx-v1", json!({"max_response_bytes": 1 << 20, "timeout_secs": 30.0})).await;
    fake.push(Reply::Endless { sse: false });
    let started = Instant::now();
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::Upstream { .. }), "{err:?}");
    assert!(err.to_string().contains("max_response_bytes"), "{err}");
    assert_eq!(fake.hits("image-synthesis").len(), 1, "not submitted again");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}
