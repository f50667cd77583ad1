//! DashScope's three protocols and its ways of failing.

use std::time::{Duration, Instant};

use easel_core::backend::CallContext;
use easel_core::types::Operation;
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

#[tokio::test]
async fn a_client_that_leaves_stops_polling_and_cancels_the_task() {
    let (fake, m) = dash("wanx-v1", json!({"poll_interval_secs": 0.05, "poll_max_interval_secs": 0.05})).await;
    // Keep the task running.
    for _ in 0..100 {
        fake.state
            .lock()
            .unwrap()
            .polls
            .push_back(json!({"request_id": "r", "output": {"task_id": "task-1", "task_status": "RUNNING"}}));
    }
    let cancel = CancellationToken::new();
    let later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(180)).await;
        later.cancel();
    });
    let started = Instant::now();
    let err = m.call(call(Operation::Generate, 1, (1024, 1024)), CallContext::new(cancel)).await.unwrap_err();
    assert!(matches!(err, BackendError::Cancelled), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let polls = fake.log().iter().filter(|r| r.method == "GET" && r.path.starts_with("/api/v1/tasks/")).count();
    assert!((1..=5).contains(&polls), "polled {polls} times");
    assert_eq!(fake.hits("/cancel").len(), 1, "the task was cancelled upstream");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later_polls = fake.log().iter().filter(|r| r.method == "GET" && r.path.starts_with("/api/v1/tasks/")).count();
    assert_eq!(polls, later_polls, "no polling after cancellation");
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
