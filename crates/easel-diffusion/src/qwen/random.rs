//! `create-random --family qwen-image | qwen-image-edit`: a random Qwen-Image folder in the
//! diffusers layout, loadable by Easel and by diffusers alike.
//!
//! Tiny is diffusers' own test configuration (transformer 2 layers × 3 heads of 16, text encoder
//! width 16, VAE base 24 with three levels, so a 4× VAE) except that the VAE's latent statistics
//! are the released model's first four channels rather than 0 and 1, so the normalisation is
//! exercised. Full is the released architecture (a 20 B transformer and a 7 B text encoder:
//! about 82 GB and 33 GB of f32, written from memory — for machines that can hold them).
//!
//! The text encoder is written as the released checkpoint is: a flat Qwen2.5-VL `config.json`
//! and the legacy `model.*` / `visual.*` key scheme, with the vision tower (the edit reads it; a
//! text-to-image folder carries it too, as the released one does). The tokenizer is hub-free:
//! Qwen2's pre-tokenizer and byte alphabet with no merges (every byte a token), and Qwen2.5-VL's
//! special tokens at their real ids (151643 `<|endoftext|>` … 151656 `<|video_pad|>`), so the
//! prompt templates tokenize as they do with the real vocabulary and the embedding table has
//! the real vocabulary size.

use std::path::Path;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::text::{QwenTextEncoder, TextConfig};
use super::tokenizer::tokenizer_json;
use super::transformer::{QwenTransformer, QwenTransformerConfig};
use super::vae::{LATENTS_MEAN, LATENTS_STD, QwenVae, QwenVaeConfig};
use crate::family::Family;
use crate::random::{Created, Scale, byte_chars, write_component, write_json};

/// Qwen2.5-VL's vocabulary size and its special tokens with their ids.
pub const VOCAB_SIZE: usize = 152_064;
pub const SPECIAL_TOKENS: [(&str, u32); 14] = [
    ("<|endoftext|>", 151_643),
    ("<|im_start|>", 151_644),
    ("<|im_end|>", 151_645),
    ("<|object_ref_start|>", 151_646),
    ("<|object_ref_end|>", 151_647),
    ("<|box_start|>", 151_648),
    ("<|box_end|>", 151_649),
    ("<|quad_start|>", 151_650),
    ("<|quad_end|>", 151_651),
    ("<|vision_start|>", 151_652),
    ("<|vision_end|>", 151_653),
    ("<|vision_pad|>", 151_654),
    ("<|image_pad|>", 151_655),
    ("<|video_pad|>", 151_656),
];

pub fn transformer_json(scale: Scale) -> Value {
    let (layers, head, heads, joint, in_ch, out_ch, axes) = match scale {
        Scale::Tiny => (2, 16, 3, 16, 16, 4, json!([8, 4, 4])),
        Scale::Full => (60, 128, 24, 3584, 64, 16, json!([16, 56, 56])),
    };
    json!({
        "_class_name": "QwenImageTransformer2DModel", "_diffusers_version": "0.42.1",
        "patch_size": 2, "in_channels": in_ch, "out_channels": out_ch, "num_layers": layers,
        "attention_head_dim": head, "num_attention_heads": heads, "joint_attention_dim": joint,
        "guidance_embeds": false, "axes_dims_rope": axes,
    })
}

pub fn vae_json(scale: Scale) -> Value {
    let (base, z, mult, res, down) = match scale {
        Scale::Tiny => (24, 4, json!([1, 2, 4]), 1, json!([false, true])),
        Scale::Full => (96, 16, json!([1, 2, 4, 4]), 2, json!([false, true, true])),
    };
    let z_dim = z as usize;
    json!({
        "_class_name": "AutoencoderKLQwenImage", "_diffusers_version": "0.42.1",
        "base_dim": base, "z_dim": z, "dim_mult": mult, "num_res_blocks": res, "attn_scales": [],
        "temperal_downsample": down, "dropout": 0.0,
        "latents_mean": LATENTS_MEAN[..z_dim], "latents_std": LATENTS_STD[..z_dim],
    })
}

/// A flat Qwen2.5-VL config (the released checkpoint's shape) with its vision tower's.
pub fn text_json(scale: Scale) -> Value {
    let (hidden, inter, layers, heads, kv, mrope, eps) = match scale {
        Scale::Tiny => (16, 16, 2, 2, 2, json!([1, 1, 2]), 1e-6),
        Scale::Full => (3584, 18944, 28, 28, 4, json!([16, 24, 24]), 1e-6),
    };
    json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "vocab_size": VOCAB_SIZE, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "hidden_act": "silu", "max_position_embeddings": 128_000, "rms_norm_eps": eps,
        "rope_theta": 1_000_000.0, "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": mrope},
        "tie_word_embeddings": false, "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 28,
        "attention_dropout": 0.0, "bos_token_id": 151_643, "eos_token_id": 151_645,
        "vision_start_token_id": 151_652, "vision_end_token_id": 151_653, "vision_token_id": 151_654,
        "image_token_id": 151_655, "video_token_id": 151_656, "torch_dtype": "float32",
        "vision_config": super::random_vision::vision_config(scale, hidden),
    })
}

/// The released Qwen-Image scheduler config (dynamic exponential shift, terminal 0.02).
pub fn scheduler_json() -> Value {
    json!({
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.42.1",
        "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": true,
        "base_shift": 0.5, "max_shift": 0.9, "base_image_seq_len": 256, "max_image_seq_len": 8192,
        "shift_terminal": 0.02, "time_shift_type": "exponential", "invert_sigmas": false,
        "stochastic_sampling": false, "use_beta_sigmas": false, "use_exponential_sigmas": false,
        "use_karras_sigmas": false,
    })
}

/// A byte-level BPE `tokenizer.json` with Qwen2's pre-tokenizer, no merges, and the special
/// tokens at their real ids; the same as `vocab.json` and `merges.txt`; and the
/// `tokenizer_config.json` transformers reads.
pub fn write_tokenizer(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab: serde_json::Map<String, Value> =
        byte_chars().iter().enumerate().map(|(i, c)| (c.to_string(), json!(i))).collect();
    write_json(&dir.join("vocab.json"), &Value::Object(vocab.clone()))?;
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n")?;
    let added: Vec<(String, u32)> = SPECIAL_TOKENS.iter().map(|(c, id)| (c.to_string(), *id)).collect();
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(vocab, Vec::new(), &added))?;
    let decoder: serde_json::Map<String, Value> = SPECIAL_TOKENS
        .iter()
        .map(|(content, id)| {
            (
                id.to_string(),
                json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false,
                                    "single_word": false, "special": true}),
            )
        })
        .collect();
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131_072, "errors": "replace",
                "add_prefix_space": false, "split_special_tokens": false, "clean_up_tokenization_spaces": false,
                "bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": null,
                "added_tokens_decoder": decoder}),
    )
}

/// Writes a random `qwen-image` or `qwen-image-edit` model into `out` (empty or absent).
pub fn create(family: Family, scale: Scale, out: &Path, seed: u64) -> Result<Created> {
    if !matches!(family, Family::QwenImage | Family::QwenImageEdit) {
        bail!("qwen::random makes qwen-image and qwen-image-edit models, not {}", family.name());
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    let mut params = Vec::new();
    let component_seed = |k: u64| seed.wrapping_mul(1000).wrapping_add(k);
    let dir = |name: &str, config_name: &str, cfg: &Value| -> Result<std::path::PathBuf> {
        let d = out.join(name);
        std::fs::create_dir_all(&d)?;
        write_json(&d.join(config_name), cfg)?;
        Ok(d)
    };
    let text = text_json(scale);
    let tcfg = TextConfig::from_json(&text)?;
    let d = dir("text_encoder", "config.json", &text)?;
    let n = write_component(&d.join("model.safetensors"), component_seed(1), |vb| {
        QwenTextEncoder::new(vb.clone(), &tcfg)?;
        super::random_vision::build(vb.pp("visual"), scale, tcfg.hidden_size)
    })?;
    params.push(("text_encoder".to_string(), n));
    let tr = transformer_json(scale);
    let trcfg = QwenTransformerConfig::from_json(&tr)?;
    let d = dir("transformer", "config.json", &tr)?;
    let n = write_component(&d.join("diffusion_pytorch_model.safetensors"), component_seed(3), |vb| {
        QwenTransformer::new(vb, &trcfg).map(drop)
    })?;
    params.push(("transformer".to_string(), n));
    let vae = vae_json(scale);
    let vcfg = QwenVaeConfig::from_json(&vae)?;
    let d = dir("vae", "config.json", &vae)?;
    let n = write_component(&d.join("diffusion_pytorch_model.safetensors"), component_seed(4), |vb| {
        QwenVae::new(vb, &vcfg).map(drop)
    })?;
    params.push(("vae".to_string(), n));
    dir("scheduler", "scheduler_config.json", &scheduler_json())?;
    write_tokenizer(&out.join("tokenizer"))?;
    let edit = family == Family::QwenImageEdit;
    let mut index = json!({
        "_class_name": if edit { "QwenImageEditPipeline" } else { "QwenImagePipeline" },
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
    });
    if edit {
        super::random_vision::write_processor(out)?;
        index["processor"] = json!(["transformers", "Qwen2VLProcessor"]);
    }
    write_json(&out.join("model_index.json"), &index)?;
    crate::random::write_info(out, family, scale, seed, &params, None)?;
    Ok(Created { params, merges: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qwen::tokenizer::QwenTokenizer;

    #[test]
    fn both_scales_write_configs_that_agree() {
        for scale in [Scale::Tiny, Scale::Full] {
            let tr = QwenTransformerConfig::from_json(&transformer_json(scale)).unwrap();
            let text = TextConfig::from_json(&text_json(scale)).unwrap();
            let vae = QwenVaeConfig::from_json(&vae_json(scale)).unwrap();
            assert_eq!(tr.joint_attention_dim, text.hidden_size);
            assert_eq!((tr.latent_channels(), tr.out_channels), (vae.z_dim, vae.z_dim));
            crate::flow::FlowConfig::from_json(&scheduler_json()).unwrap();
        }
        // Full is the released model: 60 blocks of 24 × 128, Qwen2.5-VL-7B's language model, an 8× VAE.
        let tr = QwenTransformerConfig::from_json(&transformer_json(Scale::Full)).unwrap();
        assert_eq!((tr.num_layers, tr.inner_dim()), (60, 3072));
        assert_eq!(QwenVaeConfig::from_json(&vae_json(Scale::Full)).unwrap().scale_factor(), 8);
    }

    #[test]
    fn the_hub_free_tokenizer_keeps_the_special_ids() {
        let dir = tempfile::tempdir().unwrap();
        write_tokenizer(dir.path()).unwrap();
        let tok = QwenTokenizer::load(dir.path()).unwrap();
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|><|image_pad|>", 100).unwrap();
        // "user", "\n", "hi" are one token per byte (no merges).
        assert_eq!(ids.len(), 10, "{ids:?}");
        assert_eq!((ids[0], ids[8], ids[9]), (151_644, 151_645, 151_655));
        assert!(ids[1..8].iter().all(|&i| i < 256));
        assert_eq!(tok.encode("abc", 2).unwrap().len(), 2, "truncated to the limit");
        // Without tokenizer.json, the same tokenizer from vocab.json, merges.txt and the config.
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let parts = QwenTokenizer::load(dir.path()).unwrap();
        let text = "<|im_start|>system\nDescribe it: a red fox, 3 cubs.<|im_end|>\n";
        assert_eq!(parts.encode(text, 1000).unwrap(), tok.encode(text, 1000).unwrap());
    }
}
