//! serde errors → OpenAI-style messages naming the parameter.

use easel_types::error::{CoreError, InvalidCode};

/// Deserializes `value` into `T`, reporting the failing field as `param` (prefixed).
pub fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value, prefix: &str) -> Result<T, CoreError> {
    from_value_named(value, |path| {
        if path.is_empty() { prefix.trim_end_matches('.').to_string() } else { format!("{prefix}{path}") }
    })
}

/// Deserializes `value` into `T`, reporting the failing field as `name(path)`: for bodies merged
/// from several objects, where the path alone does not say which object the client wrote it in.
/// The path of the whole value is empty.
pub fn from_value_named<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    name: impl Fn(&str) -> String,
) -> Result<T, CoreError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = name(if path == "." { "" } else { &path });
        let inner = e.into_inner().to_string();
        if let Some(rest) = inner.strip_prefix("unknown field `") {
            // The path already ends at the unknown field.
            let field = rest.split('`').next().unwrap_or_default();
            let param = if param.is_empty() { field.to_string() } else { param };
            CoreError::unknown_parameter(&param)
        } else if inner.starts_with("Invalid value") || inner.starts_with("Invalid size") {
            CoreError::invalid(param, InvalidCode::InvalidValue, inner)
        } else if let Some(field) = inner.strip_prefix("missing field ") {
            let field = field.trim_matches('`');
            let param = if param.is_empty() { field.to_string() } else { format!("{param}.{field}") };
            CoreError::missing(&param)
        } else {
            let detail = inner.strip_prefix("invalid type: ").map_or(inner.clone(), |rest| {
                let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, "another type"));
                format!("expected {expected}, but got {got} instead")
            });
            if param.is_empty() {
                // The whole body has the wrong shape: no parameter to name.
                return CoreError::InvalidRequest {
                    param: None,
                    code: InvalidCode::InvalidType,
                    message: format!("Invalid type for the request body: {detail}."),
                };
            }
            CoreError::invalid(
                param.clone(),
                InvalidCode::InvalidType,
                format!("Invalid type for '{param}': {detail}."),
            )
        }
    })
}
