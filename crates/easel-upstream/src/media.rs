//! Image bytes in and out of provider bodies: data URLs for inputs, base64 and downloaded links
//! for results.
//!
//! Results are returned to the core as encoded bytes in the format they sniff as, never decoded
//! here: when the provider already made what the client asked for, the core passes them through.
//! Links are downloaded with the provider's [`ImageFetcher`] (its `allow_hosts`, https unless
//! allowed otherwise, public addresses only unless an entry names the address, every redirect hop
//! checked, a size cap, a magic-byte check), because DashScope's links expire and clients must not
//! be handed a provider's URL. A provider's answer is as untrusted as a client's URL: a
//! compromised or confused provider must not make this server fetch from its own network.

use base64_simd::STANDARD;
use bytes::Bytes;
use easel_core::BackendError;
use easel_core::backend::{InputImage, OutputImage};
use easel_core::fetch::{FetchError, ImageFetcher};
use easel_core::imaging::sniff;
use easel_core::types::InputFormat;
use url::Url;

use crate::http::{Failure, Next};

pub fn mime(format: InputFormat) -> &'static str {
    format.as_output().mime()
}

/// `data:image/png;base64,...`
pub fn data_url(image: &InputImage) -> String {
    let mut out = String::with_capacity(32 + image.bytes.len() * 4 / 3);
    out.push_str("data:");
    out.push_str(mime(image.format));
    out.push_str(";base64,");
    STANDARD.encode_append(&image.bytes, &mut out);
    out
}

/// Encoded bytes as an output image, if they are a PNG, JPEG or WebP.
pub fn output(provider: &str, bytes: Bytes) -> Result<OutputImage, Failure> {
    match sniff(&bytes) {
        Some(format) => Ok(OutputImage::Encoded { bytes, format: format.as_output() }),
        None => Err(Failure::protocol(format!(
            "The upstream provider '{provider}' returned data that is not a PNG, JPEG or WebP image."
        ))),
    }
}

/// A base64 image (a bare string or a data URL).
pub fn from_b64(provider: &str, text: &str) -> Result<OutputImage, Failure> {
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, data)| data),
        None => text,
    };
    // Strict and vectorised first; then the forgiving form (whitespace, missing padding).
    let payload = payload.trim().as_bytes();
    let bytes =
        STANDARD.decode_to_vec(payload).or_else(|_| base64_simd::forgiving_decode_to_vec(payload)).map_err(|e| {
            Failure::protocol(format!("The upstream provider '{provider}' returned invalid base64 image data: {e}"))
        })?;
    output(provider, Bytes::from(bytes))
}

/// Downloads a result link through the provider's fetcher.
pub async fn from_url(provider: &str, fetcher: &ImageFetcher, link: &str) -> Result<OutputImage, Failure> {
    if link.starts_with("data:") {
        return from_b64(provider, link);
    }
    let url = Url::parse(link).map_err(|e| {
        Failure::protocol(format!("The upstream provider '{provider}' returned an invalid image URL: {e}"))
    })?;
    let bytes = fetcher.fetch(&url).await.map_err(|e| {
        let next = match e {
            FetchError::Unavailable { transient: true } => Next::Retry,
            _ => Next::Fallback,
        };
        let message = match (e, fetcher.near_miss(&url)) {
            // The entry that names the host with another scheme or port, for the operator.
            (FetchError::NotAllowed, Some(hint)) => format!(
                "The upstream provider '{provider}' returned an image at a URL its allow_hosts do not allow: {hint}."
            ),
            (FetchError::NotAllowed, None) => format!(
                "The upstream provider '{provider}' returned an image on host '{}', which its allow_hosts do not allow (or which does not resolve to a public address).",
                url.host_str().unwrap_or("?")
            ),
            (other, _) => format!("Could not download the image the upstream provider '{provider}' made: {other}."),
        };
        Failure::new(BackendError::Upstream { status: None, message }, next)
    })?;
    output(provider, bytes)
}
