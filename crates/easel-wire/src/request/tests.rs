//! Every dialect of the seeds, parsed.

use base64::Engine as _;
use bytes::Bytes;
use easel_types::error::{CoreError, InvalidCode};
use easel_types::request::ImageRef;
use easel_types::types::{ImageSize, Operation, OutputFormat, Quality, ResponseFormat, SizeRequest};

use super::*;

const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52, 0, 0, 0, 1, 0, 0, 0, 1, 8, 6,
    0, 0, 0, 0x1F, 0x15, 0xC4, 0x89, 0, 0, 0, 13, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0, 5, 0, 1, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0, 0, 0, 0, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

fn json(op: Operation, body: serde_json::Value) -> Result<ImageRequest, CoreError> {
    parse_json(op, body.to_string().as_bytes(), UnknownParams::Reject)
}

fn param_and_code(err: CoreError) -> (Option<String>, InvalidCode) {
    match err {
        CoreError::InvalidRequest { param, code, .. } => (param, code),
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

fn text(name: &str, value: &str) -> FormPart {
    FormPart { name: name.into(), filename: None, content_type: None, data: Bytes::from(value.to_string()) }
}

fn file(name: &str) -> FormPart {
    FormPart {
        name: name.into(),
        filename: Some("x.png".into()),
        content_type: Some("application/octet-stream".into()),
        data: Bytes::from_static(PNG_1X1),
    }
}

#[test]
fn seed_001_openai_generation() {
    let r = json(
        Operation::Generate,
        serde_json::json!({"prompt": "A cute baby sea otter wearing a beret", "model": "dall-e-3", "size": "1024x1024"}),
    )
    .unwrap();
    assert_eq!(r.prompt.as_deref(), Some("A cute baby sea otter wearing a beret"));
    assert_eq!(r.model.as_deref(), Some("dall-e-3"));
    assert_eq!(r.size, Some(SizeRequest::Exact(ImageSize::new(1024, 1024))));
}

#[test]
fn every_generation_parameter_and_null_as_absent() {
    let r = json(
        Operation::Generate,
        serde_json::json!({
            "prompt": "p", "model": "m", "n": 2, "size": "auto", "quality": "high", "style": "natural",
            "background": "opaque", "output_format": "webp", "output_compression": 70, "moderation": "low",
            "response_format": "url", "stream": true, "partial_images": 2, "user": "u",
            "negative_prompt": "blurry", "seed": 7, "steps": 4, "guidance_scale": 3.5,
        }),
    )
    .unwrap();
    assert_eq!(r.n, Some(2));
    assert_eq!(r.size, Some(SizeRequest::Auto));
    assert_eq!(r.quality, Some(Quality::High));
    assert_eq!(r.options.output_format, OutputFormat::Webp);
    assert_eq!(r.options.output_compression, Some(70));
    assert_eq!(r.response_format, Some(ResponseFormat::Url));
    assert!(r.stream);
    assert_eq!(r.partial_images, Some(2));
    assert_eq!(r.options.extensions.seed, Some(7));
    assert_eq!(r.options.extensions.guidance_scale, Some(3.5));
    let r = json(Operation::Generate, serde_json::json!({"prompt": "p", "n": null, "size": null, "quality": null}))
        .unwrap();
    assert_eq!((r.n, r.size, r.quality), (None, None, None));
}

#[test]
fn bad_values_name_their_parameter() {
    let cases = [
        (
            serde_json::json!({"prompt": "p", "output_compression": 101}),
            "output_compression",
            InvalidCode::IntegerAboveMaxValue,
        ),
        (
            serde_json::json!({"prompt": "p", "output_compression": -1}),
            "output_compression",
            InvalidCode::IntegerBelowMinValue,
        ),
        (serde_json::json!({"prompt": "p", "steps": -1}), "steps", InvalidCode::InvalidType),
        (serde_json::json!({"prompt": "p", "n": "two"}), "n", InvalidCode::InvalidType),
        (serde_json::json!({"prompt": "p", "size": "huge"}), "size", InvalidCode::InvalidValue),
        (serde_json::json!({"prompt": "p", "quality": "ultra"}), "quality", InvalidCode::InvalidValue),
        (serde_json::json!({"prompt": "p", "partial_images": 4}), "partial_images", InvalidCode::IntegerAboveMaxValue),
        (serde_json::json!({"prompt": "p", "foo": 1}), "foo", InvalidCode::UnknownParameter),
        (serde_json::json!({"prompt": 5}), "prompt", InvalidCode::InvalidType),
        (serde_json::json!({"prompt": "p", "strength": 0.5}), "strength", InvalidCode::UnknownParameter),
    ];
    for (body, param, code) in cases {
        let (p, c) = param_and_code(json(Operation::Generate, body.clone()).unwrap_err());
        assert_eq!((p.as_deref(), c), (Some(param), code), "{body}");
    }
    let lenient = parse_json(Operation::Generate, br#"{"prompt":"p","foo":1}"#, UnknownParams::Ignore).unwrap();
    assert_eq!(lenient.prompt.as_deref(), Some("p"));
    let (param, code) =
        param_and_code(parse_json(Operation::Generate, b"{not json", UnknownParams::Reject).unwrap_err());
    assert_eq!((param, code), (None, InvalidCode::InvalidJson));
}

#[test]
fn seed_001_qwen_generation_with_parameters() {
    let r = json(
        Operation::Generate,
        serde_json::json!({
            "model": "wanx-v1",
            "input": {"messages": [{"role": "user", "content": "A serene mountain lake at dawn, photorealistic."}]},
            "parameters": {"size": "1024*768", "n": 2, "seed": 9, "negative_prompt": "people", "prompt_extend": true},
            "response_format": "url",
        }),
    )
    .unwrap();
    assert_eq!(r.prompt.as_deref(), Some("A serene mountain lake at dawn, photorealistic."));
    assert_eq!(r.size, Some(SizeRequest::Exact(ImageSize::new(1024, 768))));
    assert_eq!((r.n, r.options.extensions.seed), (Some(2), Some(9)));
    assert_eq!(r.options.extensions.negative_prompt.as_deref(), Some("people"));
    assert_eq!(r.response_format, Some(ResponseFormat::Url));
    let top_wins = json(
        Operation::Generate,
        serde_json::json!({"model": "m", "n": 3, "input": {"messages": [{"role": "user", "content": "x"}]}, "parameters": {"n": 1}}),
    )
    .unwrap();
    assert_eq!(top_wins.n, Some(3));
    // `parameters` is read once, merged, and its errors still name it.
    let body = serde_json::json!({"model": "m", "input": {"messages": []}, "parameters": {"n": "two"}});
    let (param, code) = param_and_code(json(Operation::Generate, body).unwrap_err());
    assert_eq!((param.as_deref(), code), (Some("parameters.n"), InvalidCode::InvalidType));
    let (param, code) = param_and_code(
        json(
            Operation::Generate,
            serde_json::json!({"model": "m", "input": {"messages": []}, "parameters": {"sizes": "1*1"}}),
        )
        .unwrap_err(),
    );
    assert_eq!((param.as_deref(), code), (Some("parameters.sizes"), InvalidCode::UnknownParameter));
}

#[test]
fn qwen_keeps_dashscope_switches_and_names_what_it_folded() {
    let r = json(
        Operation::Generate,
        serde_json::json!({
            "model": "wanx-v1", "n": 1,
            "input": {"messages": [{"role": "user", "content": "a lake"}]},
            "parameters": {"n": 2, "size": "1024*1024", "prompt_extend": false, "watermark": "true", "style": "<watercolor>", "steps": 30},
        }),
    )
    .unwrap();
    let dashscope = &r.options.extensions.dashscope;
    assert_eq!((dashscope.prompt_extend, dashscope.watermark), (Some(false), Some(true)));
    assert_eq!(dashscope.style.as_deref(), Some("<watercolor>"));
    assert_eq!(r.options.style, None, "wanx-v1's style is not DALL·E 3's");
    assert_eq!(r.options.extensions.steps, Some(30));
    // What came from `parameters` is named as written; the top-level `n` won and is `n`.
    assert_eq!((r.names.of("size").as_str(), r.names.of("steps").as_str()), ("parameters.size", "parameters.steps"));
    assert_eq!(r.names.of("n"), "n");
    let openai = json(Operation::Generate, serde_json::json!({"prompt": "p", "n": 2})).unwrap();
    assert_eq!(openai.names.of("n"), "n");
    let body = serde_json::json!({"model": "m", "input": {"messages": []}, "parameters": {"watermark": "maybe"}});
    let (param, code) = param_and_code(json(Operation::Generate, body).unwrap_err());
    assert_eq!((param.as_deref(), code), (Some("parameters.watermark"), InvalidCode::InvalidType));
}

#[test]
fn png_output_takes_no_compression_below_100() {
    for body in [
        serde_json::json!({"prompt": "p", "output_compression": 50}),
        serde_json::json!({"prompt": "p", "output_format": "png", "output_compression": 0}),
    ] {
        let (param, code) = param_and_code(json(Operation::Generate, body.clone()).unwrap_err());
        assert_eq!((param.as_deref(), code), (Some("output_compression"), InvalidCode::InvalidPngOutputCompression));
    }
    for body in [
        serde_json::json!({"prompt": "p", "output_format": "png", "output_compression": 100}),
        serde_json::json!({"prompt": "p", "output_format": "jpeg", "output_compression": 50}),
    ] {
        json(Operation::Generate, body).unwrap();
    }
    let form = vec![file("image"), text("output_compression", "80")];
    let (param, code) = param_and_code(parse_multipart(Operation::Variation, form, UnknownParams::Reject).unwrap_err());
    assert_eq!((param.as_deref(), code), (Some("output_compression"), InvalidCode::InvalidPngOutputCompression));
}

#[test]
fn seed_000_qwen_edit_with_inline_and_part_images() {
    let data_url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(PNG_1X1));
    let r = json(
        Operation::Edit,
        serde_json::json!({
            "model": "wanx-v1",
            "input": {"messages": [{"role": "user", "content": format!("Remove the background of https://img.example/a.png and {data_url} please.")}]},
        }),
    )
    .unwrap();
    assert_eq!(r.prompt.as_deref(), Some("Remove the background of and please."));
    assert_eq!(r.images.len(), 2);
    assert!(matches!(&r.images[0].source, ImageRef::Url(u) if u.as_str() == "https://img.example/a.png"));
    assert!(matches!(&r.images[1].source, ImageRef::Inline(b) if b.as_ref() == PNG_1X1));
    assert_eq!(r.images[0].param, "input.messages[0].content");

    let parts = json(
        Operation::Edit,
        serde_json::json!({"model": "qwen-image-edit", "input": {"messages": [{"role": "user", "content": [
            {"image": "https://img.example/b.png"}, {"text": "make it blue"}]}]}}),
    )
    .unwrap();
    assert_eq!(parts.prompt.as_deref(), Some("make it blue"));
    assert_eq!(parts.images[0].param, "input.messages[0].content[0].image");

    let none = json(
        Operation::Edit,
        serde_json::json!({"model": "wanx-v1", "input": {"messages": [{"role": "user", "content": "Remove the background and replace it with a solid white backdrop."}]}}),
    )
    .unwrap();
    assert!(none.images.is_empty(), "the core refuses an edit without a source image");
}

#[test]
fn seed_002_ig1_json_edit() {
    let data_url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(PNG_1X1));
    let r = json(
        Operation::Edit,
        serde_json::json!({
            "model": "qwen-image-edit",
            "images": [{"image_url": data_url}],
            "prompt": "Replace the iguana with a snake, keep the same neon theme and background.",
            "quality": "low", "size": "1280x720", "output_format": "png",
        }),
    )
    .unwrap();
    assert_eq!(r.images.len(), 1);
    assert_eq!(r.images[0].param, "images[0].image_url");
    assert_eq!(r.size, Some(SizeRequest::Exact(ImageSize::new(1280, 720))));
    let file_id = json(
        Operation::Edit,
        serde_json::json!({"prompt": "p", "images": [{"file_id": "file-1"}], "mask": {"file_id": "file-2"}}),
    )
    .unwrap();
    assert!(matches!(&file_id.images[0].source, ImageRef::FileId(id) if id == "file-1"));
    assert!(file_id.mask.is_some());
    let (param, _) = param_and_code(
        json(Operation::Edit, serde_json::json!({"prompt": "p", "images": [{"image_url": "ftp://x"}]})).unwrap_err(),
    );
    assert_eq!(param.as_deref(), Some("images[0].image_url"));
}

#[test]
fn multipart_names_merge_in_order() {
    let parts = vec![
        text("prompt", "在图片中添加一朵红色的玫瑰花"),
        file("image.0"),
        text("n", "2"),
        text("stream", "false"),
        text("output_compression", "100"),
        file("image.1.items"),
        file("image[]"),
        file("image[3]"),
        file("mask"),
        text("user", ""),
    ];
    let r = parse_multipart(Operation::Edit, parts, UnknownParams::Reject).unwrap();
    assert_eq!(r.images.len(), 4);
    assert_eq!(r.images[3].param, "image[3]");
    assert_eq!(r.n, Some(2));
    assert!(!r.stream);
    assert!(r.mask.is_some());
    assert_eq!(r.options.user, None);
    let single =
        parse_multipart(Operation::Edit, vec![text("prompt", "p"), file("image")], UnknownParams::Reject).unwrap();
    assert_eq!(single.images[0].param, "image");
}

#[test]
fn multipart_text_where_a_file_belongs() {
    let url = parse_multipart(
        Operation::Edit,
        vec![text("prompt", "p"), text("image", "https://h/x.png")],
        UnknownParams::Reject,
    )
    .unwrap();
    assert!(matches!(&url.images[0].source, ImageRef::Url(_)));
    let (param, code) = param_and_code(
        parse_multipart(Operation::Edit, vec![text("prompt", "p"), text("image", "<string>")], UnknownParams::Reject)
            .unwrap_err(),
    );
    assert_eq!((param.as_deref(), code), (Some("image"), InvalidCode::InvalidType));
    let (param, code) = param_and_code(
        parse_multipart(
            Operation::Edit,
            vec![text("prompt", "p"), text("n", "1"), text("n", "2")],
            UnknownParams::Reject,
        )
        .unwrap_err(),
    );
    assert_eq!((param.as_deref(), code), (Some("n"), InvalidCode::InvalidValue));
    let (param, code) = param_and_code(
        parse_multipart(Operation::Variation, vec![file("image"), text("prompt", "p")], UnknownParams::Reject)
            .unwrap_err(),
    );
    assert_eq!((param.as_deref(), code), (Some("prompt"), InvalidCode::UnknownParameter));
}
