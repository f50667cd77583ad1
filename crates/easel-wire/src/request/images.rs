//! Image references inside bodies: data URLs, http(s) URLs, raw base64 and file ids.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use easel_types::error::{CoreError, InvalidCode};
use easel_types::request::{ImageRef, NamedImage};
use serde::Deserialize;
use url::Url;

/// `{"image_url": "..."}` (or `{"image_url": {"url": "..."}}`) or `{"file_id": "..."}`, exactly one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRefBody {
    image_url: Option<UrlField>,
    file_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum UrlField {
    Text(String),
    Object { url: String },
}

/// The JSON `image` (and `mask`) field: a reference string, a reference object, or a list of them.
/// The list is tried before the object: serde reads a struct from a sequence too, so
/// `["data:...", "data:..."]` would otherwise be taken as `{"image_url", "file_id"}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ImageField {
    Text(String),
    List(Vec<ImageItem>),
    Object(ImageRefBody),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ImageItem {
    Text(String),
    Object(ImageRefBody),
}

impl ImageRefBody {
    pub fn into_named(self, param: &str) -> Result<NamedImage, CoreError> {
        match (self.image_url, self.file_id) {
            (Some(url), None) => named(format!("{param}.image_url"), &url.into_string()),
            (None, Some(id)) => Ok(NamedImage { param: format!("{param}.file_id"), source: ImageRef::FileId(id) }),
            (Some(_), Some(_)) => {
                Err(CoreError::invalid_value(param, "Give either 'image_url' or 'file_id', not both."))
            }
            (None, None) => Err(CoreError::invalid(
                format!("{param}.image_url"),
                InvalidCode::MissingRequiredParameter,
                format!("Missing required parameter: '{param}.image_url' (or '{param}.file_id')."),
            )),
        }
    }
}

impl ImageField {
    pub fn into_named(self, param: &str) -> Result<Vec<NamedImage>, CoreError> {
        match self {
            Self::Text(t) => Ok(vec![named(param.to_string(), &t)?]),
            Self::Object(body) => Ok(vec![body.into_named(param)?]),
            Self::List(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    ImageItem::Text(t) => named(format!("{param}[{i}]"), &t),
                    ImageItem::Object(body) => body.into_named(&format!("{param}[{i}]")),
                })
                .collect(),
        }
    }
}

/// A data URL (`data:image/png;base64,...`), an http(s) URL, or bare base64 of an image.
pub fn parse_reference(text: &str) -> Result<ImageRef, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or("Invalid data URL: no ',' before the data.")?;
        if !meta.ends_with(";base64") {
            return Err("Invalid data URL: only base64 data URLs are supported (data:image/png;base64,...).".into());
        }
        return decode_base64(data)
            .map(ImageRef::Inline)
            .ok_or_else(|| "Invalid data URL: the data is not valid base64.".into());
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        return Url::parse(text).map(ImageRef::Url).map_err(|e| format!("Invalid image URL: {e}."));
    }
    match decode_base64(text) {
        Some(bytes) if easel_types::sniff::sniff(&bytes).is_some() => Ok(ImageRef::Inline(bytes)),
        _ => Err("Expected an image URL: an https URL or a base64 data URL (data:image/png;base64,...).".into()),
    }
}

/// Standard base64, tolerating the line breaks some clients insert.
pub fn decode_base64(data: &str) -> Option<Bytes> {
    let compact: String;
    let data = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        compact.as_str()
    } else {
        data
    };
    STANDARD.decode(data).ok().map(Bytes::from)
}

impl UrlField {
    pub(super) fn into_string(self) -> String {
        match self {
            Self::Text(t) | Self::Object { url: t } => t,
        }
    }
}

/// Parses `text` as an image reference for `param`.
pub fn named(param: String, text: &str) -> Result<NamedImage, CoreError> {
    match parse_reference(text) {
        Ok(source) => Ok(NamedImage { param, source }),
        Err(message) => Err(CoreError::invalid(param, InvalidCode::InvalidImageUrl, message)),
    }
}

/// Splits image references (http(s) URLs and `data:image/` URLs) out of free text, in order;
/// returns the text without them.
pub fn extract_inline(text: &str) -> (String, Vec<String>) {
    let mut words = Vec::new();
    let mut refs = Vec::new();
    for word in text.split_whitespace() {
        let core = word
            .trim_start_matches(['(', '<', '[', '"', '\''])
            .trim_end_matches([')', '>', ']', '"', '\'', ',', ';', '.']);
        if core.starts_with("https://") || core.starts_with("http://") || core.starts_with("data:image/") {
            refs.push(core.to_string());
        } else {
            words.push(word);
        }
    }
    (words.join(" "), refs)
}
