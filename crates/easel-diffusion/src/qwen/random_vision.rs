//! `create-random --family qwen-image-edit`: the parts Qwen-Image-Edit adds to a Qwen-Image
//! folder, the Qwen2.5-VL vision tower (`visual.*` beside the language model in the text
//! encoder's weights, its `vision_config` in the text encoder's `config.json`) and
//! `processor/preprocessor_config.json`.
//!
//! Tiny is diffusers' test config for Qwen-Image-Edit (depth 2, width 16, 2 heads, MLP 16) with
//! its second block doing full attention, so both attention kinds are exercised; full is
//! Qwen2.5-VL-7B's tower (depth 32, width 1280, 16 heads, MLP 3420, full attention at 7, 15, 23,
//! 31). Patch 14, 2 frames, 2×2 merge and 112-px windows are the model's in both.

use std::path::Path;

use anyhow::{Context, Result};
use candle_nn::VarBuilder;
use serde_json::{Value, json};

use super::vision::{VisionConfig, VisionTower};
use crate::random::Scale;

/// `vision_config` for the text encoder's `config.json`; `out_hidden_size` is the language
/// model's width, which the tower's features replace token embeddings of.
pub fn vision_config(scale: Scale, out_hidden: usize) -> Value {
    let (depth, hidden, heads, inter, full) = match scale {
        Scale::Tiny => (2, 16, 2, 16, json!([1])),
        Scale::Full => (32, 1280, 16, 3420, json!([7, 15, 23, 31])),
    };
    json!({
        "depth": depth,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_heads": heads,
        "in_chans": 3,
        "out_hidden_size": out_hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "fullatt_block_indexes": full,
    })
}

/// Makes the tower's random weights through `vb` (pointed at `visual`), inside the text
/// encoder's writer so they land in the same safetensors.
pub fn build(vb: VarBuilder, scale: Scale, out_hidden: usize) -> Result<()> {
    let cfg = VisionConfig::from_json(&vision_config(scale, out_hidden))?;
    VisionTower::new(vb, &cfg).context("building the random vision tower")?;
    Ok(())
}

/// `processor/preprocessor_config.json` as Qwen-Image-Edit ships it (the Qwen2.5-VL image
/// processor: 56² to 28²·1280 pixels, bicubic, CLIP mean and std).
pub fn write_processor(root: &Path) -> Result<()> {
    let dir = root.join("processor");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let v = json!({
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": super::processor::CLIP_MEAN,
        "image_std": super::processor::CLIP_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "max_pixels": 12_845_056,
        "merge_size": 2,
        "min_pixels": 3136,
        "patch_size": 14,
        "processor_class": "Qwen2_5_VLProcessor",
        "resample": 3,
        "rescale_factor": 1.0 / 255.0,
        "temporal_patch_size": 2,
    });
    let path = dir.join("preprocessor_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}
