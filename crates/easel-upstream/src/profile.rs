//! Quirk profiles: what an OpenAI-compatible service accepts and returns.
//!
//! "OpenAI-compatible" services differ in exactly the places that break clients: which optional
//! parameters they take (gpt-image rejects `response_format`, xAI rejects `size`), how many
//! images one call makes, whether they answer with base64 or links, how edits are sent, and
//! whether masks and streaming work. A [`Quirks`] value says all of that for one service; named
//! profiles ship for the services Easel knows, and config can start from one and override fields.
//! The OpenAI target shapes every request from its quirks, and the router turns them into the
//! `Capabilities` the core fills gaps against.

use anyhow::{Context, bail};
use easel_core::backend::SizeRule;
use easel_core::types::{ImageSize, OutputFormat, Quality};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, size_rule};

/// How sizes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeParam {
    /// `size: "WxH"`.
    Size,
    /// `width` and `height` (Together).
    WidthHeight,
    /// `aspect_ratio` and `resolution` (xAI); the core resizes to the exact size.
    AspectRatio,
    /// Nothing: the provider picks.
    None,
}

/// How edits are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditStyle {
    /// `multipart/form-data` with `image` / `image[]` and `mask` file parts.
    Multipart,
    /// JSON with `images: [{image_url: data URL}]` and `mask: {image_url}`.
    Json,
    /// A generations call carrying the first image as `image_url` (Together's Kontext models).
    GenerationImageUrl,
    /// No edits.
    None,
}

/// One optional request parameter a service may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Param {
    Quality,
    Style,
    Background,
    OutputFormat,
    OutputCompression,
    Moderation,
    InputFidelity,
    User,
    NegativePrompt,
    Seed,
    Steps,
    GuidanceScale,
    Strength,
}

/// What one OpenAI-compatible service does.
#[derive(Debug, Clone)]
pub struct Quirks {
    pub name: String,
    pub max_n: u32,
    pub max_n_per_call: u32,
    /// The `response_format` value sent to get base64 (`b64_json`, `base64`), `url` to ask for
    /// links, or `None` to send no `response_format` (the service decides, e.g. gpt-image: b64).
    pub response_format: Option<String>,
    pub params: Vec<Param>,
    pub size_param: SizeParam,
    /// Sizes the service makes; `None` means anything the model's `sizes` allow.
    pub native_sizes: Option<SizeRule>,
    /// Sizes clients may ask for.
    pub sizes: SizeRule,
    pub default_size: ImageSize,
    /// Whether the service picks the size itself for `size=auto` (GPT image): `auto` is sent.
    pub picks_size: bool,
    pub edits: EditStyle,
    pub variations: bool,
    pub generations: bool,
    /// Whether the service applies a mask itself (otherwise the core composites it).
    pub masks: bool,
    /// Whether the service streams partial images over SSE.
    pub streaming: bool,
    pub qualities: Vec<Quality>,
    pub default_quality: Quality,
    pub transparency: bool,
    pub output_formats: Vec<OutputFormat>,
    pub max_input_images: usize,
    pub max_prompt_chars: usize,
    /// Whether the service's `usage` figures can be passed through (IG1's cannot).
    pub usage: bool,
}

const GPT_QUALITIES: &[Quality] = &[Quality::Low, Quality::Medium, Quality::High, Quality::Auto];
const ALL_FORMATS: &[OutputFormat] = &[OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];

/// The profile names shipped.
pub const NAMES: &[&str] = &[
    "openai",
    "gpt-image",
    "gpt-image-2",
    "dall-e-3",
    "dall-e-2",
    "generic",
    "ig1",
    "dgrid",
    "xai",
    "together",
    "easel",
];

impl Quirks {
    /// A named profile; `openai` picks by model name.
    pub fn named(name: &str, model: &str) -> anyhow::Result<Self> {
        let gpt = |name: &str, rule: SizeRule, fidelity: bool, transparency: bool| {
            let mut params = vec![
                Param::Quality,
                Param::Background,
                Param::OutputFormat,
                Param::OutputCompression,
                Param::Moderation,
                Param::User,
            ];
            if fidelity {
                params.push(Param::InputFidelity);
            }
            Self {
                name: name.into(),
                max_n: 10,
                max_n_per_call: 10,
                response_format: None,
                params,
                size_param: SizeParam::Size,
                native_sizes: None,
                sizes: rule,
                default_size: ImageSize::new(1024, 1024),
                picks_size: true,
                edits: EditStyle::Multipart,
                variations: false,
                generations: true,
                masks: true,
                streaming: true,
                qualities: GPT_QUALITIES.to_vec(),
                // GPT image picks the quality itself for `auto`: it is passed on, never resolved.
                default_quality: Quality::Auto,
                transparency,
                output_formats: ALL_FORMATS.to_vec(),
                max_input_images: 16,
                max_prompt_chars: 32_000,
                usage: true,
            }
        };
        let generic = Self {
            name: "generic".into(),
            max_n: 10,
            max_n_per_call: 10,
            response_format: Some("b64_json".into()),
            params: vec![Param::Quality, Param::User],
            size_param: SizeParam::Size,
            native_sizes: None,
            sizes: SizeRule::broad(),
            default_size: ImageSize::new(1024, 1024),
            picks_size: false,
            edits: EditStyle::Multipart,
            variations: false,
            generations: true,
            masks: true,
            streaming: false,
            qualities: Quality::ALL.to_vec(),
            default_quality: Quality::Standard,
            transparency: false,
            output_formats: vec![OutputFormat::Png],
            max_input_images: 1,
            max_prompt_chars: 4000,
            usage: true,
        };
        Ok(match name {
            "openai" => {
                let family = if model.starts_with("gpt-image-2") {
                    "gpt-image-2"
                } else if model.starts_with("gpt-image") || model.starts_with("chatgpt-image") {
                    "gpt-image"
                } else if model.starts_with("dall-e-3") {
                    "dall-e-3"
                } else if model.starts_with("dall-e-2") {
                    "dall-e-2"
                } else {
                    "generic"
                };
                return Self::named(family, model);
            }
            "gpt-image" => gpt(
                "gpt-image",
                SizeRule::fixed(&[(1024, 1024), (1536, 1024), (1024, 1536)]),
                !model.contains("mini"),
                true,
            ),
            "gpt-image-2" => gpt("gpt-image-2", SizeRule::gpt_image_2(), false, false),
            "dall-e-3" => Self {
                name: "dall-e-3".into(),
                max_n: 1,
                max_n_per_call: 1,
                params: vec![Param::Quality, Param::Style, Param::User],
                sizes: SizeRule::fixed(&[(1024, 1024), (1792, 1024), (1024, 1792)]),
                edits: EditStyle::None,
                qualities: vec![Quality::Standard, Quality::Hd, Quality::Auto],
                default_quality: Quality::Standard,
                ..generic.clone()
            },
            "dall-e-2" => Self {
                name: "dall-e-2".into(),
                sizes: SizeRule::fixed(&[(256, 256), (512, 512), (1024, 1024)]),
                variations: true,
                qualities: vec![Quality::Standard, Quality::Auto],
                max_prompt_chars: 1000,
                ..generic.clone()
            },
            "generic" => generic,
            // Seed 002: JSON edits with data URLs only, one image per call, b64 only, mask and
            // most GPT parameters ignored, usage figures not meaningful.
            "ig1" => Self {
                name: "ig1".into(),
                max_n: 10,
                max_n_per_call: 1,
                response_format: Some("b64_json".into()),
                params: vec![Param::Quality, Param::OutputFormat],
                sizes: SizeRule::broad(),
                edits: EditStyle::Json,
                masks: false,
                qualities: Quality::ALL.to_vec(),
                default_quality: Quality::High,
                output_formats: ALL_FORMATS.to_vec(),
                max_input_images: 3,
                max_prompt_chars: 32_000,
                usage: false,
                ..generic.clone()
            },
            // Seeds 000/001: the dall-e style schema (quality standard|hd, style, response_format
            // url|b64_json), multipart edits with mask, answers with url and/or b64_json (an
            // empty b64_json string when it sent a url).
            "dgrid" => Self {
                name: "dgrid".into(),
                max_n: 10,
                max_n_per_call: 1,
                response_format: Some("b64_json".into()),
                params: vec![Param::Quality, Param::Style, Param::User],
                native_sizes: Some(SizeRule::fixed(&[(1024, 1024), (1792, 1024), (1024, 1792)])),
                sizes: SizeRule::broad(),
                edits: EditStyle::Multipart,
                masks: true,
                qualities: Quality::ALL.to_vec(),
                default_quality: Quality::Standard,
                max_input_images: 1,
                ..generic.clone()
            },
            // xAI rejects size, quality and style; it takes aspect_ratio and resolution.
            "xai" => Self {
                name: "xai".into(),
                max_n: 10,
                max_n_per_call: 10,
                response_format: Some("b64_json".into()),
                params: vec![Param::User],
                size_param: SizeParam::AspectRatio,
                sizes: SizeRule::broad(),
                edits: EditStyle::None,
                masks: false,
                qualities: Quality::ALL.to_vec(),
                default_quality: Quality::High,
                output_formats: vec![OutputFormat::Jpeg],
                max_prompt_chars: 8000,
                ..generic.clone()
            },
            // Together: width/height, steps, seed, negative_prompt; `base64` response format;
            // Kontext edits as a generation with `image_url`.
            "together" => Self {
                name: "together".into(),
                max_n: 4,
                max_n_per_call: 4,
                response_format: Some("base64".into()),
                params: vec![
                    Param::NegativePrompt,
                    Param::Seed,
                    Param::Steps,
                    Param::GuidanceScale,
                    Param::OutputFormat,
                ],
                size_param: SizeParam::WidthHeight,
                sizes: SizeRule::Range {
                    multiple_of: 16,
                    min_edge: 256,
                    max_edge: 1792,
                    min_pixels: 65_536,
                    max_pixels: 1792 * 1792,
                    max_aspect: 4.0,
                },
                edits: EditStyle::GenerationImageUrl,
                masks: false,
                qualities: Quality::ALL.to_vec(),
                default_quality: Quality::High,
                output_formats: vec![OutputFormat::Png, OutputFormat::Jpeg],
                max_input_images: 1,
                max_prompt_chars: 8000,
                usage: false,
                ..generic.clone()
            },
            // Another Easel node: the whole API, Easel's extensions included.
            "easel" => Self {
                name: "easel".into(),
                max_n: 10,
                max_n_per_call: 10,
                response_format: Some("b64_json".into()),
                params: vec![
                    Param::Quality,
                    Param::Style,
                    Param::Background,
                    Param::OutputFormat,
                    Param::OutputCompression,
                    Param::Moderation,
                    Param::InputFidelity,
                    Param::User,
                    Param::NegativePrompt,
                    Param::Seed,
                    Param::Steps,
                    Param::GuidanceScale,
                    Param::Strength,
                ],
                // The remote node knows its model's sizes and says so in a 400 naming `size`;
                // guessing a rule here would resize requests the remote could make as asked.
                sizes: SizeRule::any(),
                edits: EditStyle::Json,
                variations: true,
                masks: true,
                streaming: true,
                qualities: Quality::ALL.to_vec(),
                default_quality: Quality::High,
                transparency: true,
                output_formats: ALL_FORMATS.to_vec(),
                max_input_images: 16,
                max_prompt_chars: 32_000,
                ..generic.clone()
            },
            other => bail!("unknown profile '{other}'; known profiles: {}", NAMES.join(", ")),
        })
    }

    /// A profile from config: a name, or a table of overrides on `base` (default `generic`).
    pub fn from_config(value: Option<&Value>, default: &str, model: &str) -> anyhow::Result<Self> {
        match value {
            None => Self::named(default, model),
            Some(Value::String(name)) => Self::named(name, model),
            Some(table @ Value::Object(_)) => {
                let o: Overrides = parse(table, "inline profile")?;
                let mut q = Self::named(o.base.as_deref().unwrap_or(default), model)?;
                o.apply(&mut q)?;
                Ok(q)
            }
            Some(_) => bail!("'profile' must be a profile name or a table of quirks"),
        }
    }
}

/// Inline quirks: any field of a profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    base: Option<String>,
    max_n: Option<u32>,
    max_n_per_call: Option<u32>,
    /// `b64_json`, `base64`, `url`, or `none`.
    response_format: Option<String>,
    params: Option<Vec<Param>>,
    size_param: Option<SizeParam>,
    native_sizes: Option<Value>,
    sizes: Option<Value>,
    default_size: Option<String>,
    picks_size: Option<bool>,
    edits: Option<EditStyle>,
    variations: Option<bool>,
    generations: Option<bool>,
    masks: Option<bool>,
    streaming: Option<bool>,
    qualities: Option<Vec<Quality>>,
    default_quality: Option<Quality>,
    transparency: Option<bool>,
    output_formats: Option<Vec<OutputFormat>>,
    max_input_images: Option<usize>,
    max_prompt_chars: Option<usize>,
    usage: Option<bool>,
}

impl Overrides {
    fn apply(self, q: &mut Quirks) -> anyhow::Result<()> {
        q.name = format!("{} (customised)", q.name);
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { q.$field = v; })* };
        }
        set!(max_n, max_n_per_call, params, size_param, picks_size, edits, variations, generations, masks, streaming);
        set!(qualities, default_quality, transparency, output_formats, max_input_images, max_prompt_chars, usage);
        if let Some(rf) = self.response_format {
            q.response_format = if rf == "none" { None } else { Some(rf) };
        }
        if let Some(v) = &self.native_sizes {
            q.native_sizes = Some(size_rule(v, "native_sizes")?);
        }
        if let Some(v) = &self.sizes {
            q.sizes = size_rule(v, "sizes")?;
        }
        if let Some(s) = &self.default_size {
            q.default_size = ImageSize::parse(s).map_err(anyhow::Error::msg).context("default_size")?;
        }
        if q.max_n_per_call == 0 || q.max_n == 0 {
            bail!("max_n and max_n_per_call must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_profile_follows_the_model_name() {
        assert_eq!(Quirks::named("openai", "gpt-image-1.5").unwrap().name, "gpt-image");
        assert_eq!(Quirks::named("openai", "gpt-image-2-2026-04-21").unwrap().name, "gpt-image-2");
        let d3 = Quirks::named("openai", "dall-e-3").unwrap();
        assert_eq!((d3.max_n, d3.edits), (1, EditStyle::None));
        let mini = Quirks::named("openai", "gpt-image-1-mini").unwrap();
        assert!(!mini.params.contains(&Param::InputFidelity));
        assert!(Quirks::named("nope", "x").unwrap_err().to_string().contains("known profiles"));
    }

    #[test]
    fn inline_quirks_override_a_base() {
        let v =
            serde_json::json!({"base": "ig1", "max_n_per_call": 2, "response_format": "none", "sizes": ["512x512"]});
        let q = Quirks::from_config(Some(&v), "generic", "m").unwrap();
        assert_eq!(q.max_n_per_call, 2);
        assert_eq!(q.response_format, None);
        assert_eq!(q.edits, EditStyle::Json);
        assert_eq!(q.sizes, SizeRule::Fixed(vec![ImageSize::new(512, 512)]));
        let bad = serde_json::json!({"max_n_per_cal": 2});
        let err = format!("{:#}", Quirks::from_config(Some(&bad), "generic", "m").unwrap_err());
        assert!(err.contains("unknown field `max_n_per_cal`"), "{err}");
    }
}
