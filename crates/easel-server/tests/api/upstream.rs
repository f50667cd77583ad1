//! Upstream providers through the whole server: any inbound dialect, to fake providers that
//! speak each documented protocol (from `easel_upstream::testing`), with the core filling gaps.

use easel_upstream::testing::{Fake, Reply};
use reqwest::multipart::Form;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, file_part, images, json_body, mask, png, spawn_app_with};

/// Cargo sets this for every test process, so providers can name it as their key variable.
const KEY_ENV: &str = "CARGO_PKG_NAME";

fn key() -> String {
    std::env::var(KEY_ENV).unwrap()
}

fn provider(id: &str, kind: &str, fake: &Fake, profile: Option<&str>) -> Value {
    let base = if kind == "dashscope" { fake.url() } else { format!("{}/v1", fake.url()) };
    let mut table = json!({
        "id": id, "kind": kind, "base_url": base, "api_key_env": KEY_ENV,
        "allow_hosts": [format!("http://{}", fake.addr)],
        "timeout_secs": 5.0, "retries": 1, "backoff_base_secs": 0.01, "backoff_max_secs": 0.02,
        "poll_interval_secs": 0.01, "poll_max_interval_secs": 0.02,
    });
    if let Some(profile) = profile {
        table["profile"] = json!(profile);
    }
    table
}

fn model(id: &str, targets: Value) -> easel_server::config::ModelConfig {
    let mut options = serde_json::Map::new();
    options.insert("targets".into(), targets);
    easel_server::config::ModelConfig { id: id.into(), backend: "upstream".into(), response_format: None, options }
}

async fn gateway_app(
    providers: Vec<Value>,
    models: Vec<easel_server::config::ModelConfig>,
    enhancer: Option<Value>,
) -> TestApp {
    spawn_app_with(
        move |c| {
            c.providers = providers;
            c.models = models;
            c.prompt_enhancer = enhancer;
        },
        Vec::new(),
    )
    .await
}

/// An app whose model `relay` is gpt-image-1.5 on the fake OpenAI service.
async fn relay_app(fake: &Fake) -> TestApp {
    gateway_app(
        vec![provider("oa", "openai", fake, None)],
        vec![model("relay", json!([{"provider": "oa", "model": "gpt-image-1.5"}]))],
        None,
    )
    .await
}

#[tokio::test]
async fn qwen_dialect_to_an_openai_provider() {
    let fake = Fake::start(&key()).await;
    let app = relay_app(&fake).await;
    let body = json_body(
        app.generate(json!({
            "model": "relay",
            "input": {"messages": [{"role": "user", "content": "A serene mountain lake at dawn"}]},
            "parameters": {"size": "1536*1024", "n": 2},
        }))
        .await,
        200,
    )
    .await;
    assert_eq!(images(&body).len(), 2);
    assert_eq!(body["size"], "1536x1024");
    let sent = fake.hits("/v1/images/generations")[0].json.clone().unwrap();
    assert_eq!(
        (sent["model"].as_str(), sent["prompt"].as_str()),
        (Some("gpt-image-1.5"), Some("A serene mountain lake at dawn"))
    );
    assert_eq!((sent["n"].as_u64(), sent["size"].as_str()), (Some(2), Some("1536x1024")));
    assert!(sent.get("response_format").is_none(), "gpt-image rejects response_format: {sent}");
}

#[tokio::test]
async fn ig1_gaps_are_filled_n_fan_out_and_mask_compositing() {
    let fake = Fake::start(&key()).await;
    let app = gateway_app(
        vec![provider("ig1", "openai", &fake, Some("ig1"))],
        vec![model("qwen-image-edit", json!([{"provider": "ig1", "model": "qwen-image-edit"}]))],
        None,
    )
    .await;
    let form = Form::new()
        .text("model", "qwen-image-edit")
        .text("prompt", "snake instead of the iguana")
        .text("n", "3")
        .text("size", "1280x720")
        .text("response_format", "url")
        .part("image", file_part(png(1280, 720, [1, 2, 3]), "a.png"))
        .part("mask", file_part(mask(1280, 720, |x, _| if x < 640 { 255 } else { 0 }), "m.png"));
    let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "IG1 makes one image per call; Easel fans out");
    assert_eq!(fake.hits("/v1/images/edits").len(), 3);
    let hosted = app.client.get(data[0]["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    let out = image::load_from_memory(&hosted).unwrap().to_rgb8();
    assert_eq!(out.get_pixel(10, 10).0, [1, 2, 3], "IG1 ignores masks; Easel composites the kept half");
    assert_ne!(out.get_pixel(1200, 10).0, [1, 2, 3]);
    let sent = &fake.hits("/v1/images/edits")[0];
    assert!(
        sent.json
            .as_ref()
            .is_some_and(|j| j["images"][0]["image_url"].as_str().unwrap().starts_with("data:image/png;base64,"))
    );
}

#[tokio::test]
async fn dashscope_async_task_with_revised_prompt_and_hosted_url() {
    let fake = Fake::start(&key()).await;
    let app = gateway_app(
        vec![provider("dash", "dashscope", &fake, None)],
        vec![model("wanx-v1", json!([{"provider": "dash", "model": "wanx-v1"}]))],
        None,
    )
    .await;
    let body = json_body(
        app.generate(json!({"model": "wanx-v1", "prompt": "a red fox in the snow", "size": "1280x720", "response_format": "url"})).await,
        200,
    )
    .await;
    assert_eq!(body["data"][0]["revised_prompt"], "a red fox in the snow (extended)");
    let hosted = app.client.get(body["data"][0]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(hosted.status(), 200);
    assert_eq!(fake.hits("text2image/image-synthesis")[0].headers["x-dashscope-async"], "enable");
}

#[tokio::test]
async fn failures_after_retries_are_502_and_not_retried_by_sdks() {
    let fake = Fake::start(&key()).await;
    let app = relay_app(&fake).await;
    for _ in 0..2 {
        fake.push(Reply::Json(
            500,
            json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}}),
            vec![],
        ));
    }
    let response = app.generate(json!({"model": "relay", "prompt": "p"})).await;
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert_error(response, 502, None, "upstream_error").await;
    // The retry and the failed-over target show in the metrics.
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("easel_upstream_retries_total{") && l.ends_with(" 1")), "{metrics}");
    assert!(metrics.contains("easel_upstream_fallbacks_total{model=\"relay\"}"), "{metrics}");
    assert!(metrics.contains("easel_upstream_circuit_open{"), "{metrics}");
    fake.push(Reply::Json(400, json!({"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error", "param": null, "code": "moderation_blocked"}}), vec![]));
    let response = app.generate(json!({"model": "relay", "prompt": "p"})).await;
    // Kept as OpenAI sends it: GPT image's moderation is not renamed content_policy_violation.
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body = json_body(response, 400).await;
    assert_eq!(body["error"]["code"], "moderation_blocked", "{body}");
    assert_eq!(body["error"]["type"], "image_generation_user_error", "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
}

#[tokio::test]
async fn prompt_enhanced_models_return_the_rewrite() {
    let fake = Fake::start(&key()).await;
    let enhancer = json!({"base_url": format!("{}/v1", fake.url()), "api_key_env": KEY_ENV, "model": "qwen-plus"});
    let app = gateway_app(
        vec![provider("oa", "openai", &fake, None)],
        vec![model("relay-pe", json!([{"provider": "oa", "model": "gpt-image-1.5"}]))],
        Some(enhancer),
    )
    .await;
    let body = json_body(app.generate(json!({"model": "relay-pe", "prompt": "a cat", "n": 2})).await, 200).await;
    // The provider revises the prompt again (as dall-e-3 does), and the last revision is the one
    // actually used; the rewrite is what the provider received.
    assert_eq!(body["data"][0]["revised_prompt"], "a revised prompt");
    assert_eq!(fake.hits("/v1/chat/completions").len(), 1, "one rewrite per request");
    assert_eq!(fake.hits("/v1/images/generations")[0].json.as_ref().unwrap()["prompt"], "ENHANCED: a cat");
}

#[tokio::test]
async fn upstream_partial_images_stream_through() {
    let fake = Fake::start(&key()).await;
    let app = relay_app(&fake).await;
    let response = app
        .generate(json!({"model": "relay", "prompt": "p", "stream": true, "partial_images": 2, "size": "1024x1024"}))
        .await;
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let kinds = crate::helpers::sse_event_kinds(&text);
    assert_eq!(
        kinds,
        ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"]
    );
    assert_eq!(fake.hits("/v1/images/generations")[0].json.as_ref().unwrap()["stream"], true);
}

/// The Qwen dialect's DashScope switches reach DashScope in `parameters`, under their own names,
/// with `steps` kept away from a model that takes none.
#[tokio::test]
async fn the_qwen_dialect_s_switches_reach_dashscope() {
    let fake = Fake::start(&key()).await;
    let app = gateway_app(
        vec![provider("dash", "dashscope", &fake, None)],
        vec![model("wanx-v1", json!([{"provider": "dash", "model": "wanx-v1"}]))],
        None,
    )
    .await;
    let body = json!({
        "model": "wanx-v1",
        "input": {"messages": [{"role": "user", "content": "a red fox in the snow"}]},
        "parameters": {"size": "1280*720", "n": 1, "prompt_extend": false, "watermark": true, "style": "<watercolor>"},
    });
    json_body(app.generate(body).await, 200).await;
    let sent = fake.hits("text2image/image-synthesis")[0].json.clone().unwrap();
    let p = &sent["parameters"];
    assert_eq!(
        (&p["prompt_extend"], &p["watermark"], &p["style"]),
        (&json!(false), &json!(true), &json!("<watercolor>"))
    );
    assert_eq!(p["size"], "1280*720");
}

/// The PNG compression rule holds for upstream models too, and nothing is sent (or billed).
#[tokio::test]
async fn png_output_compression_is_refused_before_any_provider_call() {
    let fake = Fake::start(&key()).await;
    let app = relay_app(&fake).await;
    let response = app.generate(json!({"model": "relay", "prompt": "p", "output_compression": 80})).await;
    assert_error(response, 400, Some("output_compression"), "invalid_png_output_compression").await;
    assert!(fake.hits("generations").is_empty(), "the provider was never called");
    let webp = json!({"model": "relay", "prompt": "p", "output_format": "webp", "output_compression": 80});
    json_body(app.generate(webp).await, 200).await;
}

/// `response_format` in `[[models]]` is that model's default; the server-wide default stays for
/// the others, and a request's own value wins over both.
#[tokio::test]
async fn a_model_s_own_response_format_is_its_default() {
    let fake = Fake::start(&key()).await;
    let mut hosted = model("dall-e", json!([{"provider": "oa", "model": "gpt-image-1.5"}]));
    hosted.response_format = Some(easel_core::types::ResponseFormat::Url);
    let plain = model("gpt", json!([{"provider": "oa", "model": "gpt-image-1.5"}]));
    let app = gateway_app(vec![provider("oa", "openai", &fake, None)], vec![hosted, plain], None).await;
    let body = json_body(app.generate(json!({"model": "dall-e", "prompt": "p"})).await, 200).await;
    let url = body["data"][0]["url"].as_str().expect("a hosted URL by the model's default");
    assert_eq!(app.client.get(url).send().await.unwrap().status(), 200);
    assert!(body["data"][0].get("b64_json").is_none(), "{body}");
    let own = json!({"model": "dall-e", "prompt": "p", "response_format": "b64_json"});
    let body = json_body(app.generate(own).await, 200).await;
    assert!(body["data"][0]["b64_json"].is_string(), "the request's own value wins: {body}");
    let body = json_body(app.generate(json!({"model": "gpt", "prompt": "p"})).await, 200).await;
    assert!(body["data"][0]["b64_json"].is_string(), "the server's default for the others: {body}");
}

/// A result link refused by `allow_hosts` although its host is listed (another scheme or port)
/// names the entry, and the one that would allow it; a host listed nowhere gets only "not allowed".
#[tokio::test]
async fn a_refused_result_link_names_the_entry_that_would_allow_it() {
    let fake = Fake::start(&key()).await;
    let port = fake.addr.port();
    let mut dash = provider("dash", "dashscope", &fake, None);
    dash["allow_hosts"] = json!(["127.0.0.1"]);
    let app =
        gateway_app(vec![dash], vec![model("wanx-v1", json!([{"provider": "dash", "model": "wanx-v1"}]))], None).await;
    let response = app.generate(json!({"model": "wanx-v1", "prompt": "a fox", "size": "1280x720"})).await;
    let message = assert_error(response, 502, None, "upstream_error").await;
    assert!(message.contains("host '127.0.0.1' is listed as 'https://127.0.0.1'"), "{message}");
    assert!(message.contains(&format!("http on port {port}")), "{message}");
    assert!(message.contains(&format!("'http://127.0.0.1:{port}' would allow it")), "{message}");

    let fake = Fake::start(&key()).await;
    let mut dash = provider("dash", "dashscope", &fake, None);
    dash["allow_hosts"] = json!(["images.example.com"]);
    let app =
        gateway_app(vec![dash], vec![model("wanx-v1", json!([{"provider": "dash", "model": "wanx-v1"}]))], None).await;
    let response = app.generate(json!({"model": "wanx-v1", "prompt": "a fox", "size": "1280x720"})).await;
    let message = assert_error(response, 502, None, "upstream_error").await;
    assert!(message.contains("do not allow") && !message.contains("listed as"), "{message}");
}

/// A provider's base64 that needs no change reaches the client as the same text with its
/// Content-Length (the image row records its decoded length, a hosted copy its decoded bytes);
/// one that needs a change (another format, another size) is decoded and made again. Canonical
/// base64 has one text per image, so this cannot tell sharing from decoding and encoding again:
/// the unit tests of `postprocess.rs`, `media.rs` and `response.rs` prove the text is shared.
#[tokio::test]
async fn relayed_base64_passes_through_verbatim_only_when_nothing_changes() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let fake = Fake::start(&key()).await;
    let app = relay_app(&fake).await;
    let answer =
        |image: &[u8]| Reply::Json(200, json!({"created": 1, "data": [{"b64_json": STANDARD.encode(image)}]}), vec![]);
    let made = png(1024, 1024, [10, 20, 30]);
    let text = STANDARD.encode(&made);
    let request = json!({"model": "relay", "prompt": "p", "size": "1024x1024"});

    fake.push(answer(&made));
    let response = app.generate(request.clone()).await;
    let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let raw = response.bytes().await.unwrap();
    assert_eq!(raw.len(), length, "the length is announced");
    let body: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(body["data"][0]["b64_json"].as_str(), Some(text.as_str()), "the provider's text, unchanged");
    assert_eq!((body["size"].as_str(), body["output_format"].as_str()), (Some("1024x1024"), Some("png")));
    let recorded: i64 = sqlx::query_scalar("SELECT bytes FROM images").fetch_one(&app.app_state.db).await.unwrap();
    assert_eq!(recorded as usize, made.len(), "the image row counts the image's bytes, not its base64");

    let mut hosted = request.clone();
    hosted["response_format"] = json!("url");
    fake.push(answer(&made));
    let body = json_body(app.generate(hosted).await, 200).await;
    let file = app.client.get(body["data"][0]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(file.bytes().await.unwrap(), made, "hosted as the decoded image");

    let mut jpeg = request.clone();
    jpeg["output_format"] = json!("jpeg");
    fake.push(answer(&made));
    let body = json_body(app.generate(jpeg).await, 200).await;
    let converted = STANDARD.decode(body["data"][0]["b64_json"].as_str().unwrap()).unwrap();
    assert!(converted.starts_with(&[0xFF, 0xD8, 0xFF]), "converted to JPEG");

    fake.push(answer(&png(512, 512, [10, 20, 30])));
    let body = json_body(app.generate(request).await, 200).await;
    let resized = STANDARD.decode(body["data"][0]["b64_json"].as_str().unwrap()).unwrap();
    assert_eq!(image::load_from_memory(&resized).unwrap().width(), 1024, "resized to the size asked for");
}
