//! Request → job: model resolution, defaults, input images, and every model-specific check.

use crate::backend::{Capabilities, InputImage};
use crate::error::{CoreError, InvalidCode};
use crate::fetch::FetchError;
use crate::imaging::{self, ImageError};
use crate::job::ImageJob;
use crate::request::{ImageRef, ImageRequest, NamedImage};
use crate::types::{Background, ImageSize, Operation, OutputFormat, Quality, SizeRequest};

use super::ImageService;

impl ImageService {
    pub async fn prepare(&self, request: ImageRequest) -> Result<ImageJob, CoreError> {
        let operation = request.operation;
        let model = match &request.model {
            Some(id) => self.registry.get(id).ok_or_else(|| CoreError::ModelNotFound(id.clone()))?,
            None => self.registry.default_for(operation).ok_or_else(|| {
                CoreError::invalid_value(
                    "model",
                    "No model was given and this server has no default model; set 'model'.",
                )
            })?,
        };
        let caps = model.backend.capabilities().clone();
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

        let prompt = check_prompt(operation, request.prompt, &caps)?;
        let n = check_n(request.n, &caps)?;
        let (images, mask) = self.resolve_images(operation, request.images, request.mask, &caps).await?;

        let size = match request.size.unwrap_or(SizeRequest::Auto) {
            SizeRequest::Exact(size) => {
                caps.sizes.check(size).map_err(|m| CoreError::invalid_value("size", m))?;
                size
            }
            SizeRequest::Auto => match images.first() {
                Some(first) if caps.sizes.check(first.size).is_ok() => first.size,
                Some(first) => caps.sizes.nearest(first.size),
                None => caps.default_size,
            },
        };

        let quality = request.quality.unwrap_or(Quality::Auto);
        if quality != Quality::Auto && !caps.qualities.contains(&quality) {
            let names: Vec<&str> = caps.qualities.iter().map(|q| q.as_str()).collect();
            return Err(CoreError::invalid_value(
                "quality",
                format!("Invalid value: '{quality}'. Supported values are: {}.", crate::types::quote_list(&names)),
            ));
        }
        let resolved_quality = if quality == Quality::Auto { caps.default_quality } else { quality };

        let output_format = request.output_format.unwrap_or(OutputFormat::Png);
        let background = request.background.unwrap_or(Background::Auto);
        if background == Background::Transparent {
            if !caps.transparency {
                return Err(CoreError::invalid_value(
                    "background",
                    format!("The model '{}' cannot make transparent backgrounds; use 'opaque' or 'auto'.", model.id),
                ));
            }
            if !output_format.supports_alpha() {
                return Err(CoreError::invalid_value(
                    "output_format",
                    "Transparent backgrounds need output_format 'png' or 'webp'.",
                ));
            }
        }

        let partial_images = if request.stream { request.partial_images.unwrap_or(0) } else { 0 };
        Ok(ImageJob {
            operation,
            model,
            prompt,
            images,
            mask,
            n,
            size,
            quality,
            resolved_quality,
            style: request.style,
            background,
            output_format,
            output_compression: request.output_compression,
            moderation: request.moderation,
            input_fidelity: request.input_fidelity,
            response_format: request.response_format.unwrap_or(self.settings.default_response_format),
            stream: request.stream,
            partial_images,
            user: request.user,
            extensions: request.extensions,
        })
    }

    async fn resolve_images(
        &self,
        operation: Operation,
        images: Vec<NamedImage>,
        mask: Option<NamedImage>,
        caps: &Capabilities,
    ) -> Result<(Vec<InputImage>, Option<InputImage>), CoreError> {
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
                return Ok((Vec::new(), None));
            }
            Operation::Edit if images.is_empty() => {
                return Err(CoreError::invalid(
                    "image",
                    InvalidCode::MissingRequiredParameter,
                    "Missing required parameter: 'image'. An edit needs at least one source image (a file part, an image URL or a data URL).",
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
        for (index, image) in images.into_iter().enumerate() {
            inputs.push(self.load(image, index + 1).await?);
        }
        let mask = match mask {
            None => None,
            Some(named) => {
                let param = named.param.clone();
                let mask = self.load(named, 0).await?;
                check_mask(&param, &mask, inputs[0].size)?;
                Some(mask)
            }
        };
        Ok((inputs, mask))
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
                let message = match e {
                    FetchError::NotAllowed => format!(
                        "Invalid image URL '{url}': this server only downloads images from hosts on its allow-list; send the image inline (a file part or a data URL) instead."
                    ),
                    other => format!("Could not download the image at '{url}': {other}."),
                };
                CoreError::invalid(param.clone(), InvalidCode::InvalidImageUrl, message)
            })?,
        };
        let (format, size) = imaging::probe(&bytes).map_err(|e| image_error(&param, number, &e))?;
        if size.pixels() > self.settings.max_input_pixels {
            let e = ImageError::TooLarge {
                width: size.width,
                height: size.height,
                max_pixels: self.settings.max_input_pixels,
            };
            return Err(image_error(&param, number, &e));
        }
        Ok(InputImage { bytes, format, size })
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

fn check_n(n: Option<u32>, caps: &Capabilities) -> Result<u32, CoreError> {
    let n = n.unwrap_or(1);
    if n > caps.max_n {
        return Err(CoreError::invalid(
            "n",
            InvalidCode::IntegerAboveMaxValue,
            format!(
                "Invalid 'n': integer above maximum value. Expected a value <= {}, but got {n} instead.",
                caps.max_n
            ),
        ));
    }
    Ok(n)
}

/// The mask must have an alpha channel and match the first image's size. Its header says both,
/// so the mask is decoded only once, when it is composited.
fn check_mask(param: &str, mask: &InputImage, first: ImageSize) -> Result<(), CoreError> {
    if mask.size != first {
        return Err(CoreError::invalid_value(
            param,
            format!("The mask is {} but the first image is {first}; they must have the same dimensions.", mask.size),
        ));
    }
    let header = imaging::header(&mask.bytes).map_err(|e| image_error(param, 0, &e))?;
    if !header.has_alpha {
        return Err(CoreError::invalid_image(
            Some(param.to_string()),
            "The mask must have an alpha channel: fully transparent pixels mark the area to edit.",
        ));
    }
    Ok(())
}
