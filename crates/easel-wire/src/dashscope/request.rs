//! DashScope's request bodies → [`ImageRequest`].
//!
//! Every route takes `{"model", "input", "parameters"?}`. What only DashScope's routes check is
//! checked here, with DashScope's field names: `model` and `input` present (DashScope's
//! `BadRequest.EmptyModel` / `EmptyInput`), `input.prompt` on the synthesis routes, an input image
//! and a `function` Easel serves on `image2image`, a prompt among the messages of
//! `multimodal-generation`, which is an edit when a message holds an `{"image"}` part and a
//! generation otherwise. The body is then read by the Qwen `input.messages` parser
//! ([`crate::request::parse_json`]), so `input` and `parameters` mean here what they mean on the
//! OpenAI routes. DashScope answers with links, so the images are always hosted
//! (`response_format=url`).

use easel_types::error::{CoreError, InvalidCode};
use easel_types::request::ImageRequest;
use easel_types::types::{Operation, ResponseFormat};
use serde_json::{Map, Value};

use crate::request::{UnknownParams, parse_json};

/// The DashScope route a body arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/v1/services/aigc/text2image/image-synthesis` (async).
    Text2Image,
    /// `POST /api/v1/services/aigc/image2image/image-synthesis` (async).
    Image2Image,
    /// `POST /api/v1/services/aigc/multimodal-generation/generation` (sync).
    Multimodal,
}

/// The `image2image` functions Easel serves: an edit described by the prompt, with or without a
/// mask. The others (colorization, super resolution, expansion, ...) are wanx's own tools.
const FUNCTIONS: &[&str] = &["description_edit", "description_edit_with_mask"];
const TOP_KEYS: &[&str] = &["model", "input", "parameters"];

/// Reads a body that arrived on `route`.
pub fn parse(route: Route, body: &[u8], unknown: UnknownParams) -> Result<ImageRequest, CoreError> {
    let mut map = object(body)?;
    if let Some(key) = map.keys().find(|k| !TOP_KEYS.contains(&k.as_str())).cloned() {
        match unknown {
            UnknownParams::Reject => {
                return Err(CoreError::invalid(
                    key.clone(),
                    InvalidCode::UnknownParameter,
                    format!("Unknown parameter: '{key}'. The body holds 'model', 'input' and 'parameters'."),
                ));
            }
            UnknownParams::Ignore => map.retain(|k, _| TOP_KEYS.contains(&k.as_str())),
        }
    }
    match map.get("model") {
        Some(Value::String(model)) if !model.trim().is_empty() => {}
        None | Some(Value::Null) | Some(Value::String(_)) => return Err(CoreError::missing("model")),
        Some(_) => return Err(CoreError::invalid("model", InvalidCode::InvalidType, "'model' must be a string.")),
    }
    let input = match map.get_mut("input") {
        Some(Value::Object(input)) => input,
        None | Some(Value::Null) => return Err(CoreError::missing("input")),
        Some(_) => return Err(CoreError::invalid("input", InvalidCode::InvalidType, "'input' must be an object.")),
    };
    let operation = match route {
        Route::Text2Image => {
            prompt(input)?;
            Operation::Generate
        }
        Route::Image2Image => {
            image2image(input)?;
            Operation::Edit
        }
        Route::Multimodal => multimodal(input)?,
    };
    let body = serde_json::to_vec(&Value::Object(map)).map_err(|e| CoreError::Internal(e.into()))?;
    let mut request = parse_json(operation, &body, unknown)?;
    request.response_format = Some(ResponseFormat::Url);
    Ok(request)
}

fn object(body: &[u8]) -> Result<Map<String, Value>, CoreError> {
    let invalid = |message: String| CoreError::InvalidRequest { param: None, code: InvalidCode::InvalidJson, message };
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("The request body must be a JSON object.".into())),
        Err(e) => Err(invalid(format!("The request body is not valid JSON ({e})."))),
    }
}

fn text(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|t| !t.trim().is_empty())
}

/// The synthesis routes read the prompt from `input.prompt`.
fn prompt(input: &Map<String, Value>) -> Result<(), CoreError> {
    match input.get("prompt") {
        None | Some(Value::Null) => Err(CoreError::missing("input.prompt")),
        Some(value) if text(Some(value)).is_some() => Ok(()),
        Some(Value::String(_)) => Err(CoreError::invalid_value("input.prompt", "'input.prompt' must not be empty.")),
        Some(_) => {
            Err(CoreError::invalid("input.prompt", InvalidCode::InvalidType, "'input.prompt' must be a string."))
        }
    }
}

/// `function` (taken out: the edit is the prompt's), the image to edit, and the mask its
/// function needs.
fn image2image(input: &mut Map<String, Value>) -> Result<(), CoreError> {
    prompt(input)?;
    let function = match input.remove("function") {
        None | Some(Value::Null) => None,
        Some(Value::String(f)) if FUNCTIONS.contains(&f.as_str()) => Some(f),
        Some(other) => {
            let shown = other.as_str().map_or_else(|| other.to_string(), str::to_string);
            return Err(CoreError::invalid_value(
                "input.function",
                format!(
                    "Unsupported 'input.function': '{shown}'. Easel serves {} (the edit the prompt describes).",
                    FUNCTIONS.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(" and ")
                ),
            ));
        }
    };
    let has = |key: &str| match input.get(key) {
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        _ => false,
    };
    if !has("base_image_url") && !has("images") {
        return Err(CoreError::missing("input.base_image_url"));
    }
    if function.as_deref() == Some("description_edit_with_mask") && !has("mask_image_url") {
        return Err(CoreError::missing("input.mask_image_url"));
    }
    Ok(())
}

/// The messages hold the prompt; an `{"image"}` part makes the call an edit.
fn multimodal(input: &Map<String, Value>) -> Result<Operation, CoreError> {
    let messages = match input.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        None | Some(Value::Null) => return Err(CoreError::missing("input.messages")),
        Some(_) => {
            return Err(CoreError::invalid_value("input.messages", "'input.messages' must be a non-empty list."));
        }
    };
    let (mut has_text, mut has_image) = (false, false);
    for message in messages {
        match message.get("content") {
            Some(Value::Array(parts)) => {
                for part in parts {
                    has_text |= text(part.get("text")).is_some();
                    has_image |= part.get("image").is_some() || part.get("image_url").is_some();
                }
            }
            content => has_text |= text(content).is_some(),
        }
    }
    if !has_text {
        return Err(CoreError::invalid_value(
            "input.messages",
            "The messages hold no prompt: add a {\"text\": \"...\"} part to the user message's content.",
        ));
    }
    Ok(if has_image { Operation::Edit } else { Operation::Generate })
}

#[cfg(test)]
mod tests {
    use easel_types::request::ImageRef;
    use easel_types::types::{ImageSize, SizeRequest};
    use serde_json::json;

    use super::*;

    const PNG_URL: &str = "data:image/png;base64,iVBORw0KGgo=";

    fn read(route: Route, body: Value) -> Result<ImageRequest, CoreError> {
        parse(route, body.to_string().as_bytes(), UnknownParams::Reject)
    }

    fn param(error: CoreError) -> (Option<String>, InvalidCode) {
        match error {
            CoreError::InvalidRequest { param, code, .. } => (param, code),
            other => panic!("not an invalid request: {other:?}"),
        }
    }

    /// The documented text2image example (upstream-providers.md §3.1).
    #[test]
    fn text2image_as_documented() {
        let request = read(
            Route::Text2Image,
            json!({"model": "wanx2.1-t2i-turbo", "input": {"prompt": "a lake", "negative_prompt": "people"},
                   "parameters": {"size": "1024*1024", "n": 1, "seed": 42, "prompt_extend": true, "watermark": false}}),
        )
        .unwrap();
        assert_eq!(request.operation, Operation::Generate);
        assert_eq!(request.model.as_deref(), Some("wanx2.1-t2i-turbo"));
        assert_eq!(request.prompt.as_deref(), Some("a lake"));
        assert_eq!(request.size, Some(SizeRequest::Exact(ImageSize::new(1024, 1024))));
        assert_eq!(request.n, Some(1));
        assert_eq!(request.options.extensions.seed, Some(42));
        assert_eq!(request.options.extensions.negative_prompt.as_deref(), Some("people"));
        assert_eq!(request.response_format, Some(ResponseFormat::Url));
    }

    #[test]
    fn image2image_with_a_function() {
        let request = read(
            Route::Image2Image,
            json!({"model": "wanx2.1-imageedit", "input": {"function": "description_edit", "prompt": "make it snow",
                   "base_image_url": PNG_URL}, "parameters": {"n": 1}}),
        )
        .unwrap();
        assert_eq!(request.operation, Operation::Edit);
        assert_eq!(request.images.len(), 1);
        assert_eq!(request.images[0].param, "input.base_image_url");
        assert!(matches!(request.images[0].source, ImageRef::Inline(_)));
    }

    #[test]
    fn image2image_refusals_name_the_field() {
        let base = |input: Value| json!({"model": "wanx2.1-imageedit", "input": input});
        let cases = [
            (json!({"function": "colorization", "prompt": "x", "base_image_url": PNG_URL}), "input.function"),
            (json!({"function": "description_edit", "prompt": "x"}), "input.base_image_url"),
            (
                json!({"function": "description_edit_with_mask", "prompt": "x", "base_image_url": PNG_URL}),
                "input.mask_image_url",
            ),
            (json!({"base_image_url": PNG_URL}), "input.prompt"),
        ];
        for (input, field) in cases {
            let (got, _) = param(read(Route::Image2Image, base(input)).unwrap_err());
            assert_eq!(got.as_deref(), Some(field));
        }
    }

    /// Qwen-Image (text only) is a generation; Qwen-Image-Edit (an image part) an edit.
    #[test]
    fn multimodal_picks_the_operation_from_the_parts() {
        let generate = read(
            Route::Multimodal,
            json!({"model": "qwen-image", "input": {"messages": [{"role": "user", "content": [{"text": "a cat"}]}]},
                   "parameters": {"size": "1328*1328", "n": 1, "prompt_extend": true, "watermark": false}}),
        )
        .unwrap();
        assert_eq!(generate.operation, Operation::Generate);
        assert_eq!(generate.prompt.as_deref(), Some("a cat"));
        let edit = read(
            Route::Multimodal,
            json!({"model": "qwen-image-edit", "input": {"messages": [{"role": "user",
                   "content": [{"image": PNG_URL}, {"text": "add a hat"}]}]}}),
        )
        .unwrap();
        assert_eq!(edit.operation, Operation::Edit);
        assert_eq!(edit.images[0].param, "input.messages[0].content[0].image");
        assert_eq!(edit.prompt.as_deref(), Some("add a hat"));
    }

    #[test]
    fn missing_model_input_and_prompt() {
        let (field, code) = param(read(Route::Text2Image, json!({"input": {"prompt": "x"}})).unwrap_err());
        assert_eq!((field.as_deref(), code), (Some("model"), InvalidCode::MissingRequiredParameter));
        let (field, code) = param(read(Route::Multimodal, json!({"model": "m"})).unwrap_err());
        assert_eq!((field.as_deref(), code), (Some("input"), InvalidCode::MissingRequiredParameter));
        let (field, _) = param(read(Route::Text2Image, json!({"model": "m", "input": {}})).unwrap_err());
        assert_eq!(field.as_deref(), Some("input.prompt"));
        let (field, _) = param(
            read(Route::Multimodal, json!({"model": "m", "input": {"messages": [{"role": "user", "content": []}]}}))
                .unwrap_err(),
        );
        assert_eq!(field.as_deref(), Some("input.messages"));
    }

    #[test]
    fn bad_values_name_dashscope_fields() {
        let (field, _) = param(
            read(Route::Text2Image, json!({"model": "m", "input": {"prompt": "x"}, "parameters": {"n": "many"}}))
                .unwrap_err(),
        );
        assert_eq!(field.as_deref(), Some("parameters.n"));
        let (field, code) = param(
            read(Route::Text2Image, json!({"model": "m", "input": {"prompt": "x"}, "stream": true})).unwrap_err(),
        );
        assert_eq!((field.as_deref(), code), (Some("stream"), InvalidCode::UnknownParameter));
        let (field, code) = param(parse(Route::Text2Image, b"{", UnknownParams::Reject).unwrap_err());
        assert_eq!((field, code), (None, InvalidCode::InvalidJson));
    }
}
