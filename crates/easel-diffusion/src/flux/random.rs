//! `create-random --family flux-schnell|flux-dev`: a FLUX.1 folder in the diffusers layout with
//! random weights. This file writes `transformer/`, `scheduler/`, `model_index.json` and the
//! random-weights marker; [`super::random_text`] writes the encoders, tokenizers and the VAE.
//! Tiny is diffusers' own test configuration (one double and one single block, 2 heads × 16,
//! RoPE axes (4, 4, 8), 1 latent channel, VAE factor 1); full is the released 12 B shape.

use std::path::Path;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::random_text::{self, dims};
use super::transformer::{FluxConfig, FluxTransformer};
use crate::family::Family;
use crate::random::{Created, Scale, write_component, write_json};

/// `transformer/config.json` for `family` at `scale`.
pub fn transformer_json(family: Family, scale: Scale) -> Value {
    let d = dims(scale);
    let (layers, single, head_dim, heads, axes) = match scale {
        Scale::Tiny => (1, 1, 16, 2, json!([4, 4, 8])),
        Scale::Full => (19, 38, 128, 24, json!([16, 56, 56])),
    };
    json!({
        "_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.42.1",
        "patch_size": 1, "in_channels": d.latent_channels * 4, "out_channels": null,
        "num_layers": layers, "num_single_layers": single,
        "attention_head_dim": head_dim, "num_attention_heads": heads,
        "joint_attention_dim": d.joint_attention_dim, "pooled_projection_dim": d.pooled_projection_dim,
        "guidance_embeds": family == Family::FluxDev, "axes_dims_rope": axes,
    })
}

/// The hub's scheduler configs: schnell unshifted, dev shifted by the image's token count.
pub fn scheduler_json(family: Family) -> Value {
    let dev = family == Family::FluxDev;
    json!({
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.42.1",
        "num_train_timesteps": 1000, "shift": if dev { 3.0 } else { 1.0 },
        "use_dynamic_shifting": dev, "base_shift": 0.5, "max_shift": 1.15,
        "base_image_seq_len": 256, "max_image_seq_len": 4096,
    })
}

/// Writes a random FLUX model of `family` at `scale` into `out` (empty or absent).
pub fn create(family: Family, scale: Scale, out: &Path, seed: u64) -> Result<Created> {
    if !matches!(family, Family::FluxSchnell | Family::FluxDev) {
        bail!("{} is not a FLUX family", family.name());
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    let mut params = random_text::write(out, scale, seed)?;
    let t = transformer_json(family, scale);
    let cfg = FluxConfig::from_json(&t)?;
    let dir = out.join("transformer");
    std::fs::create_dir_all(&dir)?;
    write_json(&dir.join("config.json"), &t)?;
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let n =
        write_component(&file, seed.wrapping_mul(1000).wrapping_add(3), |vb| FluxTransformer::new(vb, &cfg).map(drop))?;
    params.push(("transformer".to_string(), n));
    params.push(random_text::write_vae(out, scale, seed)?);
    let sched = out.join("scheduler");
    std::fs::create_dir_all(&sched)?;
    write_json(&sched.join("scheduler_config.json"), &scheduler_json(family))?;
    let index = json!({
        "_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [null, null], "feature_extractor": [null, null],
    });
    write_json(&out.join("model_index.json"), &index)?;
    crate::random::write_info(out, family, scale, seed, &params, None)?;
    Ok(Created { params, merges: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scale_is_the_released_shape() {
        for family in [Family::FluxSchnell, Family::FluxDev] {
            let cfg = FluxConfig::from_json(&transformer_json(family, Scale::Full)).unwrap();
            assert_eq!((cfg.inner_dim(), cfg.num_layers, cfg.num_single_layers), (3072, 19, 38));
            assert_eq!((cfg.joint_attention_dim, cfg.pooled_projection_dim, cfg.in_channels), (4096, 768, 64));
            assert_eq!(cfg.guidance_embeds, family == Family::FluxDev);
            let flow = crate::flow::FlowConfig::from_json(&scheduler_json(family)).unwrap();
            assert_eq!(flow.use_dynamic_shifting, family == Family::FluxDev);
        }
    }
}
