//! `create-random` for FLUX.1's text encoders, tokenizers and VAE (the transformer, scheduler
//! and `model_index.json` are written by `flux::random`).
//!
//! `tiny` follows diffusers' own FLUX test configs (`tests/pipelines/flux/test_pipeline_flux.py`):
//! a 32-wide CLIP with `eos_token_id` 2 (transformers' argmax pooling) and exact GELU, a 32-wide
//! T5-v1.1 encoder (gated-gelu; the test's `tiny-random-t5` is a Hub download, so its config is
//! written here with the v1.1 activation and the real 32 buckets / 128 distance), and the
//! one-level 1-channel VAE with scale 1.5035 and shift 0.0609 (latent factor 1). `full` has the
//! published sizes: CLIP-L, T5-v1.1-XXL (4.76 B parameters: about 19 GB of f32 to write, and as
//! much memory while writing) and the 16-channel FLUX VAE. The T5 tokenizer is a Unigram model
//! over single characters (one token per character, `▁` marking word starts), not T5's
//! SentencePiece vocabulary; it has T5's special tokens (`<pad>` 0, `</s>` 1, `<unk>` 2).

use std::path::Path;

use anyhow::Result;
use candle_nn::Init;
use serde_json::{Value, json};

use super::t5::{T5Encoder, read_config};
use crate::clip::{ClipConfig, ClipText};
use crate::random::{Scale, clip_json, write_component, write_component_claiming, write_json, write_tokenizer};
use crate::vae::{Vae, VaeConfig};

/// The widths the transformer and the pipeline must agree with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDims {
    /// T5's `d_model`.
    pub joint_attention_dim: usize,
    /// CLIP's `hidden_size`.
    pub pooled_projection_dim: usize,
    /// The VAE's latent channels (the transformer's `in_channels` is 4× this).
    pub latent_channels: usize,
    /// Pixels per latent: 2^(levels − 1).
    pub vae_scale_factor: usize,
}

pub fn dims(scale: Scale) -> TextDims {
    match scale {
        Scale::Tiny => {
            TextDims { joint_attention_dim: 32, pooled_projection_dim: 32, latent_channels: 1, vae_scale_factor: 1 }
        }
        Scale::Full => {
            TextDims { joint_attention_dim: 4096, pooled_projection_dim: 768, latent_channels: 16, vae_scale_factor: 8 }
        }
    }
}

fn clip_config(scale: Scale) -> Value {
    let mut v = match scale {
        Scale::Tiny => clip_json(1000, 32, 37, 5, 4, "gelu", 32, false),
        Scale::Full => clip_json(49408, 768, 3072, 12, 12, "quick_gelu", 768, false),
    };
    // As CLIP-L's and diffusers' test config say (transformers then pools at the highest id).
    v["bos_token_id"] = json!(0);
    v["eos_token_id"] = json!(2);
    v["pad_token_id"] = json!(1);
    v
}

fn t5_config(scale: Scale) -> Value {
    let (vocab, d_model, d_kv, d_ff, layers, heads) = match scale {
        Scale::Tiny => (1000, 32, 8, 37, 2, 4),
        Scale::Full => (32128, 4096, 64, 10240, 24, 64),
    };
    json!({
        "_name_or_path": "easel-random",
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": vocab, "d_model": d_model, "d_kv": d_kv, "d_ff": d_ff,
        "num_layers": layers, "num_decoder_layers": layers, "num_heads": heads,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": true,
        "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1, "initializer_factor": 1.0,
        "is_encoder_decoder": true, "tie_word_embeddings": false, "use_cache": true,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
        "torch_dtype": "float32"
    })
}

fn vae_config(scale: Scale) -> Value {
    let (channels, layers, latent, groups, size, scaling, shift): (Vec<usize>, usize, usize, usize, usize, f64, f64) =
        match scale {
            Scale::Tiny => (vec![4], 1, 1, 1, 32, 1.5035, 0.0609),
            Scale::Full => (vec![128, 256, 512, 512], 2, 16, 32, 1024, 0.3611, 0.1159),
        };
    let n = channels.len();
    json!({
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.42.1", "act_fn": "silu",
        "block_out_channels": channels,
        "down_block_types": vec!["DownEncoderBlock2D"; n], "up_block_types": vec!["UpDecoderBlock2D"; n],
        "in_channels": 3, "out_channels": 3, "latent_channels": latent, "layers_per_block": layers,
        "norm_num_groups": groups, "sample_size": size,
        "scaling_factor": scaling, "shift_factor": shift,
        "use_quant_conv": false, "use_post_quant_conv": false, "mid_block_add_attention": true,
        "latents_mean": null, "latents_std": null, "force_upcast": true
    })
}

/// transformers' `T5EncoderModel` writes the embedding as `shared.weight`; candle's loader
/// probes for it.
fn t5_names(name: &str) -> bool {
    name == "shared.weight"
}

/// Writes `text_encoder/`, `tokenizer/`, `text_encoder_2/` and `tokenizer_2/`; returns each
/// encoder's parameter count.
pub fn write(out: &Path, scale: Scale, seed: u64) -> Result<Vec<(String, usize)>> {
    Ok(vec![write_clip(out, scale, seed)?, write_t5(out, scale, seed)?])
}

/// Writes `text_encoder/` and `tokenizer/` (CLIP).
pub fn write_clip(out: &Path, scale: Scale, seed: u64) -> Result<(String, usize)> {
    let clip = clip_config(scale);
    let clip_cfg: ClipConfig = serde_json::from_value(clip.clone())?;
    let dir = out.join("text_encoder");
    std::fs::create_dir_all(&dir)?;
    write_json(&dir.join("config.json"), &clip)?;
    let n = write_component(&dir.join("model.safetensors"), component_seed(seed, 1), |vb| {
        ClipText::new(vb, &clip_cfg).map(drop)
    })?;
    // FLUX pads CLIP prompts with `<|endoftext|>`, as SD 1.x does.
    write_tokenizer(&out.join("tokenizer"), clip_cfg.vocab_size, false, None)?;
    Ok(("text_encoder".to_string(), n))
}

/// Writes `text_encoder_2/` and `tokenizer_2/` (T5).
pub fn write_t5(out: &Path, scale: Scale, seed: u64) -> Result<(String, usize)> {
    let t5 = t5_config(scale);
    let t5_cfg = read_config(&t5)?;
    let dir = out.join("text_encoder_2");
    std::fs::create_dir_all(&dir)?;
    write_json(&dir.join("config.json"), &t5)?;
    let n = write_component_claiming(&dir.join("model.safetensors"), component_seed(seed, 2), t5_names, |vb| {
        T5Encoder::new(vb.clone(), &t5_cfg)?;
        // candle asks for T5's norm weights without an initialiser (zeros); near-one weights
        // keep the random encoder from collapsing to zero and still test that they are applied.
        let near_one = Init::Randn { mean: 1.0, stdev: 0.1 };
        let e = vb.pp("encoder");
        for i in 0..t5_cfg.num_layers {
            for sub in 0..2 {
                e.pp(format!("block.{i}.layer.{sub}.layer_norm")).get_with_hints(t5_cfg.d_model, "weight", near_one)?;
            }
        }
        e.pp("final_layer_norm").get_with_hints(t5_cfg.d_model, "weight", near_one)?;
        Ok(())
    })?;
    write_t5_tokenizer(&out.join("tokenizer_2"), super::text::DEV_MAX_SEQUENCE_LENGTH)?;
    Ok(("text_encoder_2".to_string(), n))
}

/// Writes `vae/`; returns its parameter count.
pub fn write_vae(out: &Path, scale: Scale, seed: u64) -> Result<(String, usize)> {
    let v = vae_config(scale);
    let cfg = VaeConfig::from_json(&v)?;
    let dir = out.join("vae");
    std::fs::create_dir_all(&dir)?;
    write_json(&dir.join("config.json"), &v)?;
    let n = write_component(&dir.join("diffusion_pytorch_model.safetensors"), component_seed(seed, 4), |vb| {
        Vae::new(vb, &cfg).map(drop)
    })?;
    Ok(("vae".to_string(), n))
}

/// The per-component seed `random::create` uses for SD (transformer: k = 3).
fn component_seed(seed: u64, k: u64) -> u64 {
    seed.wrapping_mul(1000).wrapping_add(k)
}

/// A T5-style `tokenizer.json`: `<pad>`, `</s>`, `<unk>`, then `▁` and every printable ASCII
/// character alone and after `▁` (Unigram, so a word start is one token); split at whitespace,
/// `</s>` appended.
pub fn write_t5_tokenizer(dir: &Path, model_max_length: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut vocab: Vec<Value> = vec![json!(["<pad>", 0.0]), json!(["</s>", 0.0]), json!(["<unk>", 0.0])];
    vocab.push(json!(["▁", -2.0]));
    for c in '!'..='~' {
        vocab.push(json!([format!("▁{c}"), -3.0]));
        vocab.push(json!([c.to_string(), -4.0]));
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let metaspace = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    let seq = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
    let eos = json!({"SpecialToken": {"id": "</s>", "type_id": 0}});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "</s>"), special(2, "<unk>")],
        // As transformers' `T5Tokenizer` builds it (no SentencePiece charsmap to normalise with).
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]},
        "post_processor": {"type": "TemplateProcessing",
            "single": [seq("A"), eos],
            "pair": [seq("A"), eos, seq("B"), eos],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}},
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": false}
    });
    write_json(&dir.join("tokenizer.json"), &tokenizer)?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "T5Tokenizer", "model_max_length": model_max_length, "extra_ids": 0,
                "additional_special_tokens": [], "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}),
    )?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &json!({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}),
    )?;
    Ok(())
}
