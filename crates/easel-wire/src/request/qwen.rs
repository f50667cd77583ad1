//! The Qwen / DashScope shape: `{"model", "input": {"messages": [{"role", "content"}]},
//! "parameters"?}` (seeds 000 and 001).
//!
//! `content` is a string or a list of `{"text"}` / `{"image"}` parts (OpenAI chat-style
//! `{"type": "image_url", "image_url": {"url"}}` parts too). For edits and variations, image
//! references written inline in a content string (URLs or data URLs) are taken out, in order, as
//! the input images, and the rest is the prompt (seed 000). `parameters` carries `size` as `W*H`,
//! `n`, `seed`, `negative_prompt`, `steps`, `guidance_scale`, `strength`; DashScope's own
//! switches (`prompt_extend`, `watermark`, and wanx-v1's `style`) are kept in
//! [`DashScopeOptions`] and sent by the DashScope backend under those names; other backends
//! ignore them. Top-level OpenAI parameters (`n`, `size`, `response_format`, ...) beside `input`
//! are honoured and win over `parameters`. A parameter taken from `parameters` is named
//! `parameters.<name>` in every error, the core's range checks included ([`ParamNames`]).

use easel_types::error::CoreError;
use easel_types::request::{DashScopeOptions, ImageRequest, ParamNames};
use easel_types::types::Operation;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::images::{UrlField, extract_inline, named};
use super::openai::{Params, allowed_keys};
use super::{UnknownParams, check_keys, drop_nulls, errors, lenient};

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
/// DashScope's own switches: kept apart from the OpenAI parameters (`style` here is wanx-v1's,
/// not DALL·E 3's) and sent only to DashScope.
const DASHSCOPE_KEYS: &[&str] = &["prompt_extend", "watermark", "style"];

#[derive(Debug, Default, Deserialize)]
struct DashScopeParams {
    #[serde(default, deserialize_with = "lenient::bool")]
    prompt_extend: Option<bool>,
    #[serde(default, deserialize_with = "lenient::bool")]
    watermark: Option<bool>,
    style: Option<String>,
}

impl From<DashScopeParams> for DashScopeOptions {
    fn from(p: DashScopeParams) -> Self {
        Self { prompt_extend: p.prompt_extend, watermark: p.watermark, style: p.style.filter(|s| !s.is_empty()) }
    }
}

/// Removes `keys` from `map`, returning them as an object of their own.
fn take(map: &mut Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    keys.iter().filter_map(|k| map.remove(*k).map(|v| (k.to_string(), v))).collect()
}

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
    let mut dashscope = DashScopeParams::default();
    if let Some(parameters) = map.remove("parameters") {
        let Value::Object(mut parameters) = parameters else {
            return Err(CoreError::invalid_value("parameters", "'parameters' must be an object."));
        };
        drop_nulls(&mut parameters);
        check_keys(&mut parameters, PARAMETER_KEYS, "parameters.", unknown)?;
        dashscope = errors::from_value(Value::Object(take(&mut parameters, DASHSCOPE_KEYS)), "parameters.")?;
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
    request.names = ParamNames::under_parameters(folded);
    request.options.extensions.dashscope = dashscope.into();

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
