//! The same HTTP cases against every kind of backend, through the whole server: the in-test
//! backend, OpenAI-compatible and DashScope providers (fakes that implement their protocols), and
//! another Easel node. Whatever a backend lacks, the client sees the same behaviour.

use easel_upstream::testing::{Fake, Reply};
use reqwest::multipart::Form;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, file_part, images, json_body, mask, png, spawn_app, spawn_app_with};

const KEY_ENV: &str = "CARGO_PKG_NAME";

/// What one backend must do, through the HTTP API.
async fn conformance(app: &TestApp, model: &str, edit_model: Option<&str>) {
    // n images of the requested size, with usage.
    let body =
        json_body(app.generate(json!({"model": model, "prompt": "a red fox", "n": 2, "size": "96x64"})).await, 200)
            .await;
    let pictures = images(&body);
    assert_eq!(pictures.len(), 2, "{model}: n");
    assert!(pictures.iter().all(|p| (p.width(), p.height()) == (96, 64)), "{model}: size");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0, "{model}: usage");

    // Another format, hosted.
    let body = json_body(
        app.generate(
            json!({"model": model, "prompt": "p", "size": "64x64", "output_format": "webp", "response_format": "url"}),
        )
        .await,
        200,
    )
    .await;
    let hosted = app.client.get(body["data"][0]["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(hosted.headers()["content-type"], "image/webp", "{model}: format");

    // A stream that ends with a completed event of the right size.
    let text = app
        .generate(json!({"model": model, "prompt": "p", "size": "64x64", "stream": true}))
        .await
        .text()
        .await
        .unwrap();
    let last = text.lines().rev().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(
        (last["type"].as_str(), last["size"].as_str()),
        (Some("image_generation.completed"), Some("64x64")),
        "{model}"
    );

    // A size the model cannot make.
    assert_error(
        app.generate(json!({"model": model, "prompt": "p", "size": "1001x1001"})).await,
        400,
        Some("size"),
        "invalid_value",
    )
    .await;

    // An edit with a mask keeps the opaque half of the source exactly.
    if let Some(edit_model) = edit_model {
        let form = Form::new()
            .text("model", edit_model.to_string())
            .text("prompt", "paint the right half")
            .text("size", "64x64")
            .part("image", file_part(png(64, 64, [12, 34, 56]), "a.png"))
            .part("mask", file_part(mask(64, 64, |x, _| if x < 32 { 255 } else { 0 }), "m.png"));
        let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
        assert_eq!(images(&body)[0].to_rgb8().get_pixel(4, 4).0, [12, 34, 56], "{edit_model}: mask");
    }
}

fn provider(id: &str, kind: &str, base_url: String, allow: &Fake) -> Value {
    json!({
        "id": id, "kind": kind, "base_url": base_url, "api_key_env": KEY_ENV,
        "allow_hosts": [format!("http://{}", allow.addr)],
        "retries": 0, "timeout_secs": 10.0, "poll_interval_secs": 0.01, "poll_max_interval_secs": 0.02,
    })
}

fn upstream_model(id: &str, provider: &str, name: &str) -> easel_server::config::ModelConfig {
    let mut options = serde_json::Map::new();
    options.insert("targets".into(), json!([{"provider": provider, "model": name}]));
    options.insert("sizes".into(), json!({"min_edge": 16, "max_edge": 2048, "multiple_of": 16}));
    easel_server::config::ModelConfig { id: id.into(), backend: "upstream".into(), response_format: None, options }
}

async fn gateway(providers: Vec<Value>, models: Vec<easel_server::config::ModelConfig>) -> TestApp {
    spawn_app_with(
        move |c| {
            c.providers = providers;
            c.models = models;
        },
        Vec::new(),
    )
    .await
}

#[tokio::test]
async fn the_test_backend() {
    conformance(&spawn_app().await, "test-image", Some("test-image")).await;
}

#[tokio::test]
async fn an_openai_compatible_provider() {
    let fake = Fake::start(&std::env::var(KEY_ENV).unwrap()).await;
    let app = gateway(
        vec![provider("oa", "openai", format!("{}/v1", fake.url()), &fake)],
        vec![upstream_model("gpt", "oa", "gpt-image-1.5")],
    )
    .await;
    conformance(&app, "gpt", Some("gpt")).await;
}

#[tokio::test]
async fn a_dashscope_provider() {
    let fake = Fake::start(&std::env::var(KEY_ENV).unwrap()).await;
    let app = gateway(
        vec![provider("dash", "dashscope", fake.url(), &fake)],
        vec![
            upstream_model("wanx-v1", "dash", "wanx-v1"),
            upstream_model("qwen-image-edit", "dash", "qwen-image-edit"),
        ],
    )
    .await;
    conformance(&app, "wanx-v1", Some("qwen-image-edit")).await;
}

#[tokio::test]
async fn another_easel_node() {
    let node = spawn_app().await;
    let fake = Fake::start(&std::env::var(KEY_ENV).unwrap()).await;
    let app = gateway(
        vec![provider("node", "easel", format!("{}/v1", node.address), &fake)],
        vec![upstream_model("remote", "node", "test-image")],
    )
    .await;
    conformance(&app, "remote", Some("remote")).await;
}

/// GPT image picks the quality for `auto` itself: Easel passes `auto` on (no `quality` sent)
/// and reports `auto`, not a quality it made up; an explicit quality is sent and reported as is.
#[tokio::test]
async fn gpt_image_picks_the_quality_for_auto_itself() {
    let fake = Fake::start(&std::env::var(KEY_ENV).unwrap()).await;
    let app = gateway(
        vec![provider("oa", "openai", format!("{}/v1", fake.url()), &fake)],
        vec![upstream_model("gpt", "oa", "gpt-image-1.5")],
    )
    .await;
    let body = json_body(app.generate(json!({"model": "gpt", "prompt": "p", "size": "1024x1024"})).await, 200).await;
    assert_eq!(body["quality"], "auto", "{body}");
    let sent = fake.hits("generations").pop().unwrap().json.unwrap();
    assert!(sent.get("quality").is_none(), "{sent}");
    let body = json_body(
        app.generate(json!({"model": "gpt", "prompt": "p", "size": "1024x1024", "quality": "low"})).await,
        200,
    )
    .await;
    assert_eq!(body["quality"], "low");
    assert_eq!(fake.hits("generations").pop().unwrap().json.unwrap()["quality"], "low");
}

/// GPT image picks the size for `size=auto` itself (it picks the orientation): Easel sends
/// `auto` and delivers and reports what the provider made and says it used, never resized to a
/// guess; an explicit size is sent as it is.
#[tokio::test]
async fn gpt_image_picks_the_size_for_auto_itself() {
    use base64::Engine as _;
    let fake = Fake::start(&std::env::var(KEY_ENV).unwrap()).await;
    let app = gateway(
        vec![provider("oa", "openai", format!("{}/v1", fake.url()), &fake)],
        vec![upstream_model("gpt", "oa", "gpt-image-1.5")],
    )
    .await;
    let made = base64::engine::general_purpose::STANDARD.encode(png(1536, 1024, [9, 9, 9]));
    fake.push(Reply::Json(
        200,
        json!({"created": 1, "data": [{"b64_json": made}], "size": "1536x1024", "quality": "medium",
            "background": "opaque", "output_format": "png"}),
        Vec::new(),
    ));
    let body = json_body(app.generate(json!({"model": "gpt", "prompt": "p", "size": "auto"})).await, 200).await;
    let sent = fake.hits("generations").pop().unwrap().json.unwrap();
    assert_eq!(sent["size"], "auto", "{sent}");
    assert!(sent.get("quality").is_none(), "{sent}");
    assert_eq!((body["size"].as_str(), body["quality"].as_str()), (Some("1536x1024"), Some("medium")), "{body}");
    let image = &images(&body)[0];
    assert_eq!((image.width(), image.height()), (1536, 1024), "kept as the provider made it");

    json_body(app.generate(json!({"model": "gpt", "prompt": "p", "size": "1024x1536"})).await, 200).await;
    assert_eq!(fake.hits("generations").pop().unwrap().json.unwrap()["size"], "1024x1536");
}

/// A service that does not pick sizes itself gets the size Easel resolves for `auto`.
#[tokio::test]
async fn other_providers_get_a_concrete_size_for_auto() {
    let fake = Fake::start(&std::env::var(KEY_ENV).unwrap()).await;
    let app = gateway(
        vec![provider("oa", "openai", format!("{}/v1", fake.url()), &fake)],
        vec![upstream_model("d3", "oa", "dall-e-3")],
    )
    .await;
    let body = json_body(app.generate(json!({"model": "d3", "prompt": "p", "size": "auto"})).await, 200).await;
    assert_eq!(fake.hits("generations").pop().unwrap().json.unwrap()["size"], "1024x1024");
    assert_eq!(body["size"], "1024x1024");
}

/// Streamed, the `completed` event reports what the provider's own `completed` event says it
/// made.
#[tokio::test]
async fn a_streamed_gpt_image_reports_what_the_provider_made() {
    use base64::Engine as _;
    let fake = Fake::start(&std::env::var(KEY_ENV).unwrap()).await;
    let app = gateway(
        vec![provider("oa", "openai", format!("{}/v1", fake.url()), &fake)],
        vec![upstream_model("gpt", "oa", "gpt-image-1.5")],
    )
    .await;
    let b64 = |w, h| base64::engine::general_purpose::STANDARD.encode(png(w, h, [9, 9, 9]));
    fake.push(Reply::Sse(vec![
        json!({"type": "image_generation.partial_image", "b64_json": b64(8, 8), "partial_image_index": 0,
            "size": "auto", "quality": "auto", "background": "auto", "output_format": "png"}),
        json!({"type": "image_generation.completed", "b64_json": b64(1024, 1536), "size": "1024x1536",
            "quality": "low", "background": "opaque", "output_format": "png"}),
    ]));
    let response = app.generate(json!({"model": "gpt", "prompt": "p", "stream": true, "partial_images": 1})).await;
    let text = response.text().await.unwrap();
    assert_eq!(fake.hits("generations").pop().unwrap().json.unwrap()["size"], "auto");
    let completed: Value = text
        .split("\n\n")
        .filter(|event| event.starts_with("event: image_generation.completed"))
        .find_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .unwrap_or_else(|| panic!("no completed event in {text}"));
    assert_eq!((completed["size"].as_str(), completed["quality"].as_str()), (Some("1024x1536"), Some("low")));
    assert_eq!(images(&json!({"data": [completed]}))[0].height(), 1536, "kept as the provider made it");
}
