//! Building OpenAI-compatible request bodies from a call and a quirk profile.
//!
//! The fields are computed once as an ordered list of name/value pairs ([`fields`]), then written
//! either as a JSON object or as multipart text parts, so JSON generations, JSON edits, multipart
//! edits and variations send exactly the same parameters. Only what the profile says the service
//! accepts is sent; everything else is left to the core to fill (or was refused up front).

use easel_core::backend::{BackendCall, InputImage};
use easel_core::types::{Background, ImageSize, Operation, Quality};
use reqwest::multipart::{Form, Part};
use serde_json::{Map, Value, json};

use crate::media::{data_url, mime};
use crate::profile::{Param, Quirks, SizeParam};

/// The size the service should make: the call's, or the nearest it can.
pub fn target_size(q: &Quirks, size: ImageSize) -> ImageSize {
    let rule = q.native_sizes.as_ref().unwrap_or(&q.sizes);
    if rule.allows(size) { size } else { rule.nearest(size) }
}

/// The service's name for a quality, or `None` to leave it out.
fn quality(q: &Quirks, want: Quality) -> Option<&'static str> {
    if want == Quality::Auto {
        return None;
    }
    let candidates: &[Quality] = match want {
        Quality::Low => &[Quality::Low, Quality::Standard, Quality::Medium],
        Quality::Medium => &[Quality::Medium, Quality::Standard],
        Quality::High => &[Quality::High, Quality::Hd],
        Quality::Hd => &[Quality::Hd, Quality::High],
        Quality::Standard => &[Quality::Standard, Quality::Medium],
        Quality::Auto => &[],
    };
    candidates.iter().find(|c| q.qualities.contains(c)).map(|c| c.as_str())
}

/// xAI's aspect ratios; the closest one is sent.
const RATIOS: &[(u32, u32)] = &[(1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (3, 2), (2, 3), (2, 1), (1, 2)];

fn aspect_ratio(size: ImageSize) -> String {
    let want = (f64::from(size.width) / f64::from(size.height)).ln();
    let (w, h) = RATIOS
        .iter()
        .min_by(|a, b| {
            let d = |r: &&(u32, u32)| ((f64::from(r.0) / f64::from(r.1)).ln() - want).abs();
            d(a).total_cmp(&d(b))
        })
        .copied()
        .unwrap_or((1, 1));
    format!("{w}:{h}")
}

/// Every field to send besides images, in order.
pub fn fields(
    q: &Quirks,
    model: &str,
    call: &BackendCall,
    stream: bool,
    extra: Option<&Map<String, Value>>,
) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::with_capacity(16);
    let mut put = |k: &str, v: Value| out.push((k.to_string(), v));
    put("model", json!(model));
    if call.operation != Operation::Variation {
        put("prompt", json!(call.prompt));
    }
    put("n", json!(call.n));
    let size = target_size(q, call.size);
    match q.size_param {
        // The service picks the size itself (the backend said so in its capabilities).
        SizeParam::Size if call.size_auto => put("size", json!("auto")),
        SizeParam::Size => put("size", json!(size.to_string())),
        SizeParam::WidthHeight => {
            put("width", json!(size.width));
            put("height", json!(size.height));
        }
        SizeParam::AspectRatio => {
            put("aspect_ratio", json!(aspect_ratio(size)));
            put("resolution", json!(if size.width.max(size.height) > 1536 { "2k" } else { "1k" }));
        }
        SizeParam::None => {}
    }
    if let Some(rf) = &q.response_format {
        put("response_format", json!(rf));
    }
    let accepts = |p: Param| q.params.contains(&p);
    let edit = call.operation == Operation::Edit;
    if accepts(Param::Quality)
        && let Some(value) = quality(q, call.quality)
    {
        put("quality", json!(value));
    }
    if let (true, Some(style)) = (accepts(Param::Style), call.options.style) {
        put("style", json!(style.as_str()));
    }
    if accepts(Param::Background) && call.options.background != Background::Auto {
        put("background", json!(call.options.background.as_str()));
    }
    if accepts(Param::OutputFormat) && q.output_formats.contains(&call.options.output_format) {
        put("output_format", json!(call.options.output_format.as_str()));
        if let (true, Some(c)) = (accepts(Param::OutputCompression), call.options.output_compression) {
            put("output_compression", json!(c));
        }
    }
    if let (true, Some(m)) = (accepts(Param::Moderation), call.options.moderation) {
        put("moderation", json!(m.as_str()));
    }
    if let (true, true, Some(f)) = (accepts(Param::InputFidelity), edit, call.options.input_fidelity) {
        put("input_fidelity", json!(f.as_str()));
    }
    if let (true, Some(u)) = (accepts(Param::User), &call.options.user) {
        put("user", json!(u));
    }
    let x = &call.options.extensions;
    if let (true, Some(v)) = (accepts(Param::NegativePrompt), &x.negative_prompt) {
        put("negative_prompt", json!(v));
    }
    if let (true, Some(v)) = (accepts(Param::Seed), x.seed) {
        put("seed", json!(v));
    }
    if let (true, Some(v)) = (accepts(Param::Steps), x.steps) {
        put("steps", json!(v));
    }
    if let (true, Some(v)) = (accepts(Param::GuidanceScale), x.guidance_scale) {
        put("guidance_scale", json!(v));
    }
    // Edits and variations both start from an image: `strength` says how far to move from it.
    if let (true, true, Some(v)) = (accepts(Param::Strength), call.operation != Operation::Generate, x.strength) {
        put("strength", json!(v));
    }
    if stream {
        put("stream", json!(true));
        put("partial_images", json!(call.partial_images));
    }
    if let Some(extra) = extra {
        for (k, v) in extra {
            out.retain(|(name, _)| name != k);
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

pub fn json_body(fields: Vec<(String, Value)>) -> Value {
    Value::Object(fields.into_iter().collect())
}

/// A JSON edit: `images: [{image_url}]` and `mask: {image_url}` as data URLs.
pub fn json_edit(fields: Vec<(String, Value)>, call: &BackendCall) -> Value {
    let mut body: Map<String, Value> = fields.into_iter().collect();
    let images: Vec<Value> = call.images.iter().map(|i| json!({ "image_url": data_url(i) })).collect();
    body.insert("images".into(), Value::Array(images));
    if let Some(mask) = &call.mask {
        body.insert("mask".into(), json!({ "image_url": data_url(mask) }));
    }
    Value::Object(body)
}

/// A generation carrying the first input image as `image_url`.
pub fn image_url_edit(fields: Vec<(String, Value)>, call: &BackendCall) -> Value {
    let mut body: Map<String, Value> = fields.into_iter().collect();
    if let Some(first) = call.images.first() {
        body.insert("image_url".into(), json!(data_url(first)));
    }
    Value::Object(body)
}

fn file(name: &str, image: &InputImage) -> Part {
    let ext = image.format.as_output().extension();
    Part::stream(reqwest::Body::from(image.bytes.clone()))
        .file_name(format!("{name}.{ext}"))
        .mime_str(mime(image.format))
        .expect("a static MIME type parses")
}

/// A multipart edit or variation: `image` (or `image[]` when several), `mask`, text fields.
pub fn multipart(fields: Vec<(String, Value)>, call: &BackendCall) -> Form {
    let mut form = Form::new();
    for (k, v) in fields {
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        form = form.text(k, text);
    }
    let name = if call.images.len() > 1 { "image[]" } else { "image" };
    for (i, image) in call.images.iter().enumerate() {
        form = form.part(name, file(&format!("image_{i}"), image));
    }
    if let Some(mask) = &call.mask {
        form = form.part("mask", file("mask", mask));
    }
    form
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aspect_ratios() {
        assert_eq!(aspect_ratio(ImageSize::new(1024, 1024)), "1:1");
        assert_eq!(aspect_ratio(ImageSize::new(1280, 720)), "16:9");
        assert_eq!(aspect_ratio(ImageSize::new(1024, 1536)), "2:3");
    }

    #[test]
    fn qualities_map_to_what_the_service_knows() {
        let d3 = Quirks::named("dall-e-3", "dall-e-3").unwrap();
        assert_eq!(quality(&d3, Quality::High), Some("hd"));
        assert_eq!(quality(&d3, Quality::Low), Some("standard"));
        assert_eq!(quality(&d3, Quality::Auto), None);
        let gpt = Quirks::named("gpt-image", "gpt-image-1").unwrap();
        assert_eq!(quality(&gpt, Quality::Hd), Some("high"));
    }

    #[test]
    fn auto_is_sent_to_services_that_pick_the_size() {
        let gpt = Quirks::named("gpt-image", "gpt-image-1").unwrap();
        let mut call = easel_core::testing::CallBuilder::generate().size(1024, 1024).build();
        call.size_auto = true;
        let sent = json_body(fields(&gpt, "gpt-image-1", &call, false, None));
        assert_eq!(sent["size"], "auto");
        assert!(sent.get("quality").is_none(), "quality auto is left to the service: {sent}");
        call.size_auto = false;
        assert_eq!(json_body(fields(&gpt, "gpt-image-1", &call, false, None))["size"], "1024x1024");
    }
}
