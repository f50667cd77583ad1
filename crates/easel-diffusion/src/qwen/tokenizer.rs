//! Qwen2's byte-level BPE tokenizer, as Qwen2.5-VL (and so Qwen-Image) uses it.
//!
//! Read from `tokenizer/tokenizer.json`, or, for checkpoints that ship only the slow tokenizer's
//! files, built from `vocab.json`, `merges.txt` and the added tokens of `tokenizer_config.json`
//! into the same `tokenizer.json` shape ([`tokenizer_json`], which `create-random` writes too).
//! Special tokens written in a prompt are recognised, as transformers does.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Qwen2's pre-tokenizer split.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's `tokenizer.json`: NFC, the Qwen2 split then byte-level BPE with `vocab` and `merges`
/// (`"a b"` strings), `added` tokens (special, at their ids; each is in `vocab` too, or the
/// tokenizers library would number it after the vocabulary).
pub fn tokenizer_json(
    mut vocab: serde_json::Map<String, Value>,
    merges: Vec<String>,
    added: &[(String, u32)],
) -> Value {
    let added: Vec<Value> = added
        .iter()
        .map(|(content, id)| {
            vocab.insert(content.clone(), (*id).into());
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false}, byte_level]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
}

/// The Qwen2 byte-level BPE tokenizer of `tokenizer/`: its `tokenizer.json`, or else (as some
/// checkpoints ship it) `vocab.json`, `merges.txt` and the added tokens of `tokenizer_config.json`.
pub struct QwenTokenizer {
    inner: tokenizers::Tokenizer,
}

impl QwenTokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let inner = if file.is_file() {
            tokenizers::Tokenizer::from_file(&file).map_err(|e| anyhow!("cannot load {}: {e}", file.display()))?
        } else {
            let json = Self::from_parts(dir)?;
            json.to_string().parse().map_err(|e| anyhow!("cannot build the tokenizer of {}: {e}", dir.display()))?
        };
        for special in ["<|im_start|>", "<|im_end|>"] {
            if inner.token_to_id(special).is_none() {
                bail!("the tokenizer in {} has no {special} token: not a Qwen2 tokenizer", dir.display());
            }
        }
        Ok(Self { inner })
    }

    fn from_parts(dir: &Path) -> Result<Value> {
        let read = |name: &str| -> Result<String> {
            let p = dir.join(name);
            std::fs::read_to_string(&p)
                .with_context(|| format!("{} has neither tokenizer.json nor {name} ({})", dir.display(), p.display()))
        };
        let vocab: serde_json::Map<String, Value> =
            serde_json::from_str(&read("vocab.json")?).context("vocab.json is not a JSON object")?;
        let merges: Vec<String> = read("merges.txt")?
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let config: Value =
            serde_json::from_str(&read("tokenizer_config.json")?).context("tokenizer_config.json is not JSON")?;
        let added = config
            .get("added_tokens_decoder")
            .and_then(Value::as_object)
            .context("tokenizer_config.json has no added_tokens_decoder")?
            .iter()
            .map(|(id, t)| {
                let content = t.get("content").and_then(Value::as_str).context("an added token has no content")?;
                Ok((content.to_string(), id.parse::<u32>().context("an added token's id is not a number")?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(tokenizer_json(vocab, merges, &added))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of `text` as is (special tokens written in it are recognised), at most `max` of them.
    pub fn encode(&self, text: &str, max: usize) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > max {
            tracing::info!(dropped = ids.len() - max, "prompt longer than the text encoder takes; the end was cut");
            ids.truncate(max);
        }
        Ok(ids)
    }
}
