//! Request → job: model resolution, defaults, input images, and every model-specific check.

use std::sync::Arc;

use crate::backend::{Capabilities, InputImage};
use crate::error::{CoreError, InvalidCode};
use crate::fetch::FetchError;
use crate::imaging::{self, DecodeLimits, ImageError};
use crate::job::{Decoded, ImageJob};
use crate::range::IntRange;
use crate::registry::Model;
use crate::request::{ImageRef, ImageRequest, NamedImage, Options, ParamNames};
use crate::types::{Background, ImageSize, Operation, Quality, SizeRequest};

use super::ImageService;

impl ImageService {
    /// The model a request names, or the default for its operation. The server resolves it once,
    /// checks the caller may use it, and hands it to [`ImageService::prepare`].
    pub fn resolve(&self, operation: Operation, id: Option<&str>) -> Result<Arc<Model>, CoreError> {
        match id {
            Some(id) => self.registry.get(id).ok_or_else(|| CoreError::ModelNotFound(id.to_string())),
            None => self.registry.default_for(operation).ok_or_else(|| {
                CoreError::invalid_value(
                    "model",
                    "No model was given and this server has no default model; set 'model'.",
                )
            }),
        }
    }

    /// Checks `request` against `model` (resolved by [`ImageService::resolve`]) and makes it a
    /// job: every default applied, every image fetched and its header read, every range checked
    /// against the model's capabilities. Nothing is spent before this succeeds.
    pub async fn prepare(&self, request: ImageRequest, model: Arc<Model>) -> Result<ImageJob, CoreError> {
        let operation = request.operation;
        let caps = model.backend.capabilities();
        if !caps.supports(operation) {
            let what = match operation {
                Operation::Generate => "image generation",
                Operation::Edit => "image edits",
                Operation::Variation => "image variations",
            };
            return Err(CoreError::invalid(
                "model",
                InvalidCode::UnsupportedOperation,
                format!("The model '{}' does not support {what}.", model.id),
            ));
        }

        let prompt = check_prompt(operation, request.prompt, caps)?;
        let names = &request.names;
        let n = IntRange::new(1, i64::from(caps.max_n)).check(&names.of("n"), request.n.unwrap_or(1))? as u32;
        let options = check_options(request.options, caps, &model.id, names)?;
        let (images, mask, decoded) = self.resolve_images(operation, request.images, request.mask, caps).await?;

        let size_request = request.size.unwrap_or(SizeRequest::Auto);
        let size = match size_request {
            SizeRequest::Exact(size) => {
                caps.sizes.check(size).map_err(|m| CoreError::invalid_value(names.of("size"), m))?;
                size
            }
            SizeRequest::Auto => match images.first() {
                Some(first) if caps.sizes.allows(first.size) => first.size,
                Some(first) => caps.sizes.nearest(first.size),
                None => caps.default_size,
            },
        };

        // A backend that picks sizes gets `auto` on generations; an edit's `auto` is its source's
        // size, whoever makes it.
        let size_auto = size_request == SizeRequest::Auto && caps.picks_size && images.is_empty();

        let quality = request.quality.unwrap_or(Quality::Auto);
        if quality != Quality::Auto && !caps.qualities.contains(&quality) {
            let names: Vec<&str> = caps.qualities.iter().map(|q| q.as_str()).collect();
            return Err(CoreError::invalid_value(
                "quality",
                format!("Invalid value: '{quality}'. Supported values are: {}.", crate::types::quote_list(&names)),
            ));
        }
        let resolved_quality = if quality == Quality::Auto { caps.default_quality } else { quality };

        let partial_images = if request.stream { request.partial_images.unwrap_or(0) } else { 0 };
        Ok(ImageJob {
            operation,
            prompt,
            images,
            mask,
            n,
            size,
            size_auto,
            quality,
            resolved_quality,
            response_format: request
                .response_format
                .or(model.defaults.response_format)
                .unwrap_or(self.settings.default_response_format),
            stream: request.stream,
            partial_images,
            options,
            decoded,
            model,
        })
    }

    async fn resolve_images(
        &self,
        operation: Operation,
        images: Vec<NamedImage>,
        mask: Option<NamedImage>,
        caps: &Capabilities,
    ) -> Result<(Vec<InputImage>, Option<InputImage>, Option<Decoded>), CoreError> {
        match operation {
            Operation::Generate => {
                if let Some(first) = images.first() {
                    return Err(CoreError::invalid(
                        first.param.clone(),
                        InvalidCode::UnknownParameter,
                        "Image generations take no input images; use /v1/images/edits.",
                    ));
                }
                if let Some(mask) = mask {
                    return Err(CoreError::invalid(
                        mask.param,
                        InvalidCode::UnknownParameter,
                        "Image generations take no mask.",
                    ));
                }
                return Ok((Vec::new(), None, None));
            }
            Operation::Edit if images.is_empty() => {
                return Err(CoreError::invalid(
                    "image",
                    InvalidCode::MissingRequiredParameter,
                    "Missing required parameter: 'image'. An edit needs at least one source image (a file part, an image URL or a data URL).",
                ));
            }
            Operation::Variation if images.is_empty() => {
                return Err(CoreError::invalid(
                    "image",
                    InvalidCode::MissingRequiredParameter,
                    "Missing required parameter: 'image'. A variation needs one source image (a file part).",
                ));
            }
            Operation::Variation if images.len() != 1 => {
                return Err(CoreError::invalid_value("image", "Image variations take exactly one image."));
            }
            _ => {}
        }
        let limit = self.settings.max_input_images.min(caps.max_input_images.max(1));
        if images.len() > limit {
            return Err(CoreError::invalid(
                "image",
                InvalidCode::TooManyImages,
                format!("Too many images: {} were given, and this model takes at most {limit}.", images.len()),
            ));
        }
        let mut inputs = Vec::with_capacity(images.len());
        let mut params = Vec::with_capacity(images.len() + 1);
        for (index, image) in images.into_iter().enumerate() {
            params.push(image.param.clone());
            inputs.push(self.load(image, index + 1).await?);
        }
        let mask = match mask {
            None => None,
            Some(named) => {
                let param = named.param.clone();
                let mask = self.load(named, 0).await?;
                check_mask(&param, &mask, inputs[0].size)?;
                params.push(param);
                Some(mask)
            }
        };
        let keep = mask.is_some() || caps.pixels.wanted();
        let decoded = self.decode_all(&inputs, mask.as_ref(), params, keep).await?;
        Ok((inputs, mask, decoded))
    }

    /// Decodes every input image and the mask before anything is spent, so a corrupt body behind
    /// a valid header is a 400 naming its parameter, never a call billed upstream. The first image
    /// and the mask are kept when the job will composite a mask or the backend takes pixels
    /// (`keep`), so nothing is decoded twice; the rest are dropped once they decode.
    async fn decode_all(
        &self,
        inputs: &[InputImage],
        mask: Option<&InputImage>,
        params: Vec<String>,
        keep: bool,
    ) -> Result<Option<Decoded>, CoreError> {
        let images: Vec<_> = inputs.iter().chain(mask).map(|i| i.bytes.clone()).collect();
        let has_mask = mask.is_some();
        let limits =
            DecodeLimits { max_pixels: self.settings.max_input_pixels, max_bytes: self.settings.max_decoded_bytes };
        let decoded = self.pixels.run(move || {
            let last = images.len() - 1;
            let mut first = None;
            let mut mask = None;
            for (index, bytes) in images.iter().enumerate() {
                let is_mask = has_mask && index == last;
                let number = if is_mask { 0 } else { index + 1 };
                let pixels =
                    imaging::decode_limited(bytes, limits).map_err(|e| image_error(&params[index], number, &e))?;
                if keep && index == 0 {
                    first = Some(Arc::new(pixels));
                } else if keep && is_mask {
                    mask = Some(Arc::new(pixels));
                }
            }
            Ok::<_, CoreError>(first.map(|first| Decoded { first, mask }))
        });
        decoded.await?
    }

    /// Fetches (if a URL) and probes one image; `number` is 1-based for messages, 0 for the mask.
    async fn load(&self, image: NamedImage, number: usize) -> Result<InputImage, CoreError> {
        let NamedImage { param, source } = image;
        let bytes = match source {
            ImageRef::Inline(bytes) => bytes,
            ImageRef::FileId(id) => {
                return Err(CoreError::invalid(
                    param,
                    InvalidCode::UnsupportedFileId,
                    format!("File ids are not supported by this server ('{id}'): send the image as a file part, an image URL or a data URL."),
                ));
            }
            ImageRef::Url(url) => self.fetcher.fetch(&url).await.map_err(|e| {
                // Nothing about the remote side (status, address, connection error): the client
                // chose the URL, and the answer must not map the network behind this server.
                let message = match e {
                    FetchError::NotAllowed => format!(
                        "Invalid image URL '{url}': the URL is not allowed. This server only downloads images from hosts on its allow-list; send the image inline (a file part or a data URL) instead."
                    ),
                    other => format!("Invalid image URL '{url}': {other}."),
                };
                CoreError::invalid(param.clone(), InvalidCode::InvalidImageUrl, message)
            })?,
        };
        let header = imaging::header(&bytes).map_err(|e| image_error(&param, number, &e))?;
        // Pixels and decoded bytes, from the header: an image that would not fit is refused here,
        // before anything is spent and long before a pixel buffer exists.
        let limits =
            DecodeLimits { max_pixels: self.settings.max_input_pixels, max_bytes: self.settings.max_decoded_bytes };
        limits.check(&header).map_err(|e| image_error(&param, number, &e))?;
        Ok(InputImage { bytes, format: header.format, size: header.size, has_alpha: header.has_alpha })
    }
}

fn image_error(param: &str, number: usize, error: &ImageError) -> CoreError {
    let what = if number == 0 { "the mask".to_string() } else { format!("image {number}") };
    CoreError::invalid_image(
        Some(param.to_string()),
        format!(
            "Invalid image file or mode for {what} ('{param}'): {error}. Supported formats are PNG, JPEG and WebP."
        ),
    )
}

fn check_prompt(operation: Operation, prompt: Option<String>, caps: &Capabilities) -> Result<String, CoreError> {
    let prompt = prompt.unwrap_or_default();
    if operation != Operation::Variation && prompt.trim().is_empty() {
        return Err(CoreError::missing("prompt"));
    }
    let chars = prompt.chars().count();
    if chars > caps.max_prompt_chars {
        return Err(CoreError::invalid_value(
            "prompt",
            format!(
                "The prompt is too long: {chars} characters, and this model takes at most {}.",
                caps.max_prompt_chars
            ),
        ));
    }
    Ok(prompt)
}

/// The options against the model: transparency, and the open-model extensions' ranges.
fn check_options(options: Options, caps: &Capabilities, model: &str, names: &ParamNames) -> Result<Options, CoreError> {
    if options.background == Background::Transparent {
        if !caps.transparency {
            return Err(CoreError::invalid_value(
                "background",
                format!("The model '{model}' cannot make transparent backgrounds; use 'opaque' or 'auto'."),
            ));
        }
        if !options.output_format.supports_alpha() {
            return Err(CoreError::invalid_value(
                "output_format",
                "Transparent backgrounds need output_format 'png' or 'webp'.",
            ));
        }
    }
    let (x, ranges) = (&options.extensions, &caps.extensions);
    if let Some(steps) = x.steps {
        ranges.steps.check(&names.of("steps"), i64::from(steps))?;
    }
    if let Some(g) = x.guidance_scale {
        ranges.guidance_scale.check(&names.of("guidance_scale"), g)?;
    }
    if let Some(s) = x.strength {
        ranges.strength.check(&names.of("strength"), s)?;
    }
    Ok(options)
}

/// The mask must have an alpha channel and match the first image's size. Its header, read once
/// when it was loaded, says both, so the mask is decoded only once, when it is composited.
fn check_mask(param: &str, mask: &InputImage, first: ImageSize) -> Result<(), CoreError> {
    if mask.size != first {
        return Err(CoreError::invalid_value(
            param,
            format!("The mask is {} but the first image is {first}; they must have the same dimensions.", mask.size),
        ));
    }
    if !mask.has_alpha {
        return Err(CoreError::invalid_image(
            Some(param.to_string()),
            format!("The mask ('{param}') must have an alpha channel: fully transparent pixels mark the area to edit."),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::fetch::ImageFetcher;
    use crate::registry::ModelRegistry;
    use crate::service::ServiceSettings;

    fn with(settings: ServiceSettings) -> ImageService {
        let fetcher = ImageFetcher::new(Vec::new(), 1 << 20, Duration::from_secs(5)).unwrap();
        ImageService::new(Arc::new(ModelRegistry::new(None)), fetcher, settings)
    }

    fn named(param: &str, bytes: Vec<u8>) -> NamedImage {
        NamedImage { param: param.into(), source: ImageRef::Inline(bytes.into()) }
    }

    #[tokio::test]
    async fn an_image_that_decodes_past_the_byte_budget_is_refused_from_its_header() {
        let service = with(ServiceSettings::default());
        // 8192 x 8192 is within the default 64 Mpx; at 16-bit RGBA it decodes to 512 MiB.
        let started = Instant::now();
        let err = service.load(named("image[]", crate::testing::png_bomb(8192, 8192)), 2).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100), "took {:?}", started.elapsed());
        match err {
            CoreError::InvalidImage { param, message } => {
                assert_eq!(param.as_deref(), Some("image[]"));
                assert!(message.contains("image 2") && message.contains("536870912 bytes"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let err = service.load(named("mask", crate::testing::png_bomb(8192, 8192)), 0).await.unwrap_err();
        assert!(matches!(err, CoreError::InvalidImage { param: Some(p), .. } if p == "mask"));
        // The budget is a setting: raised, the same header passes (it is only a header).
        let roomy = with(ServiceSettings { max_decoded_bytes: 1 << 30, ..ServiceSettings::default() });
        let input = roomy.load(named("image", crate::testing::png_bomb(8192, 8192)), 1).await.unwrap();
        assert_eq!(input.size.pixels(), 64 * 1024 * 1024);
    }
}
