//! The OpenAI parameter set (generations, JSON and multipart edits, variations) and Easel's
//! documented extensions for open models, as one serde struct.

use easel_types::error::{CoreError, InvalidCode};
use easel_types::limits;
use easel_types::range::IntRange;
use easel_types::request::{Extensions, ImageRequest, Options};
use easel_types::types::{
    Background, InputFidelity, Moderation, Operation, OutputFormat, Quality, ResponseFormat, SizeRequest, Style,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::images::{ImageField, ImageRefBody};
use super::{UnknownParams, check_keys, errors, lenient};

const COMMON: &[&str] = &["model", "n", "size", "response_format", "user", "output_format", "output_compression"];
const EXTENSIONS: &[&str] = &["negative_prompt", "seed", "steps", "guidance_scale"];
const GENERATE: &[&str] = &["prompt", "quality", "style", "background", "moderation", "stream", "partial_images"];
const EDIT: &[&str] =
    &["prompt", "quality", "background", "moderation", "stream", "partial_images", "input_fidelity", "strength"];
const EDIT_JSON: &[&str] = &["images", "image", "mask"];
const VARIATION: &[&str] = &["strength"];

/// The parameters a body may carry besides image parts, per operation.
pub(super) fn allowed_keys(operation: Operation, json_images: bool) -> Vec<&'static str> {
    let mut keys: Vec<&str> = COMMON.iter().chain(EXTENSIONS).copied().collect();
    match operation {
        Operation::Generate => keys.extend(GENERATE),
        Operation::Edit => {
            keys.extend(EDIT);
            if json_images {
                keys.extend(EDIT_JSON);
            }
        }
        Operation::Variation => keys.extend(VARIATION),
    }
    keys
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Params {
    pub prompt: Option<String>,
    pub model: Option<String>,
    #[serde(default, deserialize_with = "lenient::i64")]
    pub n: Option<i64>,
    #[serde(default, deserialize_with = "size")]
    pub size: Option<SizeRequest>,
    pub quality: Option<Quality>,
    pub style: Option<Style>,
    pub background: Option<Background>,
    pub output_format: Option<OutputFormat>,
    #[serde(default, deserialize_with = "lenient::i64")]
    pub output_compression: Option<i64>,
    pub moderation: Option<Moderation>,
    pub response_format: Option<ResponseFormat>,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub stream: Option<bool>,
    #[serde(default, deserialize_with = "lenient::i64")]
    pub partial_images: Option<i64>,
    pub input_fidelity: Option<InputFidelity>,
    pub user: Option<String>,
    pub negative_prompt: Option<String>,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub seed: Option<u64>,
    #[serde(default, deserialize_with = "lenient::u32")]
    pub steps: Option<u32>,
    #[serde(default, deserialize_with = "lenient::f32")]
    pub guidance_scale: Option<f32>,
    #[serde(default, deserialize_with = "lenient::f32")]
    pub strength: Option<f32>,
    pub images: Option<Vec<ImageRefBody>>,
    pub image: Option<ImageField>,
    pub mask: Option<ImageField>,
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SizeRequest>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    match text {
        None => Ok(None),
        Some(t) if t.trim().is_empty() => Ok(None),
        Some(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// An OpenAI-dialect JSON body (generations, JSON edits, IG1's edit body).
pub(super) fn parse_json(
    operation: Operation,
    mut map: Map<String, Value>,
    unknown: UnknownParams,
) -> Result<ImageRequest, CoreError> {
    check_keys(&mut map, &allowed_keys(operation, true), "", unknown)?;
    let params: Params = errors::from_value(Value::Object(map), "")?;
    params.into_request(operation)
}

/// An API-wide range (`easel_types::limits`); model-dependent ranges are the core's to check.
fn within(param: &str, value: Option<i64>, range: IntRange) -> Result<Option<u8>, CoreError> {
    value.map(|v| range.check(param, v).map(|v| v as u8)).transpose()
}

/// PNG is lossless: OpenAI answers 400 `invalid_png_output_compression` to a compression other
/// than 100 with PNG output (the default format), and so does Easel, for every model alike.
fn check_png_compression(format: OutputFormat, compression: Option<u8>) -> Result<(), CoreError> {
    match compression {
        Some(c) if format == OutputFormat::Png && c != 100 => Err(CoreError::invalid(
            "output_compression",
            InvalidCode::InvalidPngOutputCompression,
            format!(
                "Compression less than 100 is not supported for PNG output format (output_compression is {c}); use output_format 'jpeg' or 'webp', or leave output_compression out."
            ),
        )),
        _ => Ok(()),
    }
}

impl Params {
    /// Collects image references (JSON `images`, `image`, `mask`) and checks the API-wide ranges;
    /// everything that depends on the model is checked by the core.
    pub(super) fn into_request(self, operation: Operation) -> Result<ImageRequest, CoreError> {
        let mut request = ImageRequest::new(operation);
        request.model = self.model.filter(|m| !m.trim().is_empty());
        request.prompt = self.prompt;
        request.n = self.n;
        request.size = self.size;
        request.quality = self.quality;
        request.response_format = self.response_format;
        request.stream = self.stream.unwrap_or(false);
        request.partial_images = within("partial_images", self.partial_images, limits::PARTIAL_IMAGES)?;
        let output_format = self.output_format.unwrap_or_default();
        let output_compression = within("output_compression", self.output_compression, limits::OUTPUT_COMPRESSION)?;
        check_png_compression(output_format, output_compression)?;
        request.options = Options {
            style: self.style,
            background: self.background.unwrap_or_default(),
            output_format,
            output_compression,
            moderation: self.moderation,
            input_fidelity: self.input_fidelity,
            user: self.user,
            extensions: Extensions {
                negative_prompt: self.negative_prompt.filter(|p| !p.is_empty()),
                seed: self.seed,
                steps: self.steps,
                guidance_scale: self.guidance_scale,
                strength: self.strength,
                dashscope: Default::default(),
            },
        };
        if let Some(images) = self.images {
            for (i, image) in images.into_iter().enumerate() {
                request.images.push(image.into_named(&format!("images[{i}]"))?);
            }
        }
        if let Some(image) = self.image {
            request.images.extend(image.into_named("image")?);
        }
        if let Some(mask) = self.mask {
            let mut masks = mask.into_named("mask")?;
            if masks.len() > 1 {
                return Err(CoreError::invalid_value("mask", "Only one mask may be given."));
            }
            request.mask = masks.pop();
        }
        Ok(request)
    }
}
