//! `POST /v1/images/edits`: multipart as the SDKs and seeds send it, JSON (IG1, seed 002), the
//! Qwen shape (seed 000), image URLs, and masks.

use axum::Router;
use axum::routing::get;
use image::GenericImageView;
use reqwest::multipart::Form;
use serde_json::json;

use crate::helpers::{
    assert_error, data_url, file_part, images, json_body, mask, png, spawn_app, spawn_app_with, test_models,
};

/// A loopback server that serves `bytes` at `/a.png`; returns its `host:port`.
async fn image_host(bytes: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let router = Router::new().route("/a.png", get(move || async move { bytes.clone() }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

#[tokio::test]
async fn single_image_part_and_auto_size() {
    let app = spawn_app().await;
    let form = Form::new()
        .text("model", "test-image")
        .text("prompt", "make it red")
        .part("image", file_part(png(48, 32, [9, 9, 9]), "cat.png"));
    let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    assert_eq!(body["size"], "48x32");
    assert_eq!(images(&body)[0].dimensions(), (48, 32));
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.images.len(), 1);
    assert!(call.mask.is_none(), "the backend has no native masks");
}

#[tokio::test]
async fn sdk_list_form_with_mask_keeps_opaque_pixels() {
    let app = spawn_app().await;
    let source = png(32, 32, [200, 100, 50]);
    // Left half opaque (keep), right half transparent (edit).
    let mask = mask(32, 32, |x, _| if x < 16 { 255 } else { 0 });
    let form = Form::new()
        .text("model", "test-image")
        .text("prompt", "paint the right half")
        .part("image[]", file_part(source, "a.png"))
        .part("image[]", file_part(png(32, 32, [0, 0, 0]), "b.png"))
        .part("mask", file_part(mask, "mask.png"));
    let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    let out = images(&body)[0].to_rgb8();
    assert_eq!(out.get_pixel(3, 3).0, [200, 100, 50], "opaque mask pixels keep the source");
    assert_ne!(out.get_pixel(30, 3).0, [200, 100, 50], "transparent mask pixels are edited");
    assert_eq!(app.backend("test-image").last_call.lock().unwrap().as_ref().unwrap().images.len(), 2);
}

#[tokio::test]
async fn seed_003_multipart_names_and_fields() {
    let app = spawn_app().await;
    // Seed 003's form, model and size adapted; `image.0` and `image.1.items` are file parts.
    let form = Form::new()
        .text("prompt", "在图片中添加一朵红色的玫瑰花")
        .text("background", "transparent")
        .text("input_fidelity", "high")
        .part("mask", file_part(mask(64, 64, |_, _| 0), "mask.png"))
        .text("model", "test-image")
        .text("n", "1")
        .text("output_compression", "100")
        .text("output_format", "png")
        .text("partial_images", "0")
        .text("quality", "auto")
        .text("response_format", "url")
        .text("size", "64x64")
        .text("stream", "false")
        .text("user", "someone")
        .part("image.0", file_part(png(64, 64, [1, 2, 3]), "a.png"))
        .part("image.1.items", file_part(png(64, 64, [4, 5, 6]), "b.png"));
    let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    assert_eq!(body["background"], "transparent");
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(body["data"][0].get("b64_json").is_none());
    let image = app.client.get(url).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.images.len(), 2);
    assert_eq!(call.options.input_fidelity, Some(easel_core::types::InputFidelity::High));
}

#[tokio::test]
async fn image_text_parts_hold_data_urls_and_allowed_urls() {
    let host = image_host(png(24, 16, [7, 7, 7])).await;
    let app = spawn_app_with(|c| c.server.allow_image_hosts = vec![format!("http://{host}")], test_models()).await;
    let form = Form::new()
        .text("model", "test-image")
        .text("prompt", "p")
        .text("image", data_url(&png(24, 16, [1, 1, 1])))
        .text("image[]", format!("http://{host}/a.png"));
    let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    assert_eq!(body["size"], "24x16");
    assert_eq!(app.backend("test-image").last_call.lock().unwrap().as_ref().unwrap().images.len(), 2);
    // A host that is not allowed.
    let other = image_host(png(8, 8, [1, 1, 1])).await;
    let form =
        Form::new().text("model", "test-image").text("prompt", "p").text("image", format!("http://{other}/a.png"));
    assert_error(app.post_form("/v1/images/edits", form).await, 400, Some("image"), "invalid_image_url").await;
}

#[tokio::test]
async fn seed_002_ig1_json_edit_verbatim() {
    let app = spawn_app().await;
    let body = json_body(
        app.post_json(
            "/v1/images/edits",
            &json!({
                "model": "test-image",
                "images": [{"image_url": data_url(&png(64, 36, [10, 200, 30]))}],
                "prompt": "Replace the iguana with a snake, keep the same neon theme and background.",
                "quality": "low",
                "size": "1280x720",
                "output_format": "png",
            }),
        )
        .await,
        200,
    )
    .await;
    assert_eq!((body["size"].as_str(), body["quality"].as_str()), (Some("1280x720"), Some("low")));
    assert_eq!(images(&body)[0].dimensions(), (1280, 720));
}

#[tokio::test]
async fn json_edit_with_mask_and_image_field() {
    let app = spawn_app().await;
    let body = json_body(
        app.post_json(
            "/v1/images/edits",
            &json!({
                "model": "test-image", "prompt": "p",
                "image": data_url(&png(16, 16, [50, 60, 70])),
                "mask": {"image_url": data_url(&mask(16, 16, |_, y| if y < 8 { 255 } else { 0 }))},
            }),
        )
        .await,
        200,
    )
    .await;
    let out = images(&body)[0].to_rgb8();
    assert_eq!(out.get_pixel(2, 2).0, [50, 60, 70]);
}

#[tokio::test]
async fn seed_000_qwen_edits() {
    let host = image_host(png(40, 24, [3, 3, 3])).await;
    let app = spawn_app_with(|c| c.server.allow_image_hosts = vec![format!("http://{host}")], test_models()).await;
    // Inline URL and data URL in the content string.
    let content = format!(
        "Remove the background of http://{host}/a.png and {} then replace it with white.",
        data_url(&png(40, 24, [1, 1, 1]))
    );
    let body = json_body(
        app.post_json(
            "/v1/images/edits",
            &json!({"model": "test-image", "input": {"messages": [{"role": "user", "content": content}]}, "n": 2}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(images(&body).len(), 2);
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.images.len(), 2);
    assert_eq!(call.prompt, "Remove the background of and then replace it with white.");
    // Parts.
    let body = json_body(
        app.post_json(
            "/v1/images/edits",
            &json!({"model": "test-image", "input": {"messages": [{"role": "user", "content": [{"image": data_url(&png(8, 8, [1, 1, 1]))}, {"text": "blue"}]}]}}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(body["size"], "8x8");
    // Seed 000's example has no image at all: a clear 400 naming the field.
    let message = assert_error(
        app.post_json(
            "/v1/images/edits",
            &json!({"model": "test-image", "input": {"messages": [{"role": "user", "content": "Remove the background and replace it with a solid white backdrop."}]}}),
        )
        .await,
        400,
        Some("image"),
        "missing_required_parameter",
    )
    .await;
    assert!(message.contains("source image"));
}

/// What a backend that takes pixels gets of a 96x32 source asked to become 32x32: the output's
/// canvas (cover and centre crop) for img2img, the whole image as sent for a backend that
/// conditions on it at its own geometry (Qwen-Image-Edit), nothing decoded for a relay.
#[tokio::test]
async fn backends_take_the_source_at_the_call_size_or_as_sent() {
    use easel_core::backend::PixelInput;

    use crate::backend::{TestBackend, capabilities};
    let with = |pixels| {
        let mut caps = capabilities();
        caps.pixels = pixels;
        TestBackend::new(caps)
    };
    let models = vec![
        ("canvas".to_string(), with(PixelInput::AtCallSize)),
        ("whole".to_string(), with(PixelInput::AsSent)),
        ("relay".to_string(), with(PixelInput::Bytes)),
    ];
    let app = spawn_app_with(|_| {}, models).await;
    // Left third red, the rest blue: the centre crop keeps only blue.
    let source =
        image::RgbImage::from_fn(96, 32, |x, _| if x < 32 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(source)
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    for (model, want) in [("canvas", Some((32, 32))), ("whole", Some((96, 32))), ("relay", None)] {
        let form = Form::new()
            .text("model", model)
            .text("prompt", "make it green")
            .text("size", "32x32")
            .part("image", file_part(bytes.clone(), "wide.png"));
        let body = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
        assert_eq!(images(&body)[0].dimensions(), (32, 32), "{model}: delivered at the size asked");
        let call = app.backend(model).last_call.lock().unwrap().clone().unwrap();
        let got = call.pixels.as_ref().map(|p| (p.image.width(), p.image.height()));
        assert_eq!(got, want, "{model}");
        if model == "whole" {
            let image = call.pixels.unwrap().image.to_rgb8();
            assert_eq!(image.get_pixel(0, 16).0, [255, 0, 0], "the part a crop would cut reaches the backend");
        }
    }
}
