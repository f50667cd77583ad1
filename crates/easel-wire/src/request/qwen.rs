//! The Qwen / DashScope shape: `{"model", "input": {"messages": [{"role", "content"}]},
//! "parameters"?}` (seeds 000 and 001).
//!
//! `content` is a string or a list of `{"text"}` / `{"image"}` parts (OpenAI chat-style
//! `{"type": "image_url", "image_url": {"url"}}` parts too). For edits and variations, image
//! references written inline in a content string (URLs or data URLs) are taken out, in order, as
//! the input images, and the rest is the prompt (seed 000). `parameters` carries `size` as `W*H`,
//! `n`, `seed`, `negative_prompt`; DashScope's own switches (`prompt_extend`, `watermark`,
//! `style`) are accepted and only mean something to DashScope. Top-level OpenAI parameters
//! (`n`, `size`, `response_format`, ...) beside `input` are honoured and win over `parameters`.

use easel_types::error::CoreError;
use easel_types::request::ImageRequest;
use easel_types::types::Operation;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::images::{UrlField, extract_inline, named};
use super::openai::{Params, allowed_keys};
use super::{UnknownParams, check_keys, drop_nulls, errors};

const INPUT_KEYS: &[&str] = &["messages", "prompt", "negative_prompt", "images", "base_image_url", "mask_image_url"];
const PARAMETER_KEYS: &[&str] = &[
    "size",
    "n",
    "seed",
    "negative_prompt",
    "steps",
    "guidance_scale",
    "strength",
    "prompt_extend",
    "watermark",
    "style",
];

#[derive(Debug, Deserialize)]
struct Input {
    #[serde(default)]
    messages: Vec<Message>,
    prompt: Option<String>,
    negative_prompt: Option<String>,
    #[serde(default)]
    images: Vec<String>,
    base_image_url: Option<String>,
    mask_image_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    role: Option<String>,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    #[serde(rename = "type")]
    _kind: Option<String>,
    text: Option<String>,
    image: Option<String>,
    image_url: Option<UrlField>,
}

pub(super) fn parse(
    operation: Operation,
    mut map: Map<String, Value>,
    unknown: UnknownParams,
) -> Result<ImageRequest, CoreError> {
    let mut top = allowed_keys(operation, false);
    top.extend(["input", "parameters"]);
    check_keys(&mut map, &top, "", unknown)?;

    let mut input = match map.remove("input") {
        Some(Value::Object(input)) => input,
        _ => {
            return Err(CoreError::invalid_value("input", "'input' must be an object with 'messages'."));
        }
    };
    drop_nulls(&mut input);
    check_keys(&mut input, INPUT_KEYS, "input.", unknown)?;
    let input: Input = errors::from_value(Value::Object(input), "input.")?;

    // Fold `parameters` under the top level; top-level values win. The merged object is read
    // once, and an error names the object the value came from (`parameters.n` or `n`).
    let mut folded = Vec::new();
    if let Some(parameters) = map.remove("parameters") {
        let Value::Object(mut parameters) = parameters else {
            return Err(CoreError::invalid_value("parameters", "'parameters' must be an object."));
        };
        drop_nulls(&mut parameters);
        check_keys(&mut parameters, PARAMETER_KEYS, "parameters.", unknown)?;
        for ignored in ["prompt_extend", "watermark", "style"] {
            parameters.remove(ignored);
        }
        for (key, value) in parameters {
            if !map.contains_key(&key) {
                folded.push(key.clone());
                map.insert(key, value);
            }
        }
    }
    let params: Params = errors::from_value_named(Value::Object(map), |path| {
        let field = path.split(['.', '[']).next().unwrap_or(path);
        if folded.iter().any(|f| f == field) { format!("parameters.{path}") } else { path.to_string() }
    })?;
    let mut request = params.into_request(operation)?;

    let inline = operation != Operation::Generate;
    let mut texts = Vec::new();
    let users = input.messages.iter().any(|m| m.role.as_deref() == Some("user"));
    for (m, message) in input.messages.into_iter().enumerate() {
        if users && message.role.as_deref() != Some("user") {
            continue;
        }
        let param = format!("input.messages[{m}].content");
        match message.content {
            Content::Text(text) if inline => {
                let (rest, refs) = extract_inline(&text);
                for r in refs {
                    request.images.push(named(param.clone(), &r)?);
                }
                texts.push(rest);
            }
            Content::Text(text) => texts.push(text),
            Content::Parts(parts) => {
                for (p, part) in parts.into_iter().enumerate() {
                    if let Some(text) = part.text {
                        texts.push(text);
                    }
                    if let Some(image) = part.image {
                        request.images.push(named(format!("{param}[{p}].image"), &image)?);
                    }
                    if let Some(url) = part.image_url {
                        request.images.push(named(format!("{param}[{p}].image_url"), &url.into_string())?);
                    }
                }
            }
        }
    }
    for (i, image) in input.images.iter().enumerate() {
        request.images.push(named(format!("input.images[{i}]"), image)?);
    }
    if let Some(base) = &input.base_image_url {
        request.images.insert(0, named("input.base_image_url".into(), base)?);
    }
    if let Some(mask) = &input.mask_image_url {
        request.mask = Some(named("input.mask_image_url".into(), mask)?);
    }
    let text = texts.into_iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect::<Vec<_>>().join("\n");
    request.prompt = match (input.prompt, text.is_empty()) {
        (Some(prompt), true) => Some(prompt),
        (Some(prompt), false) => Some(format!("{prompt}\n{text}")),
        (None, false) => Some(text),
        (None, true) => request.prompt,
    };
    let extensions = &mut request.options.extensions;
    if extensions.negative_prompt.is_none() {
        extensions.negative_prompt = input.negative_prompt.filter(|p| !p.is_empty());
    }
    Ok(request)
}
