//! A tiny random Qwen-Image-Edit model (`easel models create-random --family qwen-image-edit`,
//! the real CLI) served through the HTTP API as `qwen-image-edit` and, wrapped by the prompt
//! enhancer, `qwen-image-edit-pe`: seed 002's IG1 JSON body verbatim, the Qwen `input.messages`
//! shape with an image part, multipart, the source image shaping the result, and what the family
//! refuses (a second image, a mask, a generation) before any compute.

use std::path::PathBuf;

use easel_upstream::testing::Fake;
use image::GenericImageView;
use reqwest::multipart::Form;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_error, b64_bytes, data_url, file_part, images, json_body, local_model, mask, png, random_model,
    spawn_app_with, wait_ready,
};

/// Cargo sets this for every test process, so the enhancer can name it as its key variable.
const KEY_ENV: &str = "CARGO_PKG_NAME";

/// One tiny qwen-image-edit folder for the whole test binary.
fn model_dir() -> PathBuf {
    random_model(&["--family", "qwen-image-edit", "--seed", "4"])
}

fn options() -> serde_json::Map<String, Value> {
    let mut options = serde_json::Map::new();
    for (k, v) in [
        ("family", json!("qwen-image-edit")),
        ("path", json!(model_dir())),
        ("min_edge", json!(32)),
        ("max_edge", json!(64)),
        // IG1's 1280x720 is made at 64x32 (the tiny model's edge) and resized.
        ("max_output_pixels", json!(1280 * 720)),
        ("default_size", json!("64x64")),
        ("steps", json!(2)),
        // The source at 64² rather than 1024²: a 4× VAE would otherwise append 16384 tokens.
        ("condition_pixels", json!(64 * 64)),
    ] {
        options.insert(k.into(), v);
    }
    options
}

/// A server with the tiny model as `qwen-image-edit`, and as `qwen-image-edit-pe` when an
/// enhancer is given, once both are ready.
async fn edit_app(enhancer: Option<&Fake>) -> TestApp {
    let enhancer = enhancer.map(
        |fake| json!({"base_url": format!("{}/v1", fake.url()), "api_key_env": KEY_ENV, "model": "qwen3.5-397b-a17b"}),
    );
    let app = spawn_app_with(
        move |c| {
            let model = |id: &str| local_model(id, options());
            c.models = vec![model("qwen-image-edit")];
            if enhancer.is_some() {
                c.models.push(model("qwen-image-edit-pe"));
            }
            c.prompt_enhancer = enhancer;
        },
        Vec::new(),
    )
    .await;
    wait_ready(&app).await;
    app
}

/// A source with some structure: a coloured square on a gradient.
fn source(width: u32, height: u32, square: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let inside = (width / 4..3 * width / 4).contains(&x) && (height / 4..3 * height / 4).contains(&y);
        image::Rgb(if inside { square } else { [(x * 4) as u8, (y * 4) as u8, 90] })
    });
    crate::helpers::encode(&image::DynamicImage::ImageRgb8(img), image::ImageFormat::Png)
}

const IG1_PROMPT: &str = "Replace the iguana with a snake, keep the same neon theme and background.";

/// Seed 002's body, as IG1 documents it, against a local Qwen-Image-Edit.
#[tokio::test]
async fn seed_002_ig1_json_edit_runs_on_a_local_qwen_image_edit() {
    let app = edit_app(None).await;
    let body = json!({
        "model": "qwen-image-edit",
        "images": [
            {
                "image_url": data_url(&source(64, 36, [255, 0, 200]))
            }
        ],
        "prompt": IG1_PROMPT,
        "quality": "low",
        "size": "1280x720",
        "output_format": "png"
    });
    let answer = json_body(app.post_json("/v1/images/edits", &body).await, 200).await;
    assert_eq!((answer["size"].as_str(), answer["quality"].as_str()), (Some("1280x720"), Some("low")), "{answer}");
    assert_eq!(answer["output_format"], "png");
    assert_eq!(images(&answer)[0].dimensions(), (1280, 720));
}

/// `-pe` composes with the edit: the enhancer rewrites the instruction once, the local model
/// edits with the rewrite (the same image as asking for the rewrite directly, same seed), and the
/// rewrite comes back as `revised_prompt`.
#[tokio::test]
async fn the_pe_variant_rewrites_the_instruction_then_edits() {
    let fake = Fake::start(&std::env::var(KEY_ENV).unwrap()).await;
    let app = edit_app(Some(&fake)).await;
    let src = data_url(&source(64, 36, [255, 0, 200]));
    let ig1 = |model: &str, prompt: &str| {
        json!({"model": model, "images": [{"image_url": src}], "prompt": prompt, "quality": "low",
               "size": "1280x720", "output_format": "png", "seed": 9})
    };
    let enhanced =
        json_body(app.post_json("/v1/images/edits", &ig1("qwen-image-edit-pe", IG1_PROMPT)).await, 200).await;
    let rewrite = format!("ENHANCED: {IG1_PROMPT}");
    assert_eq!(enhanced["data"][0]["revised_prompt"], rewrite.as_str(), "{enhanced}");
    assert_eq!(fake.hits("/v1/chat/completions").len(), 1, "one rewrite per request");
    assert_eq!(images(&enhanced)[0].dimensions(), (1280, 720));
    let direct = json_body(app.post_json("/v1/images/edits", &ig1("qwen-image-edit", &rewrite)).await, 200).await;
    assert!(b64_bytes(&enhanced["data"][0]) == b64_bytes(&direct["data"][0]), "the edit ran on the rewrite");
    // The prompt does reach the model: at the model's own size and steps the two prompts differ.
    let small = |prompt: &str| json!({"model": "qwen-image-edit", "images": [{"image_url": src}], "prompt": prompt, "size": "64x64", "seed": 9});
    let a = json_body(app.post_json("/v1/images/edits", &small(IG1_PROMPT)).await, 200).await;
    let b = json_body(app.post_json("/v1/images/edits", &small(&rewrite)).await, 200).await;
    assert!(b64_bytes(&a["data"][0]) != b64_bytes(&b["data"][0]), "the instruction changes the edit");
}

/// The same edit three ways: OpenAI-style JSON with a data URL, the Qwen `input.messages` shape
/// with an image part (`parameters` carrying size and seed), and multipart. All three make the
/// same bytes; another source image (same prompt and seed) makes another image.
#[tokio::test]
async fn json_qwen_messages_and_multipart_edits_agree_and_read_the_source() {
    let app = edit_app(None).await;
    let red = source(48, 48, [230, 20, 20]);
    let json_edit = |src: &[u8]| {
        json!({"model": "qwen-image-edit", "images": [{"image_url": data_url(src)}], "prompt": "make it blue",
               "size": "64x64", "seed": 3})
    };
    let openai = json_body(app.post_json("/v1/images/edits", &json_edit(&red)).await, 200).await;
    assert_eq!(images(&openai)[0].dimensions(), (64, 64));
    let qwen = json!({
        "model": "qwen-image-edit",
        "input": {"messages": [{"role": "user", "content": [{"image": data_url(&red)}, {"text": "make it blue"}]}]},
        "parameters": {"size": "64*64", "seed": 3},
    });
    let qwen = json_body(app.post_json("/v1/images/edits", &qwen).await, 200).await;
    assert!(b64_bytes(&openai["data"][0]) == b64_bytes(&qwen["data"][0]), "the Qwen shape makes the same edit");
    let form = Form::new()
        .text("model", "qwen-image-edit")
        .text("prompt", "make it blue")
        .text("size", "64x64")
        .text("seed", "3")
        .part("image", file_part(red.clone(), "red.png"));
    let multipart = json_body(app.post_form("/v1/images/edits", form).await, 200).await;
    assert!(b64_bytes(&openai["data"][0]) == b64_bytes(&multipart["data"][0]), "multipart makes the same edit");
    let green =
        json_body(app.post_json("/v1/images/edits", &json_edit(&source(48, 48, [20, 230, 20]))).await, 200).await;
    assert!(b64_bytes(&openai["data"][0]) != b64_bytes(&green["data"][0]), "the source image shapes the edit");
}

/// Qwen-Image-Edit takes one image: two are refused naming `image`, as is a mask (no
/// inpainting) naming `mask`, and a generation without a source; all before any compute.
#[tokio::test]
async fn qwen_image_edit_refuses_what_it_cannot_do() {
    let app = edit_app(None).await;
    let two = json!({"model": "qwen-image-edit", "prompt": "p", "images": [
        {"image_url": data_url(&png(32, 32, [1, 2, 3]))}, {"image_url": data_url(&png(32, 32, [3, 2, 1]))}]});
    assert_error(app.post_json("/v1/images/edits", &two).await, 400, Some("image"), "too_many_images").await;
    let form = Form::new()
        .text("model", "qwen-image-edit")
        .text("prompt", "p")
        .part("image", file_part(png(64, 64, [200, 10, 10]), "a.png"))
        .part("mask", file_part(mask(64, 64, |x, _| if x < 32 { 0 } else { 255 }), "m.png"));
    assert_error(app.post_form("/v1/images/edits", form).await, 400, Some("mask"), "invalid_value").await;
    let response = app.generate(json!({"model": "qwen-image-edit", "prompt": "a cat"})).await;
    assert_eq!(response.status(), 400, "{}", response.text().await.unwrap());
}

/// The official Python SDK against the tiny edit model: single-image edits, raw bytes, streaming
/// (generations, masks and several images are refused, as the tests above show).
#[tokio::test]
async fn python_sdk_with_a_local_qwen_image_edit_model() {
    let skip = [
        "test_generate",
        "test_generate_webp_and_url",
        "test_stream_generate",
        "test_edit_list_of_images_with_mask",
        "test_edit_with_mask",
        "test_variations",
        "test_errors",
    ];
    crate::sdk::run_sdk(crate::sdk::Sdk::Python, &edit_app(None).await, "qwen-image-edit", &skip).await;
}

#[tokio::test]
async fn node_sdk_with_a_local_qwen_image_edit_model() {
    let skip = [
        "images.generate",
        "images.edit with a list of images and a mask",
        "images.edit with a mask",
        "images.createVariation",
        "streaming generate",
        "errors",
    ];
    crate::sdk::run_sdk(crate::sdk::Sdk::Node, &edit_app(None).await, "qwen-image-edit", &skip).await;
}
