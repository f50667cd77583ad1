//! DashScope's sync message protocol: `multimodal-generation/generation` (qwen-image,
//! qwen-image-edit, z-image, wan2.6-t2i) and `image-generation/generation` (wan2.6/2.7 image).
//!
//! The request is one user message whose content lists the input images (data URLs, in order:
//! the output follows the last) and then the prompt text. All images of an answer are in
//! `choices[].message.content[]`; every one is kept (new-api keeps one per choice and loses n>1).

use easel_core::backend::{BackendCall, BackendOutput};
use serde_json::{Value, json};

use super::{DashScopeTarget, send};
use crate::http::Failure;
use crate::media::data_url;

pub async fn call(t: &DashScopeTarget, call: &BackendCall, path: &str) -> Result<BackendOutput, Failure> {
    let mut content: Vec<Value> = call.images.iter().map(|i| json!({ "image": data_url(i) })).collect();
    content.push(json!({ "text": call.prompt }));
    let body = json!({
        "model": t.model,
        "input": { "messages": [{ "role": "user", "content": content }] },
        "parameters": t.parameters(call, true),
    });
    let p = &t.provider;
    let answer = send(p, p.post(path).json(&body)).await?;
    let output = answer.output.unwrap_or_default();
    let mut links = Vec::new();
    let mut revised = None;
    for choice in output.choices.unwrap_or_default() {
        for item in choice.message.map(|m| m.content).unwrap_or_default() {
            if let Some(image) = item.image.filter(|i| !i.is_empty()) {
                links.push(image);
            } else if let Some(text) = item.text.filter(|t| !t.trim().is_empty()) {
                revised.get_or_insert(text);
            }
        }
    }
    let item_errors = match (links.is_empty(), output.code) {
        (true, Some(code)) => vec![(code, output.message.unwrap_or_default())],
        _ => Vec::new(),
    };
    let count = answer.usage.and_then(|u| u.image_count);
    t.collect(links, item_errors, revised, count).await
}
