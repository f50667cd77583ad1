//! Image bytes in and out of provider bodies: data URLs for inputs, base64 and downloaded links
//! for results.
//!
//! Results are returned to the core as encoded bytes in the format they sniff as, never decoded
//! here: when the provider already made what the client asked for, the core passes them through.
//! Base64 in canonical form stays base64 ([`ImageBytes::Base64`], checked whole but decoded only
//! as far as the magic bytes), so a relayed image the client wants as base64 is never decoded and
//! encoded again; other base64 (whitespace, a missing padding) is decoded here.
//! Links are downloaded with the provider's [`ImageFetcher`] (its `allow_hosts`, https unless
//! allowed otherwise, public addresses only unless an entry names the address, every redirect hop
//! checked, a size cap, a magic-byte check), because DashScope's links expire and clients must not
//! be handed a provider's URL. A provider's answer is as untrusted as a client's URL: a
//! compromised or confused provider must not make this server fetch from its own network.

use base64_simd::STANDARD;
use bytes::Bytes;
use easel_core::BackendError;
use easel_core::backend::{InputImage, OutputImage};
use easel_core::base64::{Base64, ImageBytes};
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
pub fn output(provider: &str, bytes: ImageBytes) -> Result<OutputImage, Failure> {
    let start = bytes.prefix(16).map_err(|e| invalid_base64(provider, &e))?;
    match sniff(&start) {
        Some(format) => Ok(OutputImage::Encoded { bytes, format: format.as_output() }),
        None => Err(Failure::protocol(format!(
            "The upstream provider '{provider}' returned data that is not a PNG, JPEG or WebP image."
        ))),
    }
}

fn invalid_base64(provider: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::protocol(format!("The upstream provider '{provider}' returned invalid base64 image data: {e}"))
}

/// A base64 image (a bare string or a data URL); `text` is best a slice of the response body,
/// which it then stays.
pub fn from_b64(provider: &str, text: Bytes) -> Result<OutputImage, Failure> {
    let payload = match text.strip_prefix(b"data:") {
        Some(rest) => match rest.iter().position(|&b| b == b',') {
            Some(comma) => text.slice(5 + comma + 1..),
            None => text.slice(5..),
        },
        None => text,
    };
    // Canonical base64 is kept as it is; the forgiving form (whitespace, missing padding) is
    // decoded now.
    let bytes = match Base64::checked(payload.clone()) {
        Ok(text) => ImageBytes::Base64(text),
        Err(_) => {
            let trimmed = payload.trim_ascii();
            let decoded = STANDARD
                .decode_to_vec(trimmed)
                .or_else(|_| base64_simd::forgiving_decode_to_vec(trimmed))
                .map_err(|e| invalid_base64(provider, &e))?;
            ImageBytes::Raw(Bytes::from(decoded))
        }
    };
    output(provider, bytes)
}

/// Downloads a result link through the provider's fetcher.
pub async fn from_url(provider: &str, fetcher: &ImageFetcher, link: &str) -> Result<OutputImage, Failure> {
    if link.starts_with("data:") {
        return from_b64(provider, Bytes::copy_from_slice(link.as_bytes()));
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
    output(provider, bytes.into())
}

#[cfg(test)]
mod tests {
    use easel_core::types::OutputFormat;

    use super::*;

    fn png() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(4, 3).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn canonical_base64_stays_a_slice_of_the_body() {
        let text = STANDARD.encode_to_string(png());
        let body = Bytes::from(format!(r#"{{"data":[{{"b64_json":"{text}"}}]}}"#));
        let start = body.windows(4).position(|w| w == b"iVBO").unwrap();
        for given in [body.slice(start..start + text.len()), Bytes::from(format!("data:image/png;base64,{text}"))] {
            let Ok(OutputImage::Encoded { bytes: ImageBytes::Base64(kept), format: OutputFormat::Png }) =
                from_b64("p", given.clone())
            else {
                panic!("kept as base64")
            };
            assert_eq!(kept.as_str(), text);
            assert_eq!(kept.as_bytes().as_ptr(), given[given.len() - text.len()..].as_ptr(), "not copied");
        }
    }

    #[test]
    fn other_base64_is_decoded_and_what_is_not_an_image_refused() {
        let text = STANDARD.encode_to_string(png());
        let spaced = Bytes::from(format!(" {}\n{} ", &text[..8], text[8..].trim_end_matches('=')));
        match from_b64("p", spaced) {
            Ok(OutputImage::Encoded { bytes: ImageBytes::Raw(raw), .. }) => assert_eq!(raw, png()),
            other => panic!("decoded: {other:?}"),
        }
        for bad in [STANDARD.encode_to_string(b"hello world, not an image"), "%%% not base64".into(), String::new()] {
            let Err(failure) = from_b64("p", Bytes::from(bad.clone())) else { panic!("{bad} refused") };
            assert!(matches!(failure.error, BackendError::Upstream { .. }), "{bad}: {:?}", failure.error);
        }
    }
}
