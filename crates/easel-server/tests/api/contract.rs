//! The contract a real client relies on, where Easel once differed from what it documents or from
//! OpenAI: errors name parameters as the client wrote them, one rule for PNG compression whatever
//! the model, and `strength` reaching the backend for variations. (The upstream side of each is in
//! `upstream.rs`, beside the fake providers.)

use reqwest::multipart::Form;
use serde_json::json;

use crate::helpers::{assert_error, file_part, json_body, png, spawn_app};

fn qwen(parameters: serde_json::Value) -> serde_json::Value {
    json!({
        "model": "test-image",
        "input": {"messages": [{"role": "user", "content": "a lake at dawn"}]},
        "parameters": parameters,
    })
}

/// Range errors found by the core, against the model, name `parameters.<name>` when the client
/// wrote the value under the Qwen dialect's `parameters`.
#[tokio::test]
async fn qwen_range_errors_name_the_parameters_object() {
    let app = spawn_app().await;
    let cases = [
        (json!({"n": 99}), "parameters.n", "integer_above_max_value"),
        (json!({"n": 0}), "parameters.n", "integer_below_min_value"),
        (json!({"size": "4*4"}), "parameters.size", "invalid_value"),
        (json!({"steps": 100_000}), "parameters.steps", "integer_above_max_value"),
        (json!({"guidance_scale": 99.0}), "parameters.guidance_scale", "invalid_value"),
        (json!({"strength": 2.0}), "parameters.strength", "invalid_value"),
    ];
    for (parameters, param, code) in cases {
        let message = assert_error(app.generate(qwen(parameters)).await, 400, Some(param), code).await;
        // A range message names the parameter too (a size's names the size).
        assert!(param == "parameters.size" || message.contains(param), "{param}: {message}");
    }
    // A top-level value wins over `parameters`, and is named as written.
    let mut body = qwen(json!({"n": 1}));
    body["n"] = json!(99);
    assert_error(app.generate(body).await, 400, Some("n"), "integer_above_max_value").await;
    // The OpenAI dialect is unchanged.
    let openai = json!({"model": "test-image", "prompt": "p", "n": 99});
    assert_error(app.generate(openai).await, 400, Some("n"), "integer_above_max_value").await;
}

/// DashScope's switches are accepted in the Qwen dialect whatever the model; a backend other
/// than DashScope ignores them.
#[tokio::test]
async fn dashscope_switches_are_ignored_by_other_backends() {
    let app = spawn_app().await;
    let body = qwen(json!({"prompt_extend": true, "watermark": false, "style": "<watercolor>", "n": 1}));
    let answer = json_body(app.generate(body).await, 200).await;
    assert_eq!(answer["data"].as_array().unwrap().len(), 1);
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.options.style, None, "wanx-v1's style is not DALL·E 3's");
}

/// PNG is lossless: a compression other than 100 with PNG output (the default) is OpenAI's 400
/// `invalid_png_output_compression`, for every model, before any backend runs.
#[tokio::test]
async fn png_output_compression_is_refused_for_every_local_model() {
    let app = spawn_app().await;
    for model in ["test-image", "test-encoded", "test-fixed"] {
        for body in [
            json!({"model": model, "prompt": "p", "output_compression": 50}),
            json!({"model": model, "prompt": "p", "output_format": "png", "output_compression": 0}),
        ] {
            let response = app.generate(body).await;
            assert_error(response, 400, Some("output_compression"), "invalid_png_output_compression").await;
        }
        assert_eq!(app.backend(model).calls.load(std::sync::atomic::Ordering::SeqCst), 0, "{model} never ran");
        let fine = json!({"model": model, "prompt": "p", "output_format": "png", "output_compression": 100});
        json_body(app.generate(fine).await, 200).await;
        let jpeg = json!({"model": model, "prompt": "p", "output_format": "jpeg", "output_compression": 50});
        json_body(app.generate(jpeg).await, 200).await;
    }
    let form = Form::new()
        .text("model", "test-image")
        .text("output_compression", "10")
        .part("image", file_part(png(16, 16, [1, 2, 3]), "a.png"));
    let response = app.post_form("/v1/images/variations", form).await;
    assert_error(response, 400, Some("output_compression"), "invalid_png_output_compression").await;
}

/// A variation starts from an image as an edit does: `strength` reaches the backend.
#[tokio::test]
async fn strength_reaches_the_backend_for_variations() {
    let app = spawn_app().await;
    let form = Form::new()
        .text("model", "test-image")
        .text("strength", "0.3")
        .part("image", file_part(png(16, 16, [1, 2, 3]), "a.png"));
    json_body(app.post_form("/v1/images/variations", form).await, 200).await;
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.options.extensions.strength, Some(0.3));
}
