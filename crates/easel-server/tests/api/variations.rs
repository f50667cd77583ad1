//! `POST /v1/images/variations` (multipart `image`).

use reqwest::multipart::Form;

use crate::helpers::{assert_error, file_part, images, json_body, png, spawn_app};

#[tokio::test]
async fn variations_of_one_image() {
    let app = spawn_app().await;
    let form = Form::new()
        .text("model", "test-image")
        .text("n", "2")
        .part("image", file_part(png(64, 64, [5, 5, 5]), "otter.png"));
    let body = json_body(app.post_form("/v1/images/variations", form).await, 200).await;
    let pictures = images(&body);
    assert_eq!(pictures.len(), 2);
    assert_ne!(pictures[0].to_rgb8().get_pixel(0, 0), pictures[1].to_rgb8().get_pixel(0, 0));
    let call = app.backend("test-image").last_call.lock().unwrap().clone().unwrap();
    assert_eq!(call.operation, easel_core::types::Operation::Variation);
    assert!(call.prompt.is_empty());

    let form = Form::new()
        .text("model", "test-image")
        .text("response_format", "url")
        .part("image", file_part(png(64, 64, [5, 5, 5]), "o.png"));
    let body = json_body(app.post_form("/v1/images/variations", form).await, 200).await;
    assert!(body["data"][0]["url"].is_string());

    let form = Form::new()
        .text("model", "test-image")
        .text("prompt", "no")
        .part("image", file_part(png(8, 8, [5, 5, 5]), "o.png"));
    assert_error(app.post_form("/v1/images/variations", form).await, 400, Some("prompt"), "unknown_parameter").await;
    let form = Form::new()
        .text("model", "test-image")
        .part("image", file_part(png(8, 8, [5, 5, 5]), "o.png"))
        .part("image", file_part(png(8, 8, [5, 5, 5]), "p.png"));
    assert_error(app.post_form("/v1/images/variations", form).await, 400, Some("image"), "invalid_value").await;
}
