//! A tiny random FLUX.1 model (`easel models create-random --family flux-schnell`, the real CLI,
//! diffusers' own test dimensions) served through the HTTP API: generations by seed, img2img
//! edits, streaming partial images, the official SDKs, what the family refuses before any compute
//! (a mask, a size off its 16-pixel grid), and a broken folder that `/readyz` reports.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::multipart::Form;
use serde_json::json;

use crate::helpers::{
    TestApp, assert_error, b64_bytes, file_part, images, json_body, mask, png, random_model, spawn_local,
};
use crate::sdk::{Sdk, run_sdk};

/// One tiny flux-schnell folder for the whole test binary.
fn model_dir() -> PathBuf {
    random_model(&["--family", "flux-schnell", "--seed", "5"])
}

/// A server with the folder at `path` as `flux`; returns once `/readyz` stops saying "loading".
async fn flux_app(path: &Path) -> TestApp {
    spawn_local(
        "flux",
        &[
            ("family", json!("flux-schnell")),
            ("path", json!(path)),
            ("min_edge", json!(16)),
            ("max_edge", json!(64)),
            ("default_size", json!("32x32")),
            ("steps", json!(3)),
        ],
    )
    .await
}

#[tokio::test]
async fn flux_generates_by_seed() {
    let app = flux_app(&model_dir()).await;
    let request = json!({"model": "flux", "prompt": "a lighthouse", "n": 2, "seed": 5, "size": "32x16"});
    let first = json_body(app.generate(request.clone()).await, 200).await;
    let pictures = images(&first);
    assert_eq!(pictures.len(), 2);
    assert!(pictures.iter().all(|p| (p.width(), p.height()) == (32, 16)));
    assert_ne!(b64_bytes(&first["data"][0]), b64_bytes(&first["data"][1]), "n images are distinct");
    let again = json_body(app.generate(request).await, 200).await;
    assert_eq!(b64_bytes(&first["data"][0]), b64_bytes(&again["data"][0]), "same seed, same bytes");
    let other = json!({"model": "flux", "prompt": "a lighthouse", "seed": 9, "size": "32x16"});
    let other = json_body(app.generate(other).await, 200).await;
    assert_ne!(b64_bytes(&first["data"][0]), b64_bytes(&other["data"][0]), "another seed, another image");
}

#[tokio::test]
async fn flux_edits_img2img_and_refuses_masks_and_off_grid_sizes() {
    let app = flux_app(&model_dir()).await;
    let edit = |strength: &str| {
        Form::new()
            .text("model", "flux")
            .text("prompt", "make it blue")
            .text("seed", "4")
            .text("strength", strength.to_string())
            .part("image", file_part(png(32, 32, [200, 10, 10]), "a.png"))
    };
    let light = json_body(app.post_form("/v1/images/edits", edit("0.4")).await, 200).await;
    assert_eq!(light["size"], "32x32");
    let strong = json_body(app.post_form("/v1/images/edits", edit("1.0")).await, 200).await;
    assert_ne!(b64_bytes(&light["data"][0]), b64_bytes(&strong["data"][0]), "strength changes the edit");

    let masked = edit("0.5").part("mask", file_part(mask(32, 32, |x, _| if x < 16 { 0 } else { 255 }), "m.png"));
    let message =
        assert_error(app.post_form("/v1/images/edits", masked).await, 400, Some("mask"), "invalid_value").await;
    assert!(message.contains("inpainting"), "{message}");

    let off_grid = json!({"model": "flux", "prompt": "p", "size": "40x32"});
    assert_error(app.generate(off_grid).await, 400, Some("size"), "invalid_value").await;
}

#[tokio::test]
async fn flux_streams_partial_images() {
    let app = flux_app(&model_dir()).await;
    let text = app
        .generate(json!({"model": "flux", "prompt": "p", "stream": true, "partial_images": 2, "size": "32x32"}))
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

/// A folder whose transformer weights are gone loads nothing: `/readyz` is 503 and names the
/// file, and a request gets 503 rather than a crash.
#[tokio::test]
async fn a_broken_flux_folder_is_reported_by_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("flux");
    let status = Command::new("cp").arg("-r").arg(model_dir()).arg(&broken).status().unwrap();
    assert!(status.success());
    std::fs::remove_file(broken.join("transformer/diffusion_pytorch_model.safetensors")).unwrap();
    let app = flux_app(&broken).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("transformer") && body.contains("diffusion_pytorch_model"), "{body}");
    let response = app.generate(json!({"model": "flux", "prompt": "p"})).await;
    assert_eq!(response.status(), 503);
}

/// The SDKs' suites, but for masks: FLUX has no inpainting (the 400 is tested above).
#[tokio::test]
async fn python_sdk_with_a_local_flux_model() {
    let skip = ["test_edit_list_of_images_with_mask", "test_edit_with_mask"];
    run_sdk(Sdk::Python, &flux_app(&model_dir()).await, "flux", &skip).await;
}

#[tokio::test]
async fn node_sdk_with_a_local_flux_model() {
    let skip = ["images.edit with a list of images and a mask", "images.edit with a mask"];
    run_sdk(Sdk::Node, &flux_app(&model_dir()).await, "flux", &skip).await;
}
