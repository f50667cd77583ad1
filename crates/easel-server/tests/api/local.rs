//! A tiny random local model, made with `easel models create-random` (the real CLI) and served
//! through the HTTP API: generations, img2img and masked edits, variations, streaming, and the
//! official SDKs.

use std::path::PathBuf;
use std::process::Command;

use reqwest::multipart::Form;
use serde_json::json;

use crate::helpers::{
    TestApp, assert_error, b64_bytes, file_part, images, json_body, mask, png, random_model, spawn_local, wait_ready,
};
use crate::sdk::{Sdk, run_sdk};

/// One tiny sd-turbo folder (with a tiny autoencoder in `vae_tiny/`) for the whole test binary.
pub fn model_dir() -> PathBuf {
    random_model(&["--family", "sd-turbo", "--seed", "7", "--tiny-vae"])
}

/// A server with the tiny model as `turbo`, once it is ready.
pub async fn local_app() -> TestApp {
    local_app_with(&[]).await
}

/// The same with more `[[models]]` keys.
pub async fn local_app_with(extra: &[(&str, serde_json::Value)]) -> TestApp {
    let mut options = vec![
        ("family", json!("sd-turbo")),
        ("path", json!(model_dir())),
        ("min_edge", json!(32)),
        ("default_size", json!("64x64")),
        ("steps", json!(4)),
    ];
    options.extend_from_slice(extra);
    let app = spawn_local("turbo", &options).await;
    wait_ready(&app).await;
    app
}

#[tokio::test]
async fn generations_are_reproducible_by_seed() {
    let app = local_app().await;
    let request = json!({"model": "turbo", "prompt": "a lighthouse", "n": 2, "seed": 5, "size": "64x48"});
    let first = json_body(app.generate(request.clone()).await, 200).await;
    let pictures = images(&first);
    assert_eq!(pictures.len(), 2);
    assert!(pictures.iter().all(|p| (p.width(), p.height()) == (64, 48)));
    assert_ne!(b64_bytes(&first["data"][0]), b64_bytes(&first["data"][1]), "n images are distinct");
    let again = json_body(app.generate(request).await, 200).await;
    assert_eq!(b64_bytes(&first["data"][0]), b64_bytes(&again["data"][0]), "same seed, same bytes");
    let other = json_body(
        app.generate(json!({"model": "turbo", "prompt": "a lighthouse", "seed": 6, "size": "64x48"})).await,
        200,
    )
    .await;
    assert_ne!(b64_bytes(&first["data"][0]), b64_bytes(&other["data"][0]), "another seed, another image");
}

#[tokio::test]
async fn edits_img2img_masks_and_variations() {
    let app = local_app().await;
    let form = Form::new()
        .text("model", "turbo")
        .text("prompt", "make it blue")
        .text("strength", "0.6")
        .part("image", file_part(png(64, 64, [200, 10, 10]), "a.png"));
    let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    assert_eq!(body["size"], "64x64");

    let form = Form::new()
        .text("model", "turbo")
        .text("prompt", "paint the right half")
        .part("image", file_part(png(64, 64, [12, 34, 56]), "a.png"))
        .part("mask", file_part(mask(64, 64, |x, _| if x < 32 { 255 } else { 0 }), "m.png"));
    let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    let out = images(&body)[0].to_rgb8();
    assert_eq!(out.get_pixel(4, 4).0, [12, 34, 56], "opaque mask pixels are kept");

    let form = Form::new()
        .text("model", "turbo")
        .text("prompt", "p")
        .part("image[]", file_part(png(64, 64, [1, 1, 1]), "a.png"))
        .part("image[]", file_part(png(64, 64, [2, 2, 2]), "b.png"));
    assert_error(app.post_form("/v1/images/edits", form).await, 400, Some("image"), "too_many_images").await;

    let form =
        Form::new().text("model", "turbo").text("n", "2").part("image", file_part(png(64, 64, [9, 9, 9]), "a.png"));
    let body = json_body(app.post_form("/v1/images/variations", form).await, 200).await;
    assert_eq!(images(&body).len(), 2);
}

#[tokio::test]
async fn streams_real_partial_images() {
    let app = local_app().await;
    let text = app
        .generate(json!({"model": "turbo", "prompt": "p", "stream": true, "partial_images": 2, "size": "64x64"}))
        .await
        .text()
        .await
        .unwrap();
    let kinds = crate::helpers::sse_event_kinds(&text);
    assert_eq!(
        kinds,
        ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"]
    );
    // The worker reports its queue and work in flight, idle again now.
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("easel_local_queue_depth{model=\"turbo\"} 0"), "{metrics}");
    assert!(metrics.contains("easel_local_in_flight{model=\"turbo\"} 0"), "{metrics}");
}

#[tokio::test]
async fn python_sdk_with_a_local_model() {
    run_sdk(Sdk::Python, &local_app().await, "turbo", &["test_edit_list_of_images_with_mask"]).await;
}

#[tokio::test]
async fn node_sdk_with_a_local_model() {
    run_sdk(Sdk::Node, &local_app().await, "turbo", &["images.edit with a list of images and a mask"]).await;
}

/// The local model's ranges (steps 1-200, strength above 0) come from its capabilities and are
/// checked once, by the core, with the parameter named; a size off the latent grid likewise.
#[tokio::test]
async fn the_models_own_ranges_are_checked_before_it_runs() {
    let app = local_app().await;
    let cases = [
        (json!({"model": "turbo", "prompt": "p", "steps": 201}), "steps", "integer_above_max_value"),
        (json!({"model": "turbo", "prompt": "p", "steps": 0}), "steps", "integer_below_min_value"),
        (json!({"model": "turbo", "prompt": "p", "guidance_scale": 51}), "guidance_scale", "invalid_value"),
        (json!({"model": "turbo", "prompt": "p", "size": "68x64"}), "size", "invalid_value"),
        (json!({"model": "turbo", "prompt": "p", "n": 11}), "n", "integer_above_max_value"),
    ];
    for (body, param, code) in cases {
        assert_error(app.generate(body).await, 400, Some(param), code).await;
    }
    let form = Form::new()
        .text("model", "turbo")
        .text("prompt", "p")
        .text("strength", "0")
        .part("image", file_part(png(64, 64, [1, 1, 1]), "a.png"));
    let message =
        assert_error(app.post_form("/v1/images/edits", form).await, 400, Some("strength"), "invalid_value").await;
    assert!(message.contains("greater than 0"), "{message}");
}

/// `easel serve --check-config` reads a local model's folder but loads nothing: it answers at
/// once, and names a missing folder.
#[tokio::test]
async fn check_config_reads_local_models_without_loading_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("easel.toml");
    let write = |path: &std::path::Path| {
        let body = format!(
            "[storage]\ndata_dir = {:?}\n[[models]]\nid = \"turbo\"\nbackend = \"local\"\nfamily = \"sd-turbo\"\npath = {:?}\n",
            dir.path().join("data"),
            path
        );
        std::fs::write(&config, body).unwrap();
    };
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_easel"))
            .args(["serve", "--check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    write(&model_dir());
    let output = check();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK"));
    assert!(!dir.path().join("data").exists(), "checking the config must not create the data folder");
    write(std::path::Path::new("/nonexistent/model"));
    let output = check();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/model"));
}

/// A size past the model's native edge (IG1's seed asks 1280x720 of a 1024-edge sd-turbo; here
/// 128x72 of a 64-edge one) is made at the nearest native size of that shape and resized, within
/// `max_output_pixels`; beyond it, a 400 names the largest size the model delivers in that shape.
#[tokio::test]
async fn sizes_past_the_native_edge_are_resized_within_the_pixel_budget() {
    let app = local_app_with(&[("max_edge", json!(64)), ("max_output_pixels", json!(128 * 72))]).await;
    let body =
        json_body(app.generate(json!({"model": "turbo", "prompt": "p", "size": "128x72", "seed": 3})).await, 200).await;
    assert_eq!(body["size"], "128x72");
    let pictures = images(&body);
    assert_eq!((pictures[0].width(), pictures[0].height()), (128, 72));
    let over = json!({"model": "turbo", "prompt": "p", "size": "256x144"});
    let message = assert_error(app.generate(over).await, 400, Some("size"), "invalid_value").await;
    assert!(message.contains("The largest size of this shape is 128x72."), "{message}");
}

/// A model made by `create-random` makes noise: `/v1/models` says so, and only of it.
#[tokio::test]
async fn a_model_with_random_weights_is_marked_in_the_model_list() {
    let app = local_app().await;
    let list = json_body(app.client.get(app.url("/v1/models")).send().await.unwrap(), 200).await;
    assert_eq!(list["data"][0]["id"], "turbo");
    assert_eq!(list["data"][0]["random_weights"], true, "{list}");
    let model = json_body(app.client.get(app.url("/v1/models/turbo")).send().await.unwrap(), 200).await;
    assert_eq!(model["random_weights"], true, "{model}");
    let ordinary = crate::helpers::spawn_app().await;
    let model = json_body(ordinary.client.get(ordinary.url("/v1/models/test-image")).send().await.unwrap(), 200).await;
    assert!(model.get("random_weights").is_none(), "{model}");
}
