//! The model families Easel runs locally and their defaults.
//!
//! A family fixes what a folder's configs cannot say on their own: which model code runs it
//! ([`Kind`]: the Stable Diffusion UNets, or the flow-matching transformers FLUX.1 and Qwen-Image),
//! the sizes it was trained for and their grid, what it can be asked (masks, input images),
//! sensible steps / guidance / scheduler defaults, and whether it is an SDXL-style model (two text
//! encoders, micro-conditioning). Everything architectural is read from the folder's JSON configs.

use easel_core::backend::PixelInput;
use easel_core::types::Operation;
use serde::Deserialize;

use crate::scheduler::SchedulerKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Family {
    #[serde(rename = "sd-1.5")]
    Sd15,
    #[serde(rename = "sd-1.5-inpaint")]
    Sd15Inpaint,
    #[serde(rename = "sd-2.1")]
    Sd21,
    #[serde(rename = "sd-2-inpaint")]
    Sd2Inpaint,
    #[serde(rename = "sd-turbo")]
    SdTurbo,
    #[serde(rename = "sdxl")]
    Sdxl,
    #[serde(rename = "sdxl-inpaint")]
    SdxlInpaint,
    #[serde(rename = "sdxl-turbo")]
    SdxlTurbo,
    #[serde(rename = "flux-schnell")]
    FluxSchnell,
    #[serde(rename = "flux-dev")]
    FluxDev,
    #[serde(rename = "qwen-image")]
    QwenImage,
    #[serde(rename = "qwen-image-edit")]
    QwenImageEdit,
}

/// Which model code serves a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UNet + CLIP + KL VAE, the schedulers of [`crate::scheduler`] (`crate::model`, `crate::pipeline`).
    Sd,
    /// FLUX.1: MMDiT with single-stream blocks, CLIP-L pooled + T5, flow matching (`crate::flux`).
    Flux,
    /// Qwen-Image(-Edit): MMDiT, Qwen2.5-VL text encoder, causal VAE, flow matching (`crate::qwen`).
    Qwen,
}

pub const FAMILY_NAMES: &[&str] = &[
    "sd-1.5",
    "sd-1.5-inpaint",
    "sd-2.1",
    "sd-2-inpaint",
    "sd-turbo",
    "sdxl",
    "sdxl-inpaint",
    "sdxl-turbo",
    "flux-schnell",
    "flux-dev",
    "qwen-image",
    "qwen-image-edit",
];

/// Defaults a family brings when the model config does not override them.
#[derive(Debug, Clone, Copy)]
pub struct FamilyDefaults {
    pub size: u32,
    pub min_edge: u32,
    pub max_edge: u32,
    pub steps: u32,
    pub guidance_scale: f32,
    pub scheduler: SchedulerKind,
    /// img2img strength when neither the request nor the config gives one: 0.8, FLUX 0.6 (as
    /// diffusers' `FluxImg2ImgPipeline`; at 0.8 of schnell's 4 steps every step runs and the
    /// source is lost to the noise).
    pub strength: f32,
}

impl Family {
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string()))
            .map_err(|_| anyhow::anyhow!("unknown family '{name}'; expected one of {}", FAMILY_NAMES.join(", ")))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sd15 => "sd-1.5",
            Self::Sd15Inpaint => "sd-1.5-inpaint",
            Self::Sd21 => "sd-2.1",
            Self::Sd2Inpaint => "sd-2-inpaint",
            Self::SdTurbo => "sd-turbo",
            Self::Sdxl => "sdxl",
            Self::SdxlInpaint => "sdxl-inpaint",
            Self::SdxlTurbo => "sdxl-turbo",
            Self::FluxSchnell => "flux-schnell",
            Self::FluxDev => "flux-dev",
            Self::QwenImage => "qwen-image",
            Self::QwenImageEdit => "qwen-image-edit",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Self::FluxSchnell | Self::FluxDev => Kind::Flux,
            Self::QwenImage | Self::QwenImageEdit => Kind::Qwen,
            _ => Kind::Sd,
        }
    }

    /// The grid of sizes, in pixels: the VAE's factor, times 2 for the flow transformers' 2×2
    /// latent packing.
    pub fn size_multiple(self) -> u32 {
        match self.kind() {
            Kind::Sd => 8,
            Kind::Flux | Kind::Qwen => 16,
        }
    }

    /// Whether a request may carry a mask: the SD family inpaints (9-channel UNets, or latent
    /// blending for the others); the flow families here have no inpainting model.
    pub fn takes_masks(self) -> bool {
        self.kind() == Kind::Sd
    }

    /// How the family takes the source image of an edit: on the output's canvas (img2img and
    /// inpainting), or whole as sent (Qwen-Image-Edit brings it to its condition area itself,
    /// keeping its aspect, as diffusers does; a crop to the output's aspect would lose part of it).
    pub fn pixel_input(self) -> PixelInput {
        if self == Self::QwenImageEdit { PixelInput::AsSent } else { PixelInput::AtCallSize }
    }

    /// The operations a family serves. Qwen-Image makes images from text only; Qwen-Image-Edit
    /// needs a source image; the others also edit (img2img with `strength`) and make variations.
    pub fn operations(self) -> &'static [Operation] {
        match self {
            Self::QwenImage => &[Operation::Generate],
            Self::QwenImageEdit => &[Operation::Edit],
            _ => &[Operation::Generate, Operation::Edit, Operation::Variation],
        }
    }

    /// The most input images an edit takes.
    pub fn max_input_images(self) -> usize {
        match self {
            Self::QwenImage => 0,
            _ => 1,
        }
    }

    /// Two text encoders, pooled embeddings and size/crop micro-conditioning.
    pub fn is_xl(self) -> bool {
        matches!(self, Self::Sdxl | Self::SdxlInpaint | Self::SdxlTurbo)
    }

    /// A 9-channel inpainting UNet (latents, mask, masked-image latents).
    pub fn is_inpaint(self) -> bool {
        matches!(self, Self::Sd15Inpaint | Self::Sd2Inpaint | Self::SdxlInpaint)
    }

    pub fn is_turbo(self) -> bool {
        matches!(self, Self::SdTurbo | Self::SdxlTurbo)
    }

    /// SD 1.x pads prompts with `<|endoftext|>`; SD 2.x, Turbo and the second SDXL encoder with `!`.
    pub fn pads_with_bang(self) -> bool {
        matches!(self, Self::Sd21 | Self::Sd2Inpaint | Self::SdTurbo)
    }

    pub fn defaults(self) -> FamilyDefaults {
        use SchedulerKind::*;
        let (size, min_edge, max_edge, steps, guidance_scale, scheduler) = match self {
            Self::Sd15 | Self::Sd15Inpaint => (512, 256, 1024, 25, 7.5, DpmPp2mKarras),
            Self::Sd21 | Self::Sd2Inpaint => (768, 256, 1536, 25, 7.5, DpmPp2mKarras),
            Self::SdTurbo => (512, 256, 1024, 1, 0.0, EulerAncestral),
            Self::Sdxl | Self::SdxlInpaint => (1024, 512, 2048, 30, 5.0, DpmPp2mKarras),
            Self::SdxlTurbo => (512, 256, 1024, 1, 0.0, EulerAncestral),
            // Flow families: the scheduler comes from the folder (`flow::scheduler`); `Euler` is
            // only a placeholder. FLUX-dev: diffusers' default 28 steps and guidance 3.5 (BFL: 50);
            // schnell: 4 steps, no guidance. Qwen: 50 steps, `true_cfg_scale` 4.0.
            Self::FluxSchnell => (1024, 256, 2048, 4, 0.0, Euler),
            Self::FluxDev => (1024, 256, 2048, 28, 3.5, Euler),
            Self::QwenImage | Self::QwenImageEdit => (1024, 256, 2048, 50, 4.0, Euler),
        };
        let strength = if self.kind() == Kind::Flux { 0.6 } else { 0.8 };
        FamilyDefaults { size, min_edge, max_edge, steps, guidance_scale, scheduler, strength }
    }
}
