//! The model families Easel runs locally and their defaults.
//!
//! A family fixes what a folder's configs cannot say on their own: the sizes it was trained for,
//! sensible steps / guidance / scheduler defaults, and whether it is an SDXL-style model (two text
//! encoders, micro-conditioning). Everything architectural is read from the folder's JSON configs.

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
}

pub const FAMILY_NAMES: &[&str] =
    &["sd-1.5", "sd-1.5-inpaint", "sd-2.1", "sd-2-inpaint", "sd-turbo", "sdxl", "sdxl-inpaint", "sdxl-turbo"];

/// Defaults a family brings when the model config does not override them.
#[derive(Debug, Clone, Copy)]
pub struct FamilyDefaults {
    pub size: u32,
    pub min_edge: u32,
    pub max_edge: u32,
    pub steps: u32,
    pub guidance_scale: f32,
    pub scheduler: SchedulerKind,
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
        };
        FamilyDefaults { size, min_edge, max_edge, steps, guidance_scale, scheduler }
    }
}
