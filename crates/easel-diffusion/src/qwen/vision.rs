//! Qwen2.5-VL's vision tower: the image half of Qwen-Image-Edit's text encoder.
//!
//! Qwen-Image-Edit shows the source image to the Qwen2.5-VL language model, which reads it as
//! `<|image_pad|>` tokens whose embeddings this tower replaces. It follows transformers'
//! `Qwen2_5_VisionTransformerPretrainedModel` step by step, because the language model only
//! understands features made exactly that way:
//!
//! - patch embedding: a Conv3d whose kernel equals its stride (2 frames × 14 × 14), so one linear
//!   map (no bias) over each flattened patch, in the processor's `(C, T, 14, 14)` order;
//! - 2-D rotary embedding over each patch's (row, column), rotate-half, head dim split h | w;
//! - window attention: patches regrouped so each 112-px window (4×4 merge units at 14 px) is
//!   contiguous, attention within each window, except full attention (within each image) at
//!   `fullatt_block_indexes`;
//! - RMSNorm (eps 1e-6, f32 statistics), SwiGLU MLP with biases;
//! - the patch merger: RMSNorm, 2×2 neighbouring patches concatenated, MLP (exact GELU) to the
//!   language model's width, then the window order undone.
//!
//! Norms, rotary tables and softmax run in f32 whatever the weight dtype, as transformers does.
//! Weights live under `visual.*` (checkpoints before transformers 4.52) or `model.visual.*`.

use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder, linear};
use serde_json::Value;

/// The `vision_config` object of a Qwen2.5-VL `config.json`; missing keys take transformers'
/// defaults (`Qwen2_5_VLVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub window_size: usize,
    pub out_hidden_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub rope_theta: f64,
}

fn get_usize(v: &Value, key: &str, default: usize) -> Result<usize> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("vision_config.{key} must be a non-negative integer, found {x}")),
    }
}

impl VisionConfig {
    pub fn from_json(v: &Value) -> Result<Self> {
        ensure!(v.is_object(), "vision_config must be an object");
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            ensure!(act == "silu", "vision_config.hidden_act '{act}' is not supported (Qwen2.5-VL uses silu)");
        }
        // Released configs spell the channels `in_chans`; transformers writes `in_channels`.
        let in_channels = match v.get("in_channels") {
            Some(_) => get_usize(v, "in_channels", 3)?,
            None => get_usize(v, "in_chans", 3)?,
        };
        let fullatt_block_indexes = match v.get("fullatt_block_indexes") {
            None | Some(Value::Null) => vec![7, 15, 23, 31],
            Some(x) => serde_json::from_value(x.clone())
                .context("vision_config.fullatt_block_indexes must be a list of layer numbers")?,
        };
        let rope_theta = v
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let c = Self {
            depth: get_usize(v, "depth", 32)?,
            hidden_size: get_usize(v, "hidden_size", 3584)?,
            intermediate_size: get_usize(v, "intermediate_size", 3420)?,
            num_heads: get_usize(v, "num_heads", 16)?,
            in_channels,
            patch_size: get_usize(v, "patch_size", 14)?,
            temporal_patch_size: get_usize(v, "temporal_patch_size", 2)?,
            spatial_merge_size: get_usize(v, "spatial_merge_size", 2)?,
            window_size: get_usize(v, "window_size", 112)?,
            out_hidden_size: get_usize(v, "out_hidden_size", 3584)?,
            fullatt_block_indexes,
            rope_theta,
        };
        ensure!(
            c.num_heads > 0
                && c.hidden_size.is_multiple_of(c.num_heads)
                && (c.hidden_size / c.num_heads).is_multiple_of(4),
            "vision_config: hidden_size {} over num_heads {} must give a head size divisible by 4",
            c.hidden_size,
            c.num_heads
        );
        ensure!(c.spatial_merge_size > 0 && c.patch_size > 0, "vision_config: patch and merge sizes must be positive");
        ensure!(
            c.window_size >= c.patch_size * c.spatial_merge_size,
            "vision_config.window_size {} is smaller than one merge unit ({} px)",
            c.window_size,
            c.patch_size * c.spatial_merge_size
        );
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Values per flattened patch: channels × frames × patch².
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Patches per language-model token.
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }
}

/// One image's patch grid: frames (after temporal patching), rows and columns of 14-px patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl Grid {
    pub fn patches(self) -> usize {
        self.t * self.h * self.w
    }
}

/// Each patch's (row, column), in the processor's order: merge units row-major, the 2×2 patches
/// of a unit row-major inside it, repeated per frame.
pub fn positions(grids: &[Grid], merge: usize) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for g in grids {
        let mut frame = Vec::with_capacity(g.h * g.w);
        for bh in 0..g.h / merge {
            for bw in 0..g.w / merge {
                for i in 0..merge {
                    for j in 0..merge {
                        frame.push(((bh * merge + i) as u32, (bw * merge + j) as u32));
                    }
                }
            }
        }
        for _ in 0..g.t {
            out.extend_from_slice(&frame);
        }
    }
    out
}

/// Cumulative patch counts at each frame boundary: full attention sees one frame of one image.
pub fn frame_bounds(grids: &[Grid]) -> Vec<usize> {
    let mut out = vec![0];
    for g in grids {
        for _ in 0..g.t {
            out.push(out.last().copied().unwrap_or(0) + g.h * g.w);
        }
    }
    out
}

/// The window regrouping: the merge units in window order (row-major windows of
/// `window / merge / patch` units a side, each window row-major, the last ones cut short at the
/// image's edge), and the cumulative patch counts at each window boundary.
pub fn window_index(grids: &[Grid], merge: usize, window: usize, patch: usize) -> (Vec<usize>, Vec<usize>) {
    let side = window / merge / patch;
    let unit = merge * merge;
    let mut index = Vec::new();
    let mut bounds = vec![0usize];
    let mut offset = 0;
    for g in grids {
        let (lh, lw) = (g.h / merge, g.w / merge);
        // As transformers pads: a whole extra window when the side divides evenly, which stays empty.
        let (nh, nw) = ((lh + side - lh % side) / side, (lw + side - lw % side) / side);
        for t in 0..g.t {
            for wh in 0..nh {
                for ww in 0..nw {
                    let mut count = 0;
                    for r in wh * side..((wh + 1) * side).min(lh) {
                        for c in ww * side..((ww + 1) * side).min(lw) {
                            index.push(offset + t * lh * lw + r * lw + c);
                            count += 1;
                        }
                    }
                    let last = bounds.last().copied().unwrap_or(0);
                    // Empty windows repeat the boundary, which transformers removes (`unique_consecutive`).
                    if count > 0 {
                        bounds.push(last + count * unit);
                    }
                }
            }
        }
        offset += g.t * lh * lw;
    }
    (index, bounds)
}

struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))? })
    }

    /// Statistics in f32, eps 1e-6, cast back before the weight (transformers' order).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xf.broadcast_div(&(var + 1e-6)?.sqrt()?)?.to_dtype(dtype)?;
        Ok(y.broadcast_mul(&self.weight)?)
    }
}

struct Block {
    norm1: RmsNorm,
    norm2: RmsNorm,
    qkv: Linear,
    proj: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    heads: usize,
}

/// Rotary tables for one forward: `(N, head_dim / 2)` cos and sin, in window order.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// Query rows per attention chunk are chosen so one chunk's scores stay under this many f32s.
const SCORES: usize = 32 * 1024 * 1024;

/// Softmax attention over `(batch, L, d)` tensors, scores and softmax in f32, chunked over queries
/// so a full-image block never holds more than [`SCORES`] scores.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, l, _) = q.dims3()?;
    let kt = k.t()?.contiguous()?;
    let rows = (SCORES / (b * l).max(1)).clamp(1, l);
    let mut parts = Vec::with_capacity(l.div_ceil(rows));
    let mut s = 0;
    while s < l {
        let n = rows.min(l - s);
        let qc = q.narrow(1, s, n)?;
        let scores = (qc.matmul(&kt)?.to_dtype(DType::F32)? * scale)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        parts.push(p.matmul(v)?);
        s += n;
    }
    Ok(if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? })
}

impl Block {
    fn new(vb: VarBuilder, c: &VisionConfig) -> Result<Self> {
        let d = c.hidden_size;
        let m = vb.pp("mlp");
        Ok(Self {
            norm1: RmsNorm::new(vb.pp("norm1"), d)?,
            norm2: RmsNorm::new(vb.pp("norm2"), d)?,
            qkv: linear(d, 3 * d, vb.pp("attn.qkv"))?,
            proj: linear(d, d, vb.pp("attn.proj"))?,
            gate: linear(d, c.intermediate_size, m.pp("gate_proj"))?,
            up: linear(d, c.intermediate_size, m.pp("up_proj"))?,
            down: linear(c.intermediate_size, d, m.pp("down_proj"))?,
            heads: c.num_heads,
        })
    }

    /// `bounds`: cumulative sequence boundaries of the attention segments.
    fn forward(&self, x: &Tensor, rope: &Rope, bounds: &[usize]) -> Result<Tensor> {
        let (n, d) = x.dims2()?;
        let hd = d / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?.reshape((n, 3, self.heads, hd))?;
        // (1, heads, N, hd) for q, k, v; rotary in f32.
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv.narrow(1, i, 1)?.squeeze(1)?.transpose(0, 1)?.unsqueeze(0)?.contiguous()?)
        };
        let dtype = x.dtype();
        let q = candle_nn::rotary_emb::rope(&part(0)?.to_dtype(DType::F32)?, &rope.cos, &rope.sin)?.to_dtype(dtype)?;
        let k = candle_nn::rotary_emb::rope(&part(1)?.to_dtype(DType::F32)?, &rope.cos, &rope.sin)?.to_dtype(dtype)?;
        let v = part(2)?;
        let scale = 1.0 / (hd as f64).sqrt();
        // Consecutive segments of equal length run as one batch.
        let mut outs = Vec::new();
        let mut i = 0;
        while i + 1 < bounds.len() {
            let len = bounds[i + 1] - bounds[i];
            let mut j = i + 1;
            while j + 1 < bounds.len() && bounds[j + 1] - bounds[j] == len {
                j += 1;
            }
            let (start, count) = (bounds[i], j - i);
            let take = |t: &Tensor| -> Result<Tensor> {
                // (1, heads, count·len, hd) → (heads·count, len, hd)
                Ok(t.narrow(2, start, count * len)?.reshape((self.heads * count, len, hd))?)
            };
            let o = attend(&take(&q)?, &take(&k)?, &take(&v)?, scale)?;
            outs.push(o.reshape((1, self.heads, count * len, hd))?);
            i = j;
        }
        let o = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 2)? };
        let o = o.squeeze(0)?.transpose(0, 1)?.reshape((n, d))?;
        let x = (x + self.proj.forward(&o)?)?;
        let h = self.norm2.forward(&x)?;
        let mlp = self.down.forward(&(candle_nn::ops::silu(&self.gate.forward(&h)?)? * self.up.forward(&h)?)?)?;
        Ok((x + mlp)?)
    }
}

/// The vision tower: flattened patches in, one feature per 2×2 patches out.
pub struct VisionTower {
    config: VisionConfig,
    patch_embed: Linear,
    blocks: Vec<Block>,
    ln_q: RmsNorm,
    mlp0: Linear,
    mlp2: Linear,
    inv_freq: Vec<f32>,
    device: Device,
    dtype: DType,
}

/// The prefixes checkpoints store the tower under: `visual` (before transformers 4.52) or
/// `model.visual` (after).
const PREFIXES: [&str; 2] = ["visual", "model.visual"];

/// The prefix this checkpoint stores the tower under.
pub fn prefix(vb: &VarBuilder) -> Option<&'static str> {
    PREFIXES.into_iter().find(|p| vb.contains_tensor(&format!("{p}.patch_embed.proj.weight")))
}

/// Whether a tensor of the text encoder's files belongs to the vision tower.
pub fn is_tower_tensor(name: &str) -> bool {
    PREFIXES.iter().any(|p| name.strip_prefix(p).is_some_and(|rest| rest.starts_with('.')))
}

impl VisionTower {
    /// `vb` is the checkpoint's root; the tower's weights are found under either scheme.
    pub fn load(vb: VarBuilder, config: &VisionConfig) -> Result<Self> {
        let Some(p) = prefix(&vb) else {
            bail!("no vision tower in the text encoder's weights (neither visual.* nor model.visual.*)")
        };
        Self::new(vb.pp(p), config).with_context(|| format!("loading the vision tower ({p}.*)"))
    }

    /// `vb` already points at the tower (`…visual`).
    pub fn new(vb: VarBuilder, config: &VisionConfig) -> Result<Self> {
        let c = config;
        // The Conv3d weight (hidden, C, T, P, P) is the linear map over a flattened patch.
        let w = vb.get_with_hints(
            (c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size),
            "patch_embed.proj.weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let patch_embed = Linear::new(w.reshape((c.hidden_size, c.patch_dim()))?, None);
        let blocks = (0..c.depth).map(|i| Block::new(vb.pp(format!("blocks.{i}")), c)).collect::<Result<Vec<_>>>()?;
        let merged = c.hidden_size * c.merge_unit();
        let m = vb.pp("merger");
        let spatial = c.head_dim() / 2;
        // transformers: 1 / θ^(arange(0, spatial, 2) / spatial), in f32.
        let inv_freq =
            (0..spatial / 2).map(|k| (1.0 / c.rope_theta.powf((2 * k) as f64 / spatial as f64)) as f32).collect();
        Ok(Self {
            config: c.clone(),
            patch_embed,
            blocks,
            ln_q: RmsNorm::new(m.pp("ln_q"), c.hidden_size)?,
            mlp0: linear(merged, merged, m.pp("mlp.0"))?,
            mlp2: linear(merged, c.out_hidden_size, m.pp("mlp.2"))?,
            inv_freq,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    fn rope(&self, grids: &[Grid], order: &[usize]) -> Result<Rope> {
        let unit = self.config.merge_unit();
        let pos = positions(grids, self.config.spatial_merge_size);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(pos.len() * half * 2);
        let mut sin = Vec::with_capacity(pos.len() * half * 2);
        for &u in order {
            for &(r, c) in &pos[u * unit..(u + 1) * unit] {
                for p in [r, c] {
                    for &f in &self.inv_freq {
                        let a = f64::from(p as f32 * f);
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
            }
        }
        let n = pos.len();
        Ok(Rope {
            cos: Tensor::from_vec(cos, (n, half * 2), &self.device)?,
            sin: Tensor::from_vec(sin, (n, half * 2), &self.device)?,
        })
    }

    /// `patches`: `(Σ t·h·w, patch_dim)` as the processor lays them out, images one after another.
    /// Returns `(Σ t·h·w / 4, out_hidden_size)`: each image's features in its merge-unit order,
    /// images one after another.
    pub fn forward(&self, patches: &Tensor, grids: &[Grid]) -> Result<Tensor> {
        let c = &self.config;
        let unit = c.merge_unit();
        let n: usize = grids.iter().map(|g| g.patches()).sum();
        for g in grids {
            ensure!(
                g.h % c.spatial_merge_size == 0 && g.w % c.spatial_merge_size == 0 && g.t > 0,
                "an image grid of {}×{} patches does not divide into {m}×{m} merge units",
                g.h,
                g.w,
                m = c.spatial_merge_size
            );
        }
        ensure!(
            patches.dims() == [n, c.patch_dim()],
            "the vision tower expects ({n}, {}) patches for grids {grids:?}, got {:?}",
            c.patch_dim(),
            patches.dims()
        );
        let (order, window_bounds) = window_index(grids, c.spatial_merge_size, c.window_size, c.patch_size);
        let full_bounds = frame_bounds(grids);
        let idx = Tensor::from_vec(order.iter().map(|&i| i as u32).collect::<Vec<_>>(), order.len(), &self.device)?;
        let x = self.patch_embed.forward(&patches.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        let d = c.hidden_size;
        let mut x = x.reshape((n / unit, unit * d))?.index_select(&idx, 0)?.reshape((n, d))?;
        let rope = self.rope(grids, &order)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let bounds = if c.fullatt_block_indexes.contains(&i) { &full_bounds } else { &window_bounds };
            x = b.forward(&x, &rope, bounds)?;
        }
        let merged = self.ln_q.forward(&x)?.reshape((n / unit, unit * d))?;
        let merged = self.mlp2.forward(&self.mlp0.forward(&merged)?.gelu_erf()?)?;
        let mut inverse = vec![0u32; order.len()];
        for (pos, &u) in order.iter().enumerate() {
            inverse[u] = pos as u32;
        }
        let inv = Tensor::from_vec(inverse, order.len(), &self.device)?;
        Ok(merged.index_select(&inv, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_merge_units() {
        let p = positions(&[Grid { t: 1, h: 2, w: 4 }], 2);
        assert_eq!(p, vec![(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]);
    }

    /// transformers' `get_vision_window_index` for grids (1, 6, 10) and (1, 4, 4), window 56,
    /// patch 14, merge 2 (2×2-unit windows), printed by the parity venv.
    #[test]
    fn window_index_matches_transformers() {
        let grids = [Grid { t: 1, h: 6, w: 10 }, Grid { t: 1, h: 4, w: 4 }];
        let (idx, bounds) = window_index(&grids, 2, 56, 14);
        assert_eq!(idx, vec![0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
        assert_eq!(bounds, vec![0, 16, 32, 40, 48, 56, 60, 76]);
        assert_eq!(frame_bounds(&grids), vec![0, 60, 76]);
    }

    #[test]
    fn config_reads_released_names_and_defaults() {
        let c = VisionConfig::from_json(&serde_json::json!({
            "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
            "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2
        }))
        .unwrap();
        assert_eq!((c.in_channels, c.head_dim(), c.patch_dim(), c.rope_theta), (3, 80, 1176, 10_000.0));
        let bad = VisionConfig::from_json(&serde_json::json!({"hidden_act": "gelu"})).unwrap_err();
        assert!(format!("{bad}").contains("hidden_act"), "{bad}");
    }
}
