//! Base64 text as shared bytes, and an image's encoded bytes held either raw or as that text.
//!
//! A relay's upstream answers with base64 and its client wants base64: when nothing about the
//! image changes, the text is passed on as it arrived ([`ImageBytes::Base64`], a `Bytes` slice of
//! the upstream's body), never decoded and encoded again. [`Base64`] is only ever canonical,
//! padded standard base64 (checked once, vectorised, when it is made), so it can be written into
//! JSON without escaping and decodes without error.

use base64_simd::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Standard, padded base64 text (ASCII, nothing to escape in JSON), shared.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64(Bytes);

/// The text is not standard, padded base64.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Base64Error(String);

impl Base64 {
    /// The base64 text of `data`.
    pub fn encode(data: &[u8]) -> Self {
        Self(Bytes::from(STANDARD.encode_to_string(data)))
    }

    /// `text` if it is standard, padded base64 (no whitespace, no data-URL prefix).
    pub fn checked(text: Bytes) -> Result<Self, Base64Error> {
        STANDARD.check(&text).map_err(|e| Base64Error(e.to_string()))?;
        Ok(Self(text))
    }

    /// The text, as ASCII bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Checked or encoded base64 is ASCII; the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many bytes the text decodes to, without decoding it.
    pub fn decoded_len(&self) -> usize {
        let padding = self.0.iter().rev().take(2).take_while(|&&b| b == b'=').count();
        self.0.len() / 4 * 3 - padding
    }

    pub fn decode(&self) -> Result<Bytes, Base64Error> {
        STANDARD.decode_to_vec(&self.0).map(Bytes::from).map_err(|e| Base64Error(e.to_string()))
    }

    /// At least the first `n` decoded bytes (all of them when there are fewer), decoding only
    /// the text they need: enough of an image to read its header.
    pub fn decode_prefix(&self, n: usize) -> Result<Bytes, Base64Error> {
        // Whole 4-character groups that are not the last one, so no padding is met.
        let chars = n.div_ceil(3) * 4;
        if chars + 4 >= self.0.len() {
            return self.decode();
        }
        STANDARD.decode_to_vec(&self.0[..chars]).map(Bytes::from).map_err(|e| Base64Error(e.to_string()))
    }
}

impl std::fmt::Debug for Base64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base64({} chars)", self.0.len())
    }
}

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde hands an owned String here either way; `Bytes` takes it without a copy.
        let text = String::deserialize(d)?;
        Self::checked(Bytes::from(text)).map_err(serde::de::Error::custom)
    }
}

/// An image's encoded bytes (PNG, JPEG, WebP): raw, or the base64 text of them as a backend
/// received it.
#[derive(Clone, PartialEq, Eq)]
pub enum ImageBytes {
    Raw(Bytes),
    Base64(Base64),
}

impl ImageBytes {
    /// The encoded image's length in bytes (decoded, for base64).
    pub fn len(&self) -> usize {
        match self {
            Self::Raw(bytes) => bytes.len(),
            Self::Base64(text) => text.decoded_len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes: shared when held raw, decoded otherwise.
    pub fn raw(&self) -> Result<Bytes, Base64Error> {
        match self {
            Self::Raw(bytes) => Ok(bytes.clone()),
            Self::Base64(text) => text.decode(),
        }
    }

    /// The base64 text: shared when held as base64, encoded otherwise.
    pub fn base64(&self) -> Base64 {
        match self {
            Self::Raw(bytes) => Base64::encode(bytes),
            Self::Base64(text) => text.clone(),
        }
    }

    /// At least the first `n` raw bytes (all when there are fewer), for magic bytes and headers.
    pub fn prefix(&self, n: usize) -> Result<Bytes, Base64Error> {
        match self {
            Self::Raw(bytes) => Ok(bytes.clone()),
            Self::Base64(text) => text.decode_prefix(n),
        }
    }
}

impl From<Bytes> for ImageBytes {
    fn from(bytes: Bytes) -> Self {
        Self::Raw(bytes)
    }
}

impl From<Vec<u8>> for ImageBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Raw(Bytes::from(bytes))
    }
}

impl std::fmt::Debug for ImageBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Raw(bytes) => write!(f, "{} bytes", bytes.len()),
            Self::Base64(text) => write!(f, "{} bytes as {text:?}", text.decoded_len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_text_is_shared_and_its_length_known_without_decoding() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[0xFF; 1000]] {
            let text = Base64::checked(Bytes::from(STANDARD.encode_to_string(data))).unwrap();
            assert_eq!(text.decoded_len(), data.len());
            assert_eq!(text.decode().unwrap(), data);
            assert_eq!(Base64::encode(data), text);
            let image = ImageBytes::Base64(text.clone());
            assert_eq!((image.len(), image.raw().unwrap()), (data.len(), Bytes::copy_from_slice(data)));
            assert_eq!(image.base64().as_bytes().as_ptr(), text.as_bytes().as_ptr(), "shared, not copied");
            let prefix = text.decode_prefix(7).unwrap();
            assert!(prefix.len() >= data.len().min(7) && data.starts_with(&prefix), "{}", prefix.len());
        }
    }

    #[test]
    fn anything_but_standard_padded_base64_is_refused() {
        for bad in ["aGk", "aGk=\n", " aGk=", "aG-k", "data:image/png;base64,aGk=", "aGk=aGk=", "\"aGk=\""] {
            assert!(Base64::checked(Bytes::from(bad)).is_err(), "{bad}");
        }
        assert_eq!(serde_json::from_str::<Base64>("\"aGk=\"").unwrap().as_str(), "aGk=");
        assert!(serde_json::from_str::<Base64>("\"aGk\"").is_err());
    }
}
