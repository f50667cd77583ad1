//! FLUX.1's second text encoder: the T5-v1.1 encoder (`text_encoder_2/`) and its tokenizer
//! (`tokenizer_2/`).
//!
//! The model is candle's `t5::T5EncoderModel`, which reads transformers' `T5EncoderModel` names
//! and computes what transformers does for the v1.1 encoder (RMS-style T5 LayerNorm, gated
//! `gelu_new`, no 1/√d scaling, a relative position bias made in layer 0 and reused by every
//! layer, no attention mask); the parity script checks its hidden states against transformers.
//! The tokenizer pads with `<pad>` (id 0) to `max_sequence_length` and the padded positions are
//! encoded and attended, as diffusers' FLUX pipeline does.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::t5;
use tokenizers::Tokenizer;

/// A T5 encoder's `config.json`, checked for what this encoder supports.
pub fn read_config(v: &serde_json::Value) -> Result<t5::Config> {
    let mut cfg: t5::Config = serde_json::from_value(v.clone()).context("not a T5 config")?;
    if cfg.num_heads * cfg.d_kv == 0 || cfg.d_model == 0 {
        bail!("T5 config: d_model, num_heads and d_kv must be positive");
    }
    // The encoder stack never has cross-attention, whatever the file says.
    cfg.is_decoder = false;
    cfg.use_cache = false;
    Ok(cfg)
}

pub struct T5Encoder {
    model: t5::T5EncoderModel,
    cfg: t5::Config,
}

impl T5Encoder {
    pub fn new(vb: VarBuilder, cfg: &t5::Config) -> Result<Self> {
        Ok(Self { model: t5::T5EncoderModel::load(vb, cfg)?, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &t5::Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// `ids` `(batch, seq)` u32 → the last hidden state (after the final norm) `(batch, seq, d_model)`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        if seq == 0 {
            bail!("T5: empty input");
        }
        // candle's forward takes `&mut self` for a decoder's key/value cache the encoder never
        // fills; a clone shares the weights (reference-counted) and keeps `forward(&self)`.
        Ok(self.model.clone().forward(ids)?)
    }
}

/// A tokenized prompt, padded to its fixed length.
pub struct T5Tokens {
    pub ids: Vec<u32>,
    /// How many tokens were dropped to fit.
    pub dropped: usize,
}

/// `tokenizer_2/tokenizer.json` (its post-processor appends `</s>`) and the pad token of
/// `tokenizer_config.json` (default `<pad>`).
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad: u32,
    eos: u32,
}

impl T5Tokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&file).map_err(|e| anyhow!("cannot load {}: {e}", file.display()))?;
        let config = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        let named = |key: &str, default: &str| -> String {
            match config.as_ref().and_then(|c| c.get(key)) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Object(o)) => {
                    o.get("content").and_then(|c| c.as_str()).unwrap_or(default).to_string()
                }
                _ => default.to_string(),
            }
        };
        let id = |name: String| {
            inner.token_to_id(&name).with_context(|| format!("token '{name}' is not in {}", file.display()))
        };
        let pad = id(named("pad_token", "<pad>"))?;
        let eos = id(named("eos_token", "</s>"))?;
        Ok(Self { inner, pad, eos })
    }

    pub fn pad(&self) -> u32 {
        self.pad
    }

    /// Exactly `len` ids: the tokens, `</s>`, then pads. Longer prompts keep their first `len − 1`
    /// tokens and the `</s>` (transformers' truncation), with the count dropped.
    pub fn encode(&self, text: &str, len: usize) -> Result<T5Tokens> {
        if len == 0 {
            bail!("T5: max_sequence_length must be positive");
        }
        let enc = self.inner.encode(text, true).map_err(|e| anyhow!("T5 tokenizing failed: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        let mut dropped = 0;
        if ids.len() > len {
            dropped = ids.len() - len;
            ids.truncate(len - 1);
            ids.push(self.eos);
        }
        ids.resize(len, self.pad);
        Ok(T5Tokens { ids, dropped })
    }
}

#[cfg(test)]
mod tests {
    use super::T5Tokenizer;
    use crate::flux::random_text::write_t5_tokenizer;

    #[test]
    fn pads_with_zero_and_truncates_keeping_the_end_token() {
        let dir = tempfile::tempdir().unwrap();
        write_t5_tokenizer(dir.path(), 512).unwrap();
        let tok = T5Tokenizer::load(dir.path()).unwrap();
        assert_eq!(tok.pad(), 0);
        let short = tok.encode("ab  c", 8).unwrap();
        // `▁a`, `b`, `▁c`, `</s>`, pads.
        assert_eq!(short.ids.len(), 8);
        assert_eq!(&short.ids[3..], &[1, 0, 0, 0, 0]);
        assert_eq!(short.dropped, 0);
        let long = tok.encode("abcdefghij", 4).unwrap();
        assert_eq!(long.ids.len(), 4);
        assert_eq!(long.ids[3], 1, "the end token survives truncation");
        assert_eq!(long.dropped, 11 - 4);
        assert!(tok.encode("x", 0).is_err());
    }
}
