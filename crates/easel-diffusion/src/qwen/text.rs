//! Qwen2.5-VL's language model used as Qwen-Image's text encoder, and the prompt template.
//!
//! Qwen-Image conditions on the last hidden state (after the final RMSNorm) of Qwen2.5-VL-7B-Instruct
//! run over a chat template, minus the template's first tokens. candle's `qwen2::Model` is the same
//! decoder but cannot serve here: it takes token ids only (the edit pipeline replaces the
//! `<|image_pad|>` embeddings by vision features), applies one position stream (Qwen2.5-VL's
//! multimodal RoPE gives image tokens separate temporal/row/column positions), reads only the
//! `model.*` key scheme, and its padding mask is not causal. So the decoder is written here,
//! following transformers' `Qwen2_5_VLTextModel`: RMSNorm (f32 statistics), grouped-query attention
//! with q/k/v biases, rotate-half RoPE whose half-dimension is split into `mrope_section` slices
//! fed by the temporal, row and column position streams, and a SiLU-gated MLP. With text only the
//! three streams are equal and this is plain 1-D RoPE.
//!
//! Checkpoints name the decoder `model.*` (transformers < 4.52) or `model.language_model.*`; both load.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder, embedding, linear, linear_no_bias, rms_norm};
use serde_json::Value;

pub use super::tokenizer::QwenTokenizer;

/// Qwen-Image's text-to-image template; `{}` is the prompt.
pub const T2I_TEMPLATE: &str = "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";
/// Tokens of [`T2I_TEMPLATE`] before the prompt, dropped from the hidden states (diffusers'
/// `prompt_template_encode_start_idx`; a constant there too, whatever the tokenizer makes of it).
pub const T2I_DROP: usize = 34;
/// The most prompt tokens the pipeline tokenizes (diffusers' `tokenizer_max_length`).
pub const TOKENIZER_MAX: usize = 1024;
/// diffusers' default `max_sequence_length`: hidden states kept after the drop.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// The decoder's dimensions, from `text_encoder/config.json` (flat, as the released checkpoint
/// writes it, or under `text_config`, as transformers ≥ 4.52 does).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Half-dimension slices of the head fed by the temporal, row and column positions.
    pub mrope_section: Vec<usize>,
}

impl TextConfig {
    pub fn from_json(v: &Value) -> Result<Self> {
        let t = v.get("text_config").filter(|t| t.get("hidden_size").is_some()).unwrap_or(v);
        let num = |k: &str| -> Result<usize> {
            t.get(k)
                .or_else(|| v.get(k))
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .with_context(|| format!("the text encoder config has no integer `{k}`"))
        };
        let rope = t.get("rope_parameters").or_else(|| t.get("rope_scaling")).or_else(|| v.get("rope_scaling"));
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| t.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(1e6);
        let heads = num("num_attention_heads")?;
        let hidden = num("hidden_size")?;
        let half = hidden / heads.max(1) / 2;
        let mrope_section = match rope.and_then(|r| r.get("mrope_section")).and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .map(|x| x.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
                .context("the text encoder config's `mrope_section` is not a list of integers")?,
            None => vec![half],
        };
        let cfg = Self {
            vocab_size: num("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: num("intermediate_size")?,
            num_hidden_layers: num("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: num("num_key_value_heads").unwrap_or(heads),
            rms_norm_eps: t.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            mrope_section,
        };
        if heads == 0 || hidden % heads != 0 || (hidden / heads) % 2 != 0 {
            bail!("the text encoder's hidden_size {hidden} does not split into {heads} heads of even size");
        }
        if cfg.num_key_value_heads == 0 || heads % cfg.num_key_value_heads != 0 {
            bail!("num_attention_heads {heads} is not a multiple of num_key_value_heads {}", cfg.num_key_value_heads);
        }
        if cfg.mrope_section.iter().sum::<usize>() != half {
            bail!("mrope_section {:?} does not sum to half the head size ({half})", cfg.mrope_section);
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The decoder's key prefix in a checkpoint: `model.language_model` or the legacy `model`.
pub fn decoder_prefix(vb: &VarBuilder) -> &'static str {
    if vb.contains_tensor("model.language_model.embed_tokens.weight") { "model.language_model" } else { "model" }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let (h, kv, hd, dim) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim(), cfg.hidden_size);
        Ok(Self {
            q: linear(dim, h * hd, vb.pp("q_proj"))?,
            k: linear(dim, kv * hd, vb.pp("k_proj"))?,
            v: linear(dim, kv * hd, vb.pp("v_proj"))?,
            o: linear_no_bias(h * hd, dim, vb.pp("o_proj"))?,
            heads: h,
            kv_heads: kv,
            head_dim: hd,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let hd = self.head_dim;
        let heads = |t: Tensor, n: usize| t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous();
        let q = candle_nn::rotary_emb::rope(&heads(self.q.forward(x)?, self.heads)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&heads(self.k.forward(x)?, self.kv_heads)?, cos, sin)?;
        let v = heads(self.v.forward(x)?, self.kv_heads)?;
        let groups = self.heads / self.kv_heads;
        let (k, v) = if groups == 1 {
            (k, v)
        } else {
            let rep =
                |t: Tensor| t.unsqueeze(2)?.expand((b, self.kv_heads, groups, s, hd))?.reshape((b, self.heads, s, hd));
            (rep(k)?, rep(v)?)
        };
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(bias)?;
        // The softmax in f32 whatever the model dtype, as torch's attention kernels accumulate.
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, self.heads * hd))?;
        Ok(self.o.forward(&out)?)
    }
}

struct Layer {
    norm1: RmsNorm,
    attn: Attention,
    norm2: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn new(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let (dim, ff, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        Ok(Self {
            norm1: rms_norm(dim, eps, vb.pp("input_layernorm"))?,
            attn: Attention::new(vb.pp("self_attn"), cfg)?,
            norm2: rms_norm(dim, eps, vb.pp("post_attention_layernorm"))?,
            gate: linear_no_bias(dim, ff, vb.pp("mlp.gate_proj"))?,
            up: linear_no_bias(dim, ff, vb.pp("mlp.up_proj"))?,
            down: linear_no_bias(ff, dim, vb.pp("mlp.down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?, cos, sin, bias)?)?;
        let h = self.norm2.forward(&x)?;
        let mlp = self.down.forward(&(candle_nn::ops::silu(&self.gate.forward(&h)?)? * self.up.forward(&h)?)?)?;
        Ok((x + mlp)?)
    }
}

/// The language model of Qwen2.5-VL, run as an encoder (no cache, no LM head).
pub struct QwenTextEncoder {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    cfg: TextConfig,
    inv_freq: Vec<f32>,
}

impl QwenTextEncoder {
    /// `vb` is the root of the text encoder's weights; the key scheme is detected.
    pub fn new(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let vb = vb.pp(decoder_prefix(&vb));
        let embed = embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(vb.pp(format!("layers.{i}")), cfg).with_context(|| format!("text encoder layer {i}")))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        let hd = cfg.head_dim();
        // transformers: 1 / theta^(arange(0, d, 2) / d), in f32.
        let inv_freq = (0..hd / 2).map(|i| 1.0 / (cfg.rope_theta.powf((2 * i) as f64 / hd as f64) as f32)).collect();
        Ok(Self { embed, layers, norm, cfg: cfg.clone(), inv_freq })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// Token embeddings `(b, s, hidden)` of ids `(b, s)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed.forward(ids)?)
    }

    /// The last hidden state after the final norm for token ids `(b, s)`, text positions 0..s.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_embeds(&self.embed(ids)?, None, None)
    }

    /// The last hidden state after the final norm, `(b, s, hidden)`, for input embeddings
    /// `(b, s, hidden)` (from [`Self::embed`], some rows replaced by vision features).
    /// `positions`: `(3, b, s)` temporal/row/column positions (any integer or float dtype) as
    /// transformers' `get_rope_index` makes them; `None` is text only, `0..s` on every stream.
    /// `mask`: `(b, s)`, 1 for tokens and 0 for padding (padding is never attended); `None` is
    /// all tokens. Attention is causal either way.
    pub fn forward_embeds(&self, embeds: &Tensor, positions: Option<&Tensor>, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, _) = embeds.dims3()?;
        let dev = embeds.device();
        let (cos, sin) = self.rope_tables(positions, b, s, dev)?;
        let (cos, sin) = (cos.to_dtype(embeds.dtype())?, sin.to_dtype(embeds.dtype())?);
        let bias = causal_bias(mask, b, s, dev)?.to_dtype(embeds.dtype())?;
        let mut x = embeds.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin, &bias)?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// `(b, s, head_dim / 2)` cos and sin: slice `i` of `mrope_section` reads position stream `i % 3`.
    fn rope_tables(&self, positions: Option<&Tensor>, b: usize, s: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        let pos: Vec<f32> = match positions {
            Some(p) => {
                let dims = p.dims();
                if dims != [3, b, s] {
                    bail!("text encoder positions have shape {dims:?}, expected [3, {b}, {s}]");
                }
                p.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?
            }
            None => (0..3).flat_map(|_| (0..b).flat_map(|_| (0..s).map(|i| i as f32))).collect(),
        };
        let half = self.inv_freq.len();
        let mut stream_of = Vec::with_capacity(half);
        for (i, &n) in self.cfg.mrope_section.iter().enumerate() {
            stream_of.extend(std::iter::repeat_n(i % 3, n));
        }
        let mut cos = Vec::with_capacity(b * s * half);
        let mut sin = Vec::with_capacity(b * s * half);
        for row in 0..b * s {
            for (j, &f) in self.inv_freq.iter().enumerate() {
                let angle = pos[stream_of[j] * b * s + row] * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok((Tensor::from_vec(cos, (b, s, half), dev)?, Tensor::from_vec(sin, (b, s, half), dev)?))
    }
}

/// Additive attention bias `(b, 1, s, s)`: causal, and padding keys masked.
fn causal_bias(mask: Option<&Tensor>, b: usize, s: usize, dev: &Device) -> Result<Tensor> {
    let keep: Vec<f32> = match mask {
        Some(m) => m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        None => vec![1.0; b * s],
    };
    if keep.len() != b * s {
        bail!("text encoder mask has {} entries, expected {b}×{s}", keep.len());
    }
    let mut bias = vec![0f32; b * s * s];
    for n in 0..b {
        for i in 0..s {
            for j in 0..s {
                if j > i || keep[n * s + j] == 0.0 {
                    bias[(n * s + i) * s + j] = f32::NEG_INFINITY;
                }
            }
            // A padding query that sees nothing attends to itself (its output is dropped anyway).
            if (0..=i).all(|j| keep[n * s + j] == 0.0) {
                bias[(n * s + i) * s + i] = 0.0;
            }
        }
    }
    Ok(Tensor::from_vec(bias, (b, 1, s, s), dev)?)
}

/// Qwen-Image's prompt embeddings `(1, L, hidden)` for one prompt: the template around it, the
/// last hidden state, the first [`T2I_DROP`] positions dropped, at most `max_sequence_length` kept.
pub fn encode_prompt(
    encoder: &QwenTextEncoder,
    tokenizer: &QwenTokenizer,
    prompt: &str,
    max_sequence_length: usize,
    device: &Device,
) -> Result<Tensor> {
    let ids = tokenizer.encode(&T2I_TEMPLATE.replace("{}", prompt), TOKENIZER_MAX + T2I_DROP)?;
    embeds_from_ids(encoder, &ids, T2I_DROP, max_sequence_length, device)
}

/// The hidden states of `ids`, less the first `drop`, at most `keep` of them.
pub fn embeds_from_ids(
    encoder: &QwenTextEncoder,
    ids: &[u32],
    drop: usize,
    keep: usize,
    device: &Device,
) -> Result<Tensor> {
    if ids.len() <= drop {
        bail!("the prompt template made {} tokens, no more than the {drop} it drops", ids.len());
    }
    let t = Tensor::new(ids, device)?.unsqueeze(0)?;
    let hidden = encoder.forward(&t)?;
    let len = (ids.len() - drop).min(keep);
    Ok(hidden.narrow(1, drop, len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_nested_configs_read_alike() {
        let flat = serde_json::json!({"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "rope_scaling": {"type": "default", "mrope_section": [16, 24, 24]}});
        let nested = serde_json::json!({"vocab_size": 152064, "text_config": {"vocab_size": 152064, "hidden_size": 3584,
            "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}});
        let a = TextConfig::from_json(&flat).unwrap();
        assert_eq!(a, TextConfig::from_json(&nested).unwrap());
        assert_eq!((a.head_dim(), a.mrope_section.clone()), (128, vec![16, 24, 24]));
        let mut bad = flat;
        bad["rope_scaling"]["mrope_section"] = serde_json::json!([16, 24, 23]);
        assert!(TextConfig::from_json(&bad).unwrap_err().to_string().contains("mrope_section"));
    }

    #[test]
    fn the_causal_bias_hides_the_future_and_padding() {
        let mask = Tensor::new(&[[1f32, 1.0, 0.0]], &Device::Cpu).unwrap();
        let bias: Vec<Vec<f32>> = causal_bias(Some(&mask), 1, 3, &Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(bias, vec![vec![0.0, inf, inf], vec![0.0, 0.0, inf], vec![0.0, 0.0, inf]]);
    }
}
