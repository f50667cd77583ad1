//! Image references: data URLs, http(s) URLs, bare base64 and `{image_url}` / `{file_id}`
//! objects. The decoding (`images.rs`: `parse_reference`, `decode_base64`) is private to
//! `easel_wire::request`, so the fuzz string is placed where each public parser reads a reference:
//! a JSON edit's `image` (string, object, list), `images[].image_url` (string and `{url}`), the
//! Qwen `input.images` and `{"image"}` content parts, and a multipart `image` text part.
//!
//! What a reference that parses must be (README, "Image inputs"): a `data:` reference is inline
//! bytes, an http(s) one a URL, and bare base64 only counts when its bytes sniff as an image.
#![no_main]

use easel_types::request::{ImageRef, ImageRequest};
use easel_types::types::Operation;
use easel_wire::request::{FormPart, UnknownParams, parse_json, parse_multipart};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn check(text: &str, result: Result<ImageRequest, easel_types::error::CoreError>) {
    let Ok(request) = result else { return };
    let trimmed = text.trim();
    for image in request.images.iter().chain(request.mask.as_ref()) {
        match &image.source {
            ImageRef::Inline(bytes) => {
                assert!(!trimmed.starts_with("http://") && !trimmed.starts_with("https://"));
                if !trimmed.starts_with("data:") {
                    assert!(easel_types::sniff::sniff(bytes).is_some(), "bare base64 that is not an image");
                }
            }
            ImageRef::Url(url) => {
                assert!(trimmed.starts_with("http://") || trimmed.starts_with("https://"));
                assert!(matches!(url.scheme(), "http" | "https"), "{url}");
            }
            ImageRef::FileId(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let edits = [
        json!({"prompt": "p", "image": text}),
        json!({"prompt": "p", "image": {"image_url": text}}),
        json!({"prompt": "p", "image": [text, {"image_url": {"url": text}}]}),
        json!({"prompt": "p", "images": [{"image_url": text}]}),
        json!({"prompt": "p", "images": [{"image_url": {"url": text}}], "mask": {"image_url": text}}),
        json!({"input": {"images": [text], "messages": [{"role": "user", "content": "p"}]}}),
        json!({"input": {"messages": [{"role": "user", "content": [{"image": text}, {"text": "p"}]}]}}),
        json!({"input": {"base_image_url": text, "mask_image_url": text, "prompt": "p"}}),
    ];
    for body in &edits {
        let body = serde_json::to_vec(body).unwrap();
        check(text, parse_json(Operation::Edit, &body, UnknownParams::Reject));
    }
    for name in ["image", "mask"] {
        let parts = vec![
            FormPart { name: "prompt".into(), filename: None, content_type: None, data: "p".into() },
            FormPart { name: name.into(), filename: None, content_type: None, data: data.to_vec().into() },
        ];
        check(text, parse_multipart(Operation::Edit, parts, UnknownParams::Reject));
    }
});
