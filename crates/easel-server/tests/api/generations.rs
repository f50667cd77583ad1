//! `POST /v1/images/generations` in both JSON dialects, with every parameter.

use std::sync::atomic::Ordering;

use easel_core::types::ImageSize;
use image::GenericImageView;
use serde_json::json;

use crate::backend::colour;
use crate::helpers::{b64_bytes, images, json_body, spawn_app, spawn_app_with, test_models};

#[tokio::test]
async fn seed_001_openai_body_returns_one_png() {
    let app = spawn_app().await;
    // Seed 001's example, with the model adapted.
    let body = json_body(
        app.generate(
            json!({"prompt": "A cute baby sea otter wearing a beret", "model": "test-image", "size": "1024x1024"}),
        )
        .await,
        200,
    )
    .await;
    assert!(body["created"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!((body["size"].as_str(), body["output_format"].as_str()), (Some("1024x1024"), Some("png")));
    assert_eq!((body["quality"].as_str(), body["background"].as_str()), (Some("medium"), Some("opaque")));
    let usage = &body["usage"];
    let input = usage["input_tokens_details"]["text_tokens"].as_u64().unwrap();
    assert!(input > 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap())
    );
    assert_eq!(usage["output_tokens"].as_u64(), Some(1056), "OpenAI's table: 1024x1024 medium");
    let png = b64_bytes(&body["data"][0]);
    assert!(png.starts_with(b"\x89PNG"));
    assert_eq!(image::load_from_memory(&png).unwrap().dimensions(), (1024, 1024));
}

#[tokio::test]
async fn every_parameter_is_honoured() {
    let app = spawn_app().await;
    let body = json_body(
        app.generate(json!({
            "prompt": "lighthouse", "model": "test-image", "n": 3, "size": "128x64", "quality": "high",
            "style": "vivid", "background": "opaque", "output_format": "webp", "output_compression": 50,
            "moderation": "low", "response_format": "b64_json", "stream": false, "partial_images": 0,
            "user": "user-1", "negative_prompt": "fog", "seed": 40, "steps": 3, "guidance_scale": 2.5,
        }))
        .await,
        200,
    )
    .await;
    assert_eq!(body["size"], "128x64");
    assert_eq!(body["quality"], "high");
    assert_eq!(body["output_format"], "webp");
    let pictures = images(&body);
    assert_eq!(pictures.len(), 3);
    for (i, picture) in pictures.iter().enumerate() {
        assert_eq!(picture.dimensions(), (128, 64));
        assert!(b64_bytes(&body["data"][i]).starts_with(b"RIFF"));
    }
    // Three images, at most two per backend call: two calls, the second seeded after the first two.
    let backend = app.backend("test-image");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
    let last = backend.last_call.lock().unwrap().clone().unwrap();
    assert_eq!((last.n, last.options.extensions.seed), (1, Some(42)));
    assert_eq!(last.options.extensions.negative_prompt.as_deref(), Some("fog"));
    assert_eq!((last.options.extensions.steps, last.options.extensions.guidance_scale), (Some(3), Some(2.5)));
    assert_eq!(last.options.user.as_deref(), Some("user-1"));
    // Distinct images, in order.
    let first = pictures[0].to_rgb8().get_pixel(5, 5).0;
    let third = pictures[2].to_rgb8().get_pixel(5, 5).0;
    let expected_third = colour("lighthouse", Some(42), 0).0;
    assert_ne!(first, third);
    assert!(first.iter().zip(colour("lighthouse", Some(40), 0).0).all(|(a, b)| a.abs_diff(b) < 12), "{first:?}");
    assert!(third.iter().zip(expected_third).all(|(a, b)| a.abs_diff(b) < 12), "{third:?}");
}

#[tokio::test]
async fn qwen_shape_generation_seed_001() {
    let app = spawn_app().await;
    let body = json_body(
        app.generate(json!({
            "model": "test-image",
            "input": {"messages": [{"role": "user", "content": "A serene mountain lake at dawn, photorealistic."}]},
            "parameters": {"size": "96*64", "n": 2, "seed": 3},
        }))
        .await,
        200,
    )
    .await;
    assert_eq!(body["size"], "96x64");
    assert_eq!(images(&body).len(), 2);
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.prompt, "A serene mountain lake at dawn, photorealistic.");
}

#[tokio::test]
async fn arbitrary_sizes_within_the_models_rule() {
    let app = spawn_app().await;
    let body =
        json_body(app.generate(json!({"prompt": "p", "model": "test-image", "size": "1280x720"})).await, 200).await;
    assert_eq!(images(&body)[0].dimensions(), (1280, 720));
}

#[tokio::test]
async fn fixed_size_backends_are_resized_honestly() {
    let app = spawn_app().await;
    let body =
        json_body(app.generate(json!({"prompt": "p", "model": "test-fixed", "size": "192x128", "n": 2})).await, 200)
            .await;
    assert_eq!(body["size"], "192x128");
    assert!(images(&body).iter().all(|i| i.dimensions() == (192, 128)));
    let backend = app.backend("test-fixed");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2, "one image per call: n fans out");
    assert_eq!(backend.last_call.lock().unwrap().as_ref().unwrap().size, ImageSize::new(96, 64));
}

#[tokio::test]
async fn transparent_backgrounds_and_formats() {
    let app = spawn_app().await;
    let body = json_body(
        app.generate(
            json!({"prompt": "p", "model": "test-image", "background": "transparent", "output_format": "png"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(body["background"], "transparent");
    assert_eq!(images(&body)[0].to_rgba8().get_pixel(0, 0)[3], 0);
    for format in ["jpeg", "webp"] {
        let body =
            json_body(app.generate(json!({"prompt": "p", "model": "test-image", "output_format": format})).await, 200)
                .await;
        let bytes = b64_bytes(&body["data"][0]);
        let expected: &[u8] = if format == "jpeg" { &[0xFF, 0xD8, 0xFF] } else { b"RIFF" };
        assert!(bytes.starts_with(expected), "{format}");
    }
}

#[tokio::test]
async fn encoded_backend_output_passes_through_or_is_transcoded() {
    let app = spawn_app().await;
    let body = json_body(app.generate(json!({"prompt": "p", "model": "test-encoded"})).await, 200).await;
    assert!(b64_bytes(&body["data"][0]).starts_with(b"\x89PNG"));
    let body =
        json_body(app.generate(json!({"prompt": "p", "model": "test-encoded", "output_format": "jpeg"})).await, 200)
            .await;
    assert!(b64_bytes(&body["data"][0]).starts_with(&[0xFF, 0xD8]));
}

#[tokio::test]
async fn a_request_without_a_model_uses_the_default() {
    let app = spawn_app_with(|c| c.server.default_model = None, test_models()).await;
    json_body(app.generate(json!({"prompt": "p"})).await, 200).await;
    assert_eq!(app.backend("test-image").calls.load(Ordering::SeqCst), 1, "the first model that generates");
}

#[tokio::test]
async fn a_short_answer_is_completed_by_asking_again_for_the_missing_images() {
    let app = spawn_app().await;
    let backend = app.backend("test-image");
    // Two images a call: the first call of three images comes back one short.
    backend.short_by.lock().unwrap().push_back(1);
    let body =
        json_body(app.generate(json!({"model": "test-image", "prompt": "p", "n": 3, "seed": 5})).await, 200).await;
    assert_eq!(images(&body).len(), 3);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 3, "two planned calls and one for the missing image");
    // The image asked for again has a seed past the job's own, so it is a new image.
    let retry = backend.last_call.lock().unwrap().clone().unwrap();
    assert_eq!((retry.n, retry.options.extensions.seed), (1, Some(8)));
    let each = easel_core::usage::output_tokens(ImageSize::new(64, 64), easel_core::types::Quality::Medium);
    assert_eq!(body["usage"]["output_tokens"].as_u64(), Some(3 * each), "usage for the three delivered");
}

#[tokio::test]
async fn a_backend_still_short_after_one_retry_fails_clearly_and_charges_nothing() {
    let app = spawn_app().await;
    let backend = app.backend("test-image");
    backend.short_by.lock().unwrap().extend([1, 1]);
    let response = app.generate(json!({"model": "test-image", "prompt": "p", "n": 2})).await;
    let message = crate::helpers::assert_error(response, 502, None, "upstream_error").await;
    assert!(message.contains("1 of the 2 images"), "{message}");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2, "one retry, no more");
    let row =
        sqlx::query("SELECT outcome, image_count, total_tokens FROM usage").fetch_one(&app.app_state.db).await.unwrap();
    use sqlx::Row;
    assert_eq!(row.get::<String, _>("outcome"), "upstream_error");
    assert_eq!((row.get::<i64, _>("image_count"), row.get::<i64, _>("total_tokens")), (0, 0));
}
