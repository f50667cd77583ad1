//! The OpenAI-compatible protocol and its quirk profiles.

use easel_core::backend::{CallContext, OutputImage};
use easel_core::types::{Moderation, Operation, OutputFormat, Quality, Style};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;

#[tokio::test]
async fn gpt_image_generation_sends_only_what_it_accepts_and_passes_bytes_through() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1.5"}]));
    assert_eq!(m.kind(), "openai");
    let caps = m.capabilities();
    assert!(caps.native_masks && caps.partial_images && caps.transparency);
    assert_eq!(caps.max_n_per_call, 10);

    let mut c = call(Operation::Generate, 2, (1536, 1024));
    c.quality = Quality::Low;
    c.options.moderation = Some(Moderation::Low);
    c.options.output_format = OutputFormat::Webp;
    c.options.output_compression = Some(70);
    c.options.user = Some("u-1".into());
    c.options.extensions.seed = Some(7);
    let out = run(&m, c).await.unwrap();
    assert_eq!(out.images.len(), 2);
    assert_eq!(out.revised_prompt.as_deref(), Some("a revised prompt"));
    let usage = out.usage.unwrap();
    assert_eq!((usage.input_text_tokens, usage.input_image_tokens, usage.output_tokens), (7, 3, 20));

    let hit = &fake.hits("/v1/images/generations")[0];
    let body = hit.json.as_ref().unwrap();
    assert_eq!(hit.headers["authorization"], format!("Bearer {}", api_key()));
    assert_eq!(body["model"], "gpt-image-1.5");
    assert_eq!(body["n"], 2);
    assert_eq!(body["size"], "1536x1024");
    assert_eq!(body["quality"], "low");
    assert_eq!(body["moderation"], "low");
    assert_eq!(body["output_format"], "webp");
    assert_eq!(body["output_compression"], 70);
    assert_eq!(body["user"], "u-1");
    for absent in ["response_format", "style", "seed", "stream", "background"] {
        assert!(body.get(absent).is_none(), "{absent} must not be sent to gpt-image: {body}");
    }
}

#[tokio::test]
async fn dall_e_3_gets_response_format_style_and_hd() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({"profile": "openai"}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "dall-e-3"}]));
    assert_eq!((m.capabilities().max_n, m.capabilities().max_n_per_call), (1, 1));
    assert!(!m.capabilities().supports(Operation::Edit));
    let mut c = call(Operation::Generate, 1, (1792, 1024));
    c.quality = Quality::High;
    c.options.style = Some(Style::Natural);
    let out = run(&m, c).await.unwrap();
    assert_eq!(sizes(&out), vec![(1792, 1024)]);
    let body = fake.hits("generations")[0].json.clone().unwrap();
    assert_eq!(body["response_format"], "b64_json");
    assert_eq!(body["quality"], "hd");
    assert_eq!(body["style"], "natural");
}

#[tokio::test]
async fn dgrid_links_are_downloaded_and_sizes_snap_to_native() {
    let fake = Fake::start(&api_key()).await;
    // DGrid answers with a url and an empty b64_json when asked for urls.
    let gw =
        gateway(&[provider("dg", "openai", &fake, json!({"profile": {"base": "dgrid", "response_format": "url"}}))]);
    let m = model(&gw, json!([{"provider": "dg", "model": "dall-e-3"}]));
    let caps = m.capabilities();
    assert_eq!(caps.max_n_per_call, 1);
    assert!(caps.native_sizes.is_some());
    let out = run(&m, call(Operation::Generate, 1, (1792, 1024))).await.unwrap();
    assert_eq!(sizes(&out), vec![(1792, 1024)]);
    assert_eq!(fake.hits("/results/").len(), 1, "the link was fetched");
    // A size DGrid does not make is sent as the nearest one it does (the core resizes).
    run(&m, call(Operation::Generate, 1, (1280, 720))).await.unwrap();
    assert_eq!(fake.hits("generations")[1].json.as_ref().unwrap()["size"], "1792x1024");
}

#[tokio::test]
async fn dgrid_multipart_edit_with_mask() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("dg", "openai", &fake, json!({"profile": "dgrid"}))]);
    let m = model(&gw, json!([{"provider": "dg", "model": "wanx-v1"}]));
    assert!(m.capabilities().native_masks);
    let mut c = edit(1, 1);
    c.mask = Some(input(64, 64));
    run(&m, c).await.unwrap();
    let hit = &fake.hits("/v1/images/edits")[0];
    assert!(hit.headers["content-type"].starts_with("multipart/form-data"));
    assert_eq!(hit.files("image").len(), 1);
    assert_eq!(hit.files("mask").len(), 1);
    assert_eq!(hit.field("prompt").as_deref(), Some("make it blue"));
    assert_eq!(hit.field("response_format").as_deref(), Some("b64_json"));
}

#[tokio::test]
async fn gpt_image_multipart_edit_sends_several_images_as_image_array() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    let mut c = edit(1, 3);
    c.mask = Some(input(64, 64));
    c.options.input_fidelity = Some(easel_core::types::InputFidelity::High);
    run(&m, c).await.unwrap();
    let hit = &fake.hits("/v1/images/edits")[0];
    assert_eq!(hit.files("image[]").len(), 3);
    assert_eq!(hit.files("mask").len(), 1);
    assert_eq!(hit.field("input_fidelity").as_deref(), Some("high"));
    assert!(hit.field("response_format").is_none());
}

#[tokio::test]
async fn ig1_json_edit_with_data_urls_one_image_per_call_and_no_mask() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("ig1", "openai", &fake, json!({"profile": "ig1"}))]);
    let m = model(&gw, json!([{"provider": "ig1", "model": "qwen-image-edit"}]));
    let caps = m.capabilities();
    assert_eq!(caps.max_n_per_call, 1);
    assert!(!caps.native_masks, "IG1 ignores masks, so the core composites them");
    let mut c = edit(1, 1);
    c.size = easel_core::types::ImageSize::new(1280, 720);
    c.quality = Quality::Low;
    c.options.background = easel_core::types::Background::Opaque;
    let out = run(&m, c).await.unwrap();
    assert!(out.usage.is_none(), "IG1's usage figures are not passed through");
    let hit = &fake.hits("/v1/images/edits")[0];
    let body = hit.json.as_ref().expect("a JSON edit");
    assert!(body["images"][0]["image_url"].as_str().unwrap().starts_with("data:image/png;base64,iVBOR"));
    assert!(body.get("mask").is_none());
    assert_eq!(body["size"], "1280x720");
    assert_eq!(body["quality"], "low");
    assert_eq!(body["response_format"], "b64_json");
    assert!(body.get("background").is_none());
}

#[tokio::test]
async fn xai_gets_aspect_ratio_instead_of_size() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("x", "openai", &fake, json!({"profile": "xai"}))]);
    let m = model(&gw, json!([{"provider": "x", "model": "grok-2-image"}]));
    let mut c = call(Operation::Generate, 2, (1280, 720));
    c.quality = Quality::High;
    c.options.style = Some(Style::Vivid);
    run(&m, c).await.unwrap();
    let body = fake.hits("generations")[0].json.clone().unwrap();
    assert_eq!(body["aspect_ratio"], "16:9");
    assert_eq!(body["resolution"], "1k");
    for absent in ["size", "quality", "style"] {
        assert!(body.get(absent).is_none(), "xAI rejects {absent}");
    }
}

#[tokio::test]
async fn together_gets_width_height_and_extensions() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("t", "openai", &fake, json!({"profile": "together"}))]);
    let m = model(
        &gw,
        json!([{"provider": "t", "model": "black-forest-labs/FLUX.1-schnell", "extra": {"disable_safety_checker": true}}]),
    );
    let mut c = call(Operation::Generate, 1, (1024, 768));
    c.options.extensions.steps = Some(4);
    c.options.extensions.seed = Some(42);
    c.options.extensions.negative_prompt = Some("blurry".into());
    let out = run(&m, c).await.unwrap();
    assert_eq!(sizes(&out), vec![(1024, 768)]);
    let body = fake.hits("generations")[0].json.clone().unwrap();
    assert_eq!((body["width"].as_u64(), body["height"].as_u64()), (Some(1024), Some(768)));
    assert_eq!(body["response_format"], "base64");
    assert_eq!((body["steps"].as_u64(), body["seed"].as_u64()), (Some(4), Some(42)));
    assert_eq!(body["negative_prompt"], "blurry");
    assert_eq!(body["disable_safety_checker"], true);
    assert!(body.get("size").is_none());
}

#[tokio::test]
async fn streaming_passes_partial_images_through() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    let (tx, mut rx) = mpsc::channel(8);
    let cx = CallContext { cancel: CancellationToken::new(), partials: Some(tx) };
    let mut c = call(Operation::Generate, 1, (1024, 1024));
    c.partial_images = 2;
    let out = m.call(c, cx).await.unwrap();
    assert_eq!(sizes(&out), vec![(1024, 1024)]);
    assert_eq!(out.usage.unwrap().output_tokens, 20);
    let mut indexes = Vec::new();
    while let Ok(p) = rx.try_recv() {
        assert!(matches!(p.image, OutputImage::Encoded { format: OutputFormat::Png, .. }));
        indexes.push(p.index);
    }
    assert_eq!(indexes, vec![0, 1]);
    let body = fake.hits("generations")[0].json.clone().unwrap();
    assert_eq!((body["stream"].as_bool(), body["partial_images"].as_u64()), (Some(true), Some(2)));
}

#[tokio::test]
async fn an_error_inside_http_200_is_an_upstream_error() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    // Judged like a server error: retried, then reported.
    for _ in 0..3 {
        fake.push(Reply::Json(200, json!({"error": {"message": "model overloaded", "type": "server_error"}}), vec![]));
    }
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::Upstream { status: None, .. }), "{err:?}");
    assert!(err.to_string().contains("model overloaded"));
    assert_eq!(fake.hits("generations").len(), 3);
    // A refusal inside HTTP 200 is still a refusal.
    fake.push(Reply::Json(
        200,
        json!({"error": {"message": "rejected by the safety system", "code": "content_policy_violation"}}),
        vec![],
    ));
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::ContentPolicy { .. }), "{err:?}");
}

/// GPT image's `moderation_blocked` keeps OpenAI's code; DALL·E's `content_policy_violation` its own.
#[tokio::test]
async fn content_policy_refusals_are_reported_as_such() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    fake.push(Reply::Json(
        400,
        json!({"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error", "param": null, "code": "moderation_blocked"}}),
        vec![],
    ));
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::ModerationBlocked { .. }), "{err:?}");
    fake.push(Reply::Json(
        400,
        json!({"error": {"message": "Your request was rejected as a result of our safety system.", "type": "invalid_request_error", "param": null, "code": "content_policy_violation"}}),
        vec![],
    ));
    let err = run(&m, call(Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(matches!(err, BackendError::ContentPolicy { .. }), "{err:?}");
}

#[tokio::test]
async fn easel_nodes_get_every_parameter_and_extension() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("node", "easel", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "node", "model": "sd-turbo"}]));
    assert_eq!(m.kind(), "easel");
    let mut c = edit(1, 1);
    c.mask = Some(input(64, 64));
    c.options.extensions.seed = Some(9);
    c.options.extensions.steps = Some(2);
    c.options.extensions.guidance_scale = Some(1.5);
    c.options.extensions.strength = Some(0.6);
    c.options.extensions.negative_prompt = Some("text".into());
    run(&m, c).await.unwrap();
    let body = fake.hits("/v1/images/edits")[0].json.clone().unwrap();
    assert!(body["mask"]["image_url"].as_str().unwrap().starts_with("data:image/png;base64,"));
    assert_eq!((body["seed"].as_u64(), body["steps"].as_u64()), (Some(9), Some(2)));
    assert_eq!(body["guidance_scale"].as_f64(), Some(1.5));
    assert!((body["strength"].as_f64().unwrap() - 0.6).abs() < 1e-6);
    assert_eq!(body["negative_prompt"], "text");
}

#[tokio::test]
async fn variations_to_easel_nodes_carry_strength() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("node", "easel", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "node", "model": "sd-turbo"}]));
    let mut c = call(Operation::Variation, 1, (64, 64));
    c.images = vec![input(64, 64)];
    c.options.extensions.strength = Some(0.4);
    run(&m, c).await.unwrap();
    let hit = &fake.hits("/v1/images/variations")[0];
    let strength: f64 = hit.field("strength").expect("strength is sent").parse().unwrap();
    assert!((strength - 0.4).abs() < 1e-6, "{strength}");
    // A generation has no image to move from: no strength is sent.
    let mut g = call(Operation::Generate, 1, (64, 64));
    g.options.extensions.strength = Some(0.4);
    run(&m, g).await.unwrap();
    assert!(fake.hits("/v1/images/generations")[0].json.as_ref().unwrap().get("strength").is_none());
}

#[tokio::test]
async fn variations_go_multipart_to_dall_e_2() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "dall-e-2"}]));
    let mut c = call(Operation::Variation, 2, (512, 512));
    c.images = vec![input(64, 64)];
    let out = run(&m, c).await.unwrap();
    assert_eq!(sizes(&out), vec![(512, 512), (512, 512)]);
    let hit = &fake.hits("/v1/images/variations")[0];
    assert_eq!(hit.files("image").len(), 1);
    assert!(hit.field("prompt").is_none());
    assert_eq!(hit.field("n").as_deref(), Some("2"));
}

#[tokio::test]
async fn together_edits_are_generations_with_an_image_url() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("t", "openai", &fake, json!({"profile": "together"}))]);
    let m = model(&gw, json!([{"provider": "t", "model": "black-forest-labs/FLUX.1-kontext-pro"}]));
    run(&m, edit(1, 1)).await.unwrap();
    let body = fake.hits("/v1/images/generations")[0].json.clone().unwrap();
    assert!(body["image_url"].as_str().unwrap().starts_with("data:image/png;base64,"));
    assert_eq!(body["prompt"], "make it blue");
}

#[tokio::test]
async fn an_error_event_mid_stream_fails_the_call() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    // A stream that starts with a partial image and then reports a refusal.
    let (tx, mut rx) = mpsc::channel(8);
    fake.push(Reply::Sse(vec![
        json!({"type": "image_generation.partial_image", "b64_json": base64_png(8, 8), "partial_image_index": 0}),
        json!({"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error", "code": "moderation_blocked"}}),
    ]));
    let mut c = call(Operation::Generate, 1, (1024, 1024));
    c.partial_images = 1;
    let err = m.call(c, CallContext { cancel: CancellationToken::new(), partials: Some(tx) }).await.unwrap_err();
    assert!(matches!(err, BackendError::ModerationBlocked { .. }), "{err:?}");
    assert!(rx.try_recv().is_ok(), "the partial image before the error was passed on");
}

fn base64_png(w: u32, h: u32) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(png(w, h))
}

#[tokio::test]
async fn a_service_that_ignores_stream_answers_with_json_and_that_works() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    fake.push(Reply::Json(200, json!({"created": 1, "data": [{"b64_json": base64_png(16, 16)}]}), vec![]));
    let (tx, _rx) = mpsc::channel(8);
    let mut c = call(Operation::Generate, 1, (1024, 1024));
    c.partial_images = 2;
    let out = m.call(c, CallContext { cancel: CancellationToken::new(), partials: Some(tx) }).await.unwrap();
    assert_eq!(sizes(&out), vec![(16, 16)]);
}
