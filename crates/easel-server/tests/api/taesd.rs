//! The tiny autoencoder option of local models (`tiny_vae`, `preview = "taesd"`,
//! `decoder = "taesd"`), through the HTTP API with the tiny random model and the `vae_tiny/`
//! that `create-random --tiny-vae` writes beside it.

use serde_json::{Value, json};

use crate::helpers::{b64_bytes, images, json_body};
use crate::local::{local_app, local_app_with, model_dir};

fn tiny_vae() -> (&'static str, Value) {
    ("tiny_vae", json!(model_dir().join("vae_tiny")))
}

#[tokio::test]
async fn partial_images_stream_through_the_tiny_vae() {
    let app = local_app_with(&[tiny_vae(), ("preview", json!("taesd"))]).await;
    let request =
        json!({"model": "turbo", "prompt": "p", "stream": true, "partial_images": 2, "size": "64x48", "seed": 1});
    let text = app.generate(request).await.text().await.unwrap();
    let events: Vec<Value> =
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"],
        "{text}"
    );
    for partial in &events[..2] {
        let picture = image::load_from_memory(&b64_bytes(partial)).unwrap();
        assert_eq!((picture.width(), picture.height()), (64, 48));
    }
}

/// `decoder = "taesd"` makes the final image with the tiny VAE: same seed, other pixels than
/// the full VAE's, same size.
#[tokio::test]
async fn the_final_decode_uses_the_tiny_vae_when_asked() {
    let request = json!({"model": "turbo", "prompt": "a lighthouse", "seed": 5, "size": "64x48"});
    let full = json_body(local_app().await.generate(request.clone()).await, 200).await;
    let tiny_app = local_app_with(&[tiny_vae(), ("decoder", json!("taesd"))]).await;
    let tiny = json_body(tiny_app.generate(request.clone()).await, 200).await;
    assert_eq!((images(&tiny)[0].width(), images(&tiny)[0].height()), (64, 48));
    assert_ne!(b64_bytes(&full["data"][0]), b64_bytes(&tiny["data"][0]), "the tiny VAE decoded it");
    let again = json_body(tiny_app.generate(request).await, 200).await;
    assert_eq!(b64_bytes(&tiny["data"][0]), b64_bytes(&again["data"][0]), "same seed, same bytes");
}

/// A `tiny_vae` folder that is not there: the model fails to load and `/readyz` names the path.
#[tokio::test]
async fn a_missing_tiny_vae_folder_is_named_by_readyz() {
    let missing = model_dir().join("no-such-taesd");
    let app = crate::helpers::spawn_local(
        "turbo",
        &[("family", json!("sd-turbo")), ("path", json!(model_dir())), ("tiny_vae", json!(missing))],
    )
    .await;
    let (_, body) = crate::helpers::wait_loaded(&app).await;
    assert!(body.contains("no-such-taesd") && body.contains("does not exist"), "{body}");
}
