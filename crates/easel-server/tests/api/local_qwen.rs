//! A tiny random Qwen-Image model (`easel models create-random --family qwen-image`, the real CLI)
//! served through the HTTP API: the OpenAI route and the Qwen `input.messages` dialect, seeds and
//! `n`, true CFG with a negative prompt, streaming partial images, the Lightning preset, and
//! what the family refuses (edits) before any compute.

use std::path::PathBuf;

use reqwest::multipart::Form;
use serde_json::json;

use crate::helpers::{
    TestApp, assert_error, b64_bytes, file_part, images, json_body, png, random_model, spawn_local, wait_ready,
};

/// One tiny qwen-image folder for the whole test binary.
fn model_dir() -> PathBuf {
    random_model(&["--family", "qwen-image", "--seed", "3"])
}

/// A server with the tiny model as `qwen` (plus `extra` `[[models]]` keys), once it is ready.
async fn qwen_app(extra: &[(&str, serde_json::Value)]) -> TestApp {
    let mut options = vec![
        ("family", json!("qwen-image")),
        ("path", json!(model_dir())),
        ("min_edge", json!(32)),
        ("default_size", json!("64x64")),
        ("steps", json!(3)),
    ];
    options.extend_from_slice(extra);
    let app = spawn_local("qwen", &options).await;
    wait_ready(&app).await;
    app
}

#[tokio::test]
async fn qwen_image_generates_by_seed_with_and_without_true_cfg() {
    let app = qwen_app(&[]).await;
    let request = json!({"model": "qwen", "prompt": "a lighthouse", "n": 2, "seed": 5, "size": "64x32",
                         "guidance_scale": 1.0});
    let first = json_body(app.generate(request.clone()).await, 200).await;
    let pictures = images(&first);
    assert_eq!(pictures.len(), 2);
    assert!(pictures.iter().all(|p| (p.width(), p.height()) == (64, 32)));
    assert_ne!(b64_bytes(&first["data"][0]), b64_bytes(&first["data"][1]), "n images are distinct");
    let again = json_body(app.generate(request).await, 200).await;
    assert_eq!(b64_bytes(&first["data"][0]), b64_bytes(&again["data"][0]), "same seed, same bytes");
    // The second image of a batch is the first of the next seed, alone.
    let next = json!({"model": "qwen", "prompt": "a lighthouse", "seed": 6, "size": "64x32", "guidance_scale": 1.0});
    let next = json_body(app.generate(next).await, 200).await;
    assert_eq!(b64_bytes(&first["data"][1]), b64_bytes(&next["data"][0]), "seeds do not depend on batching");
    // True CFG (the family default scale 4 with a negative prompt) is another image.
    let guided = json!({"model": "qwen", "prompt": "a lighthouse", "seed": 5, "size": "64x32",
                        "negative_prompt": "fog"});
    let guided = json_body(app.generate(guided).await, 200).await;
    assert_ne!(b64_bytes(&first["data"][0]), b64_bytes(&guided["data"][0]), "guidance changes the image");
}

/// Seed 001's Qwen shape (`input.messages`, `parameters`) runs the same generation as the OpenAI
/// route with the same prompt, seed and size.
#[tokio::test]
async fn the_qwen_messages_dialect_makes_the_same_image() {
    let app = qwen_app(&[]).await;
    let qwen = json!({
        "model": "qwen",
        "input": {"messages": [{"role": "user", "content": "A serene mountain lake at dawn, photorealistic."}]},
        "parameters": {"size": "64*64", "seed": 11, "negative_prompt": "blur"},
        "response_format": "b64_json",
    });
    let body = json_body(app.generate(qwen).await, 200).await;
    let openai = json!({"model": "qwen", "prompt": "A serene mountain lake at dawn, photorealistic.",
                        "size": "64x64", "seed": 11, "negative_prompt": "blur"});
    let same = json_body(app.generate(openai).await, 200).await;
    assert_eq!(images(&body)[0].to_rgb8(), images(&same)[0].to_rgb8());
}

#[tokio::test]
async fn qwen_image_streams_partial_images() {
    let app = qwen_app(&[]).await;
    let text = app
        .generate(json!({"model": "qwen", "prompt": "p", "stream": true, "partial_images": 2, "size": "32x32"}))
        .await
        .text()
        .await
        .unwrap();
    let kinds = crate::helpers::sse_event_kinds(&text);
    assert_eq!(
        kinds,
        ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"]
    );
}

/// Qwen-Image makes images from text: an edit is refused before any compute, and so is a size
/// off its 16-pixel grid.
#[tokio::test]
async fn qwen_image_refuses_edits_and_sizes_off_its_grid() {
    let app = qwen_app(&[]).await;
    let form = Form::new()
        .text("model", "qwen")
        .text("prompt", "make it blue")
        .part("image", file_part(png(64, 64, [200, 10, 10]), "a.png"));
    let response = app.post_form("/v1/images/edits", form).await;
    assert_eq!(response.status(), 400, "{}", response.text().await.unwrap());
    assert_error(
        app.generate(json!({"model": "qwen", "prompt": "p", "size": "72x64"})).await,
        400,
        Some("size"),
        "invalid_value",
    )
    .await;
}

/// `preset = "lightning"`: Qwen-Image-Lightning's fixed-shift schedule, no CFG by default: the
/// same seed and steps as the folder's own schedule without CFG give another image.
#[tokio::test]
async fn the_lightning_preset_changes_the_schedule() {
    let request = json!({"model": "qwen", "prompt": "p", "seed": 1, "size": "32x32", "steps": 4});
    let lightning = qwen_app(&[("preset", json!("lightning"))]).await;
    let fast = json_body(lightning.generate(request.clone()).await, 200).await;
    let plain = qwen_app(&[("guidance_scale", json!(1.0))]).await;
    let slow = json_body(plain.generate(request).await, 200).await;
    assert_ne!(b64_bytes(&fast["data"][0]), b64_bytes(&slow["data"][0]));
}

/// The official Python SDK against the tiny model: what a text-to-image model does (its edits and
/// variations are refused, as `qwen_image_refuses_edits_and_sizes_off_its_grid` shows).
#[tokio::test]
async fn python_sdk_with_a_local_qwen_image_model() {
    let skip = [
        "test_edit_one_image",
        "test_edit_raw_bytes",
        "test_edit_list_of_images_with_mask",
        "test_edit_with_mask",
        "test_variations",
        "test_stream_edit",
    ];
    crate::sdk::run_sdk(crate::sdk::Sdk::Python, &qwen_app(&[]).await, "qwen", &skip).await;
}

#[tokio::test]
async fn node_sdk_with_a_local_qwen_image_model() {
    let skip = [
        "images.edit with a file stream (streaming multipart, octet-stream)",
        "images.edit with a list of images and a mask",
        "images.edit with a mask",
        "images.createVariation",
        "streaming edit",
    ];
    crate::sdk::run_sdk(crate::sdk::Sdk::Node, &qwen_app(&[]).await, "qwen", &skip).await;
}
