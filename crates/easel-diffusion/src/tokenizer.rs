//! CLIP tokenization: `tokenizer.json` plus the pad token from `tokenizer_config.json`.
//!
//! Prompts become exactly 77 ids: start token, BPE tokens, end token, then padding. Longer prompts
//! are truncated (keeping the end token) with a logged note, never refused: a server cannot make a
//! client count CLIP tokens.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use tokenizers::Tokenizer;

pub const MAX_TOKENS: usize = 77;
pub const EOS: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    inner: Tokenizer,
    pad: u32,
    eos: u32,
}

/// A tokenized prompt.
pub struct Tokens {
    pub ids: Vec<u32>,
    /// How many BPE tokens were dropped to fit.
    pub dropped: usize,
}

impl ClipTokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&file).map_err(|e| anyhow!("cannot load {}: {e}", file.display()))?;
        let eos = inner.token_to_id(EOS).with_context(|| format!("{} has no {EOS} token", file.display()))?;
        let pad_name = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| match v.get("pad_token") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
                _ => None,
            })
            .unwrap_or_else(|| EOS.to_string());
        let pad = inner
            .token_to_id(&pad_name)
            .with_context(|| format!("pad token '{pad_name}' is not in {}", file.display()))?;
        Ok(Self { inner, pad, eos })
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        let mut dropped = 0;
        if ids.len() > MAX_TOKENS {
            dropped = ids.len() - MAX_TOKENS;
            ids.truncate(MAX_TOKENS - 1);
            ids.push(self.eos);
        }
        ids.resize(MAX_TOKENS, self.pad);
        Ok(Tokens { ids, dropped })
    }
}
