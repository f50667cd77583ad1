//! Multipart edits and variations, as the official SDKs, curl and gateways send them.
//!
//! Image parts may be named `image`, `image[]` (the SDKs' list form, even for one file),
//! `image[N]`, `image.N` or `image.N.items` (seed 003), repeated, and are merged in order of
//! appearance; the mask is `mask` (or `mask[]` with one element). An image part's bytes are
//! sniffed, never its Content-Type trusted. A text part may hold an image reference (a data URL or
//! an http(s) URL); any other text where a file belongs is `invalid_type`. Every other field is a
//! text part parsed exactly like its JSON counterpart.

use bytes::Bytes;
use easel_types::error::{CoreError, InvalidCode};
use easel_types::request::{ImageRef, ImageRequest, NamedImage};
use easel_types::types::Operation;
use serde_json::{Map, Value};

use super::openai::{Params, allowed_keys};
use super::{UnknownParams, check_keys, errors, images};

/// One part of a multipart body, as collected by the server.
#[derive(Clone)]
pub struct FormPart {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

impl std::fmt::Debug for FormPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FormPart({}, {:?}, {} bytes)", self.name, self.filename, self.data.len())
    }
}

/// Whether a multipart part of this name is an input image (`image`, `image[]`, `image[N]`,
/// `image.N`, `image.N.items`).
pub fn is_image_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name == "image"
        || name == "image[]"
        || name.strip_prefix("image[").and_then(|r| r.strip_suffix(']')).is_some_and(digits)
        || name.strip_prefix("image.").is_some_and(|r| digits(r.strip_suffix(".items").unwrap_or(r)))
}

pub(super) fn parse(
    operation: Operation,
    parts: Vec<FormPart>,
    unknown: UnknownParams,
) -> Result<ImageRequest, CoreError> {
    let mut image_parts = Vec::new();
    let mut mask = None;
    let mut fields = Map::new();
    for part in parts {
        if is_image_name(&part.name) {
            image_parts.push(part);
        } else if (part.name == "mask" || part.name == "mask[]") && operation != Operation::Edit {
            // Only edits take a mask.
            if unknown == UnknownParams::Reject {
                return Err(CoreError::invalid(
                    "mask",
                    InvalidCode::UnknownParameter,
                    "Unknown parameter: 'mask'. Only image edits take a mask.",
                ));
            }
        } else if part.name == "mask" || part.name == "mask[]" {
            if mask.is_some() {
                return Err(CoreError::invalid_value(
                    "mask",
                    "Invalid parameter: 'mask'. This parameter already has a different value in your parameters.",
                ));
            }
            mask = Some(image_from_part("mask".to_string(), part)?);
        } else {
            let name = part.name.clone();
            let Ok(text) = String::from_utf8(part.data.to_vec()) else {
                return Err(CoreError::invalid(
                    name.clone(),
                    InvalidCode::InvalidType,
                    format!("Invalid type for '{name}': expected a string, but got a file instead."),
                ));
            };
            if part.filename.is_some() && allowed_keys(operation, false).contains(&name.as_str()) {
                return Err(CoreError::invalid(
                    name.clone(),
                    InvalidCode::InvalidType,
                    format!("Invalid type for '{name}': expected a string, but got a file instead."),
                ));
            }
            if text.is_empty() {
                continue;
            }
            match fields.get(&name) {
                Some(Value::String(existing)) if *existing != text => {
                    return Err(CoreError::invalid_value(
                        name.clone(),
                        format!(
                            "Invalid parameter: '{name}'. This parameter already has a different value in your parameters."
                        ),
                    ));
                }
                _ => {
                    fields.insert(name, Value::String(text));
                }
            }
        }
    }
    check_keys(&mut fields, &allowed_keys(operation, false), "", unknown)?;
    let params: Params = errors::from_value(Value::Object(fields), "")?;
    let mut request = params.into_request(operation)?;

    let single = image_parts.len() == 1 && image_parts[0].name == "image";
    for (index, part) in image_parts.into_iter().enumerate() {
        let param = if single { "image".to_string() } else { format!("image[{index}]") };
        request.images.push(image_from_part(param, part)?);
    }
    request.mask = mask;
    Ok(request)
}

/// An image part: bytes that sniff as an image, a reference in a text part, or (with a file name)
/// bytes that will be reported as an invalid image file.
fn image_from_part(param: String, part: FormPart) -> Result<NamedImage, CoreError> {
    if easel_types::sniff::sniff(&part.data).is_some() || part.filename.is_some() {
        return Ok(NamedImage { param, source: ImageRef::Inline(part.data) });
    }
    let text = std::str::from_utf8(&part.data).unwrap_or_default().trim();
    if text.starts_with("data:") || text.starts_with("http://") || text.starts_with("https://") {
        return images::named(param, text);
    }
    Err(CoreError::invalid(
        param.clone(),
        InvalidCode::InvalidType,
        format!("Invalid type for '{param}': expected a file, but got a string instead."),
    ))
}

#[cfg(test)]
mod tests {
    use super::is_image_name;

    #[test]
    fn image_part_names() {
        for name in ["image", "image[]", "image[0]", "image[12]", "image.0", "image.1.items"] {
            assert!(is_image_name(name), "{name}");
        }
        for name in ["images", "image[x]", "image.", "image.a", "image[]x", "mask"] {
            assert!(!is_image_name(name), "{name}");
        }
    }
}
