//! Every error case of the Images API, in OpenAI's envelope with the right status and `param`.

use std::time::Duration;

use easel_core::error::BackendError;
use reqwest::multipart::Form;
use serde_json::{Value, json};

use crate::helpers::{assert_error, data_url, file_part, json_body, mask, png, spawn_app, spawn_app_with, test_models};

#[tokio::test]
async fn parameter_errors_name_the_parameter() {
    let app = spawn_app().await;
    let cases = [
        (json!({"model": "test-image"}), 400, Some("prompt"), "missing_required_parameter"),
        (json!({"model": "test-image", "prompt": "  "}), 400, Some("prompt"), "missing_required_parameter"),
        (json!({"model": "test-image", "prompt": "p", "n": 11}), 400, Some("n"), "integer_above_max_value"),
        (json!({"model": "test-image", "prompt": "p", "n": 0}), 400, Some("n"), "integer_below_min_value"),
        (json!({"model": "test-image", "prompt": "p", "n": "many"}), 400, Some("n"), "invalid_type"),
        (json!({"model": "test-image", "prompt": "p", "n": -1}), 400, Some("n"), "integer_below_min_value"),
        (json!({"model": "test-image", "prompt": "p", "steps": 501}), 400, Some("steps"), "integer_above_max_value"),
        (
            json!({"model": "test-image", "prompt": "p", "guidance_scale": -1}),
            400,
            Some("guidance_scale"),
            "invalid_value",
        ),
        (json!({"model": "test-dalle", "prompt": "p", "n": 2}), 400, Some("n"), "integer_above_max_value"),
        (json!({"model": "test-image", "prompt": "p", "size": "1001x1001"}), 400, Some("size"), "invalid_value"),
        (json!({"model": "test-image", "prompt": "p", "size": "4096x4096"}), 400, Some("size"), "invalid_value"),
        (json!({"model": "test-dalle", "prompt": "p", "size": "1024x1024"}), 400, Some("size"), "invalid_value"),
        (json!({"model": "test-dalle", "prompt": "p", "quality": "low"}), 400, Some("quality"), "invalid_value"),
        (json!({"model": "test-dalle", "prompt": "p".repeat(41)}), 400, Some("prompt"), "invalid_value"),
        (json!({"model": "test-image", "prompt": "p", "foo": 1}), 400, Some("foo"), "unknown_parameter"),
        (
            json!({"model": "test-image", "prompt": "p", "output_format": "gif"}),
            400,
            Some("output_format"),
            "invalid_value",
        ),
        (
            json!({"model": "test-image", "prompt": "p", "output_compression": 101}),
            400,
            Some("output_compression"),
            "integer_above_max_value",
        ),
        (
            json!({"model": "test-image", "prompt": "p", "background": "transparent", "output_format": "jpeg"}),
            400,
            Some("output_format"),
            "invalid_value",
        ),
        (
            json!({"model": "test-fixed", "prompt": "p", "background": "transparent"}),
            400,
            Some("background"),
            "invalid_value",
        ),
        (
            json!({"model": "test-image", "prompt": "p", "response_format": "file"}),
            400,
            Some("response_format"),
            "invalid_value",
        ),
        (json!({"model": "nope", "prompt": "p"}), 404, Some("model"), "model_not_found"),
    ];
    for (body, status, param, code) in cases {
        let message = assert_error(app.generate(body.clone()).await, status, param, code).await;
        assert!(!message.is_empty(), "{body}");
    }
}

#[tokio::test]
async fn lenient_mode_ignores_unknown_parameters() {
    let app =
        spawn_app_with(|c| c.server.unknown_parameters = easel_wire::request::UnknownParams::Ignore, test_models())
            .await;
    json_body(app.generate(json!({"model": "test-image", "prompt": "p", "foo": 1, "bar": {"x": 2}})).await, 200).await;
}

#[tokio::test]
async fn malformed_bodies_and_media_types() {
    let app = spawn_app().await;
    let url = app.url("/v1/images/generations");
    let response =
        app.client.post(&url).header("content-type", "application/json").body("{\"prompt\": ").send().await.unwrap();
    assert_error(response, 400, None, "invalid_json").await;
    let response =
        app.client.post(&url).header("content-type", "application/json").body("[1, 2]").send().await.unwrap();
    assert_error(response, 400, None, "invalid_json").await;
    let response = app.client.post(&url).header("content-type", "text/plain").body("draw a cat").send().await.unwrap();
    assert_error(response, 415, None, "unsupported_media_type").await;
    let edits = app.url("/v1/images/edits");
    let response = app
        .client
        .post(&edits)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, None, "invalid_multipart").await;
    let response =
        app.client.post(&edits).header("content-type", "multipart/form-data").body("x").send().await.unwrap();
    assert_error(response, 400, None, "invalid_multipart").await;
    let response = app.client.post(&edits).header("content-type", "application/xml").body("<x/>").send().await.unwrap();
    assert_error(response, 415, None, "unsupported_media_type").await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_a_413() {
    let app = spawn_app_with(|c| c.server.max_body_bytes = 4096, test_models()).await;
    let big = json!({"model": "test-image", "prompt": "p".repeat(8000)});
    assert_error(app.generate(big).await, 413, None, "request_too_large").await;
    let form = Form::new().text("prompt", "p").part("image", file_part(vec![0x89; 9000], "big.png"));
    assert_error(app.post_form("/v1/images/edits", form).await, 413, None, "request_too_large").await;
}

#[tokio::test]
async fn image_errors() {
    let app = spawn_app().await;
    let edit = |form: Form| app.post_form("/v1/images/edits", form);
    let form = Form::new()
        .text("prompt", "p")
        .text("model", "test-image")
        .part("image", file_part(b"not an image".to_vec(), "x.png"));
    // OpenAI sends `param: null` for an unusable image; the message says which.
    let message = assert_error(edit(form).await, 400, None, "invalid_image_file").await;
    assert!(message.contains("'image'"), "{message}");
    let form = Form::new()
        .text("prompt", "p")
        .text("model", "test-image")
        .part("image", file_part(png(32, 32, [1, 2, 3]), "a.png"))
        .part("mask", file_part(mask(16, 16, |_, _| 0), "m.png"));
    assert_error(edit(form).await, 400, Some("mask"), "invalid_value").await;
    let form = Form::new()
        .text("prompt", "p")
        .text("model", "test-image")
        .part("image", file_part(png(16, 16, [1, 2, 3]), "a.png"))
        .part("mask", file_part(png(16, 16, [0, 0, 0]), "m.png"));
    let message = assert_error(edit(form).await, 400, None, "invalid_image_file").await;
    assert!(message.contains("'mask'"), "{message}");
    let mut form = Form::new().text("prompt", "p").text("model", "test-image");
    for _ in 0..17 {
        form = form.part("image[]", file_part(png(8, 8, [1, 2, 3]), "a.png"));
    }
    assert_error(edit(form).await, 400, Some("image"), "too_many_images").await;
    let form = Form::new().text("prompt", "p").text("model", "test-image").text("image", "<string>");
    assert_error(edit(form).await, 400, Some("image"), "invalid_type").await;
    let form = Form::new().text("prompt", "p").text("model", "test-image");
    assert_error(edit(form).await, 400, Some("image"), "missing_required_parameter").await;
    let form = Form::new()
        .text("prompt", "p")
        .text("model", "test-dalle")
        .part("image", file_part(png(8, 8, [1, 2, 3]), "a.png"));
    assert_error(edit(form).await, 400, Some("model"), "unsupported_operation").await;

    assert_error(
        app.post_json(
            "/v1/images/edits",
            &json!({"prompt": "p", "model": "test-image", "images": [{"file_id": "file-123"}]}),
        )
        .await,
        400,
        Some("images[0].file_id"),
        "unsupported_file_id",
    )
    .await;
    assert_error(
        app.post_json(
            "/v1/images/edits",
            &json!({"prompt": "p", "model": "test-image", "images": [{"image_url": "https://example.com/a.png"}]}),
        )
        .await,
        400,
        Some("images[0].image_url"),
        "invalid_image_url",
    )
    .await;
    assert_error(
        app.post_json(
            "/v1/images/edits",
            &json!({"prompt": "p", "model": "test-image", "images": [{"image_url": "data:image/png;base64,!!!"}]}),
        )
        .await,
        400,
        Some("images[0].image_url"),
        "invalid_image_url",
    )
    .await;
    assert_error(
        app.post_json(
            "/v1/images/edits",
            &json!({"prompt": "p", "model": "test-image", "images": [{"image_url": data_url(b"GIF89a....")}]}),
        )
        .await,
        400,
        None,
        "invalid_image_file",
    )
    .await;
    assert_error(
        app.post_json("/v1/images/edits", &json!({"prompt": "p", "model": "test-image", "images": []})).await,
        400,
        Some("image"),
        "missing_required_parameter",
    )
    .await;
}

#[tokio::test]
async fn backend_failures_map_to_statuses() {
    let app = spawn_app().await;
    let backend = app.backend("test-image");
    *backend.fail_with.lock().unwrap() = Some(BackendError::Overloaded { retry_after: Duration::from_secs(3) });
    let response = app.generate(json!({"model": "test-image", "prompt": "p"})).await;
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(response.headers()["x-should-retry"], "true");
    assert_error(response, 503, None, "overloaded").await;
    *backend.fail_with.lock().unwrap() = Some(BackendError::Internal(anyhow::anyhow!("the GPU caught fire")));
    let response = app.generate(json!({"model": "test-image", "prompt": "p"})).await;
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body = json_body(response, 500).await;
    // The one body of every internal failure: OpenAI's, with a null code.
    assert_eq!(
        (body["error"]["type"].as_str(), &body["error"]["code"]),
        (Some("server_error"), &Value::Null),
        "{body}"
    );
    assert!(!body["error"]["message"].as_str().unwrap().contains("fire"), "internal details stay in the logs");
    *backend.fail_with.lock().unwrap() =
        Some(BackendError::InvalidInput { param: Some("image".into()), message: "too many".into() });
    assert_error(
        app.generate(json!({"model": "test-image", "prompt": "p"})).await,
        400,
        Some("image"),
        "invalid_value",
    )
    .await;
    *backend.fail_with.lock().unwrap() = Some(BackendError::ContentPolicy { message: "no".into() });
    assert_error(
        app.generate(json!({"model": "test-image", "prompt": "p"})).await,
        400,
        None,
        "content_policy_violation",
    )
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let app = spawn_app().await;
    assert_error(app.client.get(app.url("/v1/nothing")).send().await.unwrap(), 404, None, "unknown_url").await;
    assert_error(
        app.client.get(app.url("/v1/images/generations")).send().await.unwrap(),
        405,
        None,
        "method_not_allowed",
    )
    .await;
}
