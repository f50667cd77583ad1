//! FLUX.1's prompt encoding: CLIP-L's pooled output and T5's hidden states, as diffusers'
//! `FluxPipeline.encode_prompt` computes them.
//!
//! CLIP (`text_encoder/`, `tokenizer/`) reads 77 ids and gives `pooler_output` (the final-normed
//! state where transformers pools, no projection); T5 (`text_encoder_2/`, `tokenizer_2/`) reads
//! `max_sequence_length` ids padded with `<pad>` and gives its whole last hidden state, pads
//! included (no attention mask). CLIP runs in f32, as the SD encoders do; T5 in the model's
//! dtype (bf16 on GPUs, as diffusers runs it). [`FluxTextLayout`] is the load-free check
//! (`--check-config`); [`FluxText`] the loaded encoders, kept apart from the transformer so a
//! model over its memory budget has them on the device only while they encode
//! ([`crate::placement`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::t5 as candle_t5;

use super::t5::{T5Encoder, T5Tokenizer, read_config};
use crate::clip::{ClipConfig, ClipText};
use crate::model::{read_json, weights_file, weights_files};
use crate::placement::{Part, Placed, Plan, Role, Weights};
use crate::tokenizer::ClipTokenizer;

/// diffusers' limits for FLUX.1's T5 sequence: schnell was distilled with 256 tokens, dev 512.
pub const SCHNELL_MAX_SEQUENCE_LENGTH: usize = 256;
pub const DEV_MAX_SEQUENCE_LENGTH: usize = 512;

/// What the transformer is conditioned on, f32.
pub struct FluxPrompt {
    /// T5's last hidden state `(1, max_sequence_length, d_model)`.
    pub t5: Tensor,
    /// CLIP's pooled output `(1, hidden_size)`.
    pub pooled: Tensor,
}

/// The text parts of a FLUX folder, from its small files only: configs parsed, tokenizers read,
/// weights files found, no tensor read.
pub struct FluxTextLayout {
    clip: (ClipConfig, PathBuf),
    clip_tokenizer: ClipTokenizer,
    t5: (candle_t5::Config, Vec<PathBuf>),
    t5_tokenizer: T5Tokenizer,
}

impl FluxTextLayout {
    pub fn read(root: &Path) -> Result<Self> {
        let clip_cfg = serde_json::from_value(read_json(&root.join("text_encoder/config.json"))?)
            .context("text_encoder/config.json is not a CLIP text config")?;
        let t5_cfg =
            read_config(&read_json(&root.join("text_encoder_2/config.json"))?).context("text_encoder_2/config.json")?;
        Ok(Self {
            clip: (clip_cfg, weights_file(&root.join("text_encoder"), "model")?),
            clip_tokenizer: ClipTokenizer::load(&root.join("tokenizer"))?,
            // T5-XXL is usually sharded.
            t5: (t5_cfg, weights_files(&root.join("text_encoder_2"), "model")?),
            t5_tokenizer: T5Tokenizer::load(&root.join("tokenizer_2"))?,
        })
    }

    /// T5's width (the transformer's `joint_attention_dim`).
    pub fn t5_dim(&self) -> usize {
        self.t5.0.d_model
    }

    /// CLIP's width (the transformer's `pooled_projection_dim`).
    pub fn pooled_dim(&self) -> usize {
        self.clip.0.hidden_size
    }

    /// The encoders as the memory plan sees them: CLIP in f32, T5 in `t5_dtype`.
    pub fn parts(&self, t5_dtype: DType) -> Result<Vec<Part>> {
        Ok(vec![
            Part::new(CLIP, Role::Text, std::slice::from_ref(&self.clip.1), DType::F32)?,
            Part::new(T5, Role::Text, &self.t5.1, t5_dtype)?,
        ])
    }

    /// CLIP in f32 and T5 in `t5_dtype` (T5-XXL is 19 GB in f32, 9.5 GB in bf16; its norms
    /// compute in f32 either way), placed as `plan` says. The outputs are f32.
    pub fn load(self, device: &Device, t5_dtype: DType, plan: &Plan) -> Result<FluxText> {
        let (clip_cfg, clip_file) = self.clip;
        let weights = Weights::new(&[clip_file], DType::F32, device, plan.placement(CLIP))?;
        let clip = Placed::new(&weights, move |vb| ClipText::new(vb, &clip_cfg).context("loading text_encoder"))?;
        let (t5_cfg, t5_files) = self.t5;
        let weights = Weights::new(&t5_files, t5_dtype, device, plan.placement(T5))?;
        let t5 = Placed::new(&weights, move |vb| T5Encoder::new(vb, &t5_cfg).context("loading text_encoder_2"))?;
        Ok(FluxText {
            clip,
            clip_tokenizer: self.clip_tokenizer,
            t5,
            t5_tokenizer: self.t5_tokenizer,
            device: device.clone(),
        })
    }
}

/// The plan's names of the two encoders (their folders).
const CLIP: &str = "text_encoder";
const T5: &str = "text_encoder_2";

/// CLIP-L and T5 with their tokenizers, each resident or built for each use.
pub struct FluxText {
    clip: Placed<ClipText>,
    clip_tokenizer: ClipTokenizer,
    t5: Placed<T5Encoder>,
    t5_tokenizer: T5Tokenizer,
    device: Device,
}

impl FluxText {
    /// The CLIP ids (77) and the T5 ids (`max_sequence_length`) of `prompt`; the ends of prompts
    /// too long for either are dropped with a logged note, as diffusers does.
    pub fn ids(&self, prompt: &str, max_sequence_length: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let clip = self.clip_tokenizer.encode(prompt)?;
        if clip.dropped > 0 {
            tracing::info!(dropped = clip.dropped, "prompt longer than 77 CLIP tokens; the end was truncated");
        }
        let t5 = self.t5_tokenizer.encode(prompt, max_sequence_length)?;
        if t5.dropped > 0 {
            tracing::info!(
                dropped = t5.dropped,
                max_sequence_length,
                "prompt longer than max_sequence_length T5 tokens; the end was truncated"
            );
        }
        Ok((clip.ids, t5.ids))
    }

    /// Encodes one prompt's ids (batch 1); an encoder kept off the device is there only for
    /// its own pass.
    pub fn encode_ids(&self, clip_ids: &[u32], t5_ids: &[u32]) -> Result<FluxPrompt> {
        let dev = &self.device;
        let clip = Tensor::new(clip_ids, dev)?.unsqueeze(0)?;
        let pooled = self.clip.get()?.forward(&clip, self.clip_tokenizer.eos())?.pooled;
        let t5 = self.t5.get()?.forward(&Tensor::new(t5_ids, dev)?.unsqueeze(0)?)?.to_dtype(DType::F32)?;
        Ok(FluxPrompt { t5, pooled })
    }

    pub fn encode(&self, prompt: &str, max_sequence_length: usize) -> Result<FluxPrompt> {
        let (clip, t5) = self.ids(prompt, max_sequence_length)?;
        self.encode_ids(&clip, &t5)
    }
}
