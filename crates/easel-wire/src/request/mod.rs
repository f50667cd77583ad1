//! Inbound dialects → [`ImageRequest`].
//!
//! | body | parser |
//! |---|---|
//! | OpenAI JSON generations, JSON edits (`images[]`, IG1's body) | [`parse_json`] → [`openai`] |
//! | Qwen `{"model", "input": {"messages"}, "parameters"}` | [`parse_json`] → [`qwen`] |
//! | multipart edits and variations | [`parse_multipart`] → [`multipart`] |
//!
//! Every parameter, from JSON or from a multipart text part, goes through one serde struct,
//! [`openai::Params`], so a value means the same whatever the dialect. `null` and empty
//! multipart strings mean absent. Unknown parameters are refused with OpenAI's
//! `unknown_parameter` unless the server runs in lenient mode.

mod errors;
mod images;
mod lenient;
mod multipart;
mod openai;
mod qwen;

use easel_types::error::{CoreError, InvalidCode};
use easel_types::request::ImageRequest;
use easel_types::types::Operation;
use serde_json::{Map, Value};

pub use errors::from_value;
pub use multipart::{FormPart, is_image_name};

/// What to do with parameters Easel does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownParams {
    /// 400 `unknown_parameter`, as OpenAI does.
    #[default]
    Reject,
    /// Drop them silently (gateways and clients add extras).
    Ignore,
}

/// Parses a JSON body for `operation`.
pub fn parse_json(operation: Operation, body: &[u8], unknown: UnknownParams) -> Result<ImageRequest, CoreError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| CoreError::InvalidRequest {
        param: None,
        code: InvalidCode::InvalidJson,
        message: format!(
            "We could not parse the JSON body of your request ({e}). The OpenAI API expects a JSON payload."
        ),
    })?;
    let Value::Object(mut map) = value else {
        return Err(CoreError::InvalidRequest {
            param: None,
            code: InvalidCode::InvalidJson,
            message: "The request body must be a JSON object.".into(),
        });
    };
    drop_nulls(&mut map);
    if map.contains_key("input") {
        qwen::parse(operation, map, unknown)
    } else {
        openai::parse_json(operation, map, unknown)
    }
}

/// Parses the parts of a multipart body for `operation`.
pub fn parse_multipart(
    operation: Operation,
    parts: Vec<FormPart>,
    unknown: UnknownParams,
) -> Result<ImageRequest, CoreError> {
    multipart::parse(operation, parts, unknown)
}

/// The parameters an OpenAI-dialect body may carry for `operation` besides multipart image parts
/// (`json_images`: a JSON body, which may hold `images`, `image` and `mask`). The server's
/// OpenAPI document is tested against this list.
pub fn parameter_names(operation: Operation, json_images: bool) -> Vec<&'static str> {
    openai::allowed_keys(operation, json_images)
}

/// JSON `null` means the client did not say.
fn drop_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, v| !v.is_null());
}

/// Refuses (or drops) keys not in `allowed`, naming the first offender with `prefix`.
fn check_keys(
    map: &mut Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
    unknown: UnknownParams,
) -> Result<(), CoreError> {
    let offender = map.keys().find(|k| !allowed.contains(&k.as_str())).cloned();
    match (offender, unknown) {
        (None, _) => Ok(()),
        (Some(_), UnknownParams::Ignore) => {
            map.retain(|k, _| allowed.contains(&k.as_str()));
            Ok(())
        }
        (Some(key), UnknownParams::Reject) => {
            let param = format!("{prefix}{key}");
            Err(CoreError::unknown_parameter(&param))
        }
    }
}

#[cfg(test)]
mod tests;
