//! `create-random`: a randomly initialised model in the diffusers layout.
//!
//! Tests need real folders that go through the real loading path, and benchmarks need the real
//! architecture sizes (speed does not depend on weight values). This writes every config a loader
//! reads, safetensors built by running the model constructors against a seeded initialiser (so a
//! seed gives byte-identical files), and a CLIP tokenizer. The weights are random: such a model
//! makes noise, never pictures, and `random_model_info.json` says so.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::{Value, json};

use crate::clip::{ClipConfig, ClipText};
use crate::family::Family;
use crate::taesd::{TinyVae, TinyVaeConfig};
use crate::unet::{UNet, UNetConfig};
use crate::vae::{Vae, VaeConfig};

/// The file that marks a folder's weights as random; the server warns when it serves one.
pub const INFO_FILE: &str = "random_model_info.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// A few hundred thousand parameters per component: for tests (images of 64 px).
    Tiny,
    /// The family's published sizes: for benchmarks (gigabytes).
    Full,
}

/// Hands out seeded random tensors to model constructors and remembers them for saving.
struct RandomInit {
    seed: u64,
    made: Mutex<HashMap<String, Tensor>>,
    /// Names the constructors may probe for (`contains_tensor`) and should find.
    claims: fn(&str) -> bool,
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

impl SimpleBackend for RandomInit {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ name_hash(name));
        let data: Vec<f32> = match h {
            Init::Const(v) => vec![v as f32; n],
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| {
                    let z: f32 = StandardNormal.sample(&mut rng);
                    mean as f32 + stdev as f32 * z
                })
                .collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo as f32..up as f32)).collect(),
            Init::Kaiming { .. } => {
                // Unit gain keeps deep random stacks from overflowing.
                let fan_in: usize = s.dims().iter().skip(1).product::<usize>().max(1);
                let std = (1.0 / fan_in as f64).sqrt() as f32;
                (0..n)
                    .map(|_| {
                        let z: f32 = StandardNormal.sample(&mut rng);
                        std * z
                    })
                    .collect()
            }
        };
        let t = Tensor::from_vec(data, s, &Device::Cpu)?;
        self.made.lock().expect("init lock").insert(name.to_string(), t.clone());
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random init needs a shape for {name}")
    }

    /// candle's VAE attention picks diffusers' current names (`to_q`...) only when they exist;
    /// claiming them makes the random model use those names, as diffusers writes them.
    fn contains_tensor(&self, name: &str) -> bool {
        (self.claims)(name)
    }
}

fn diffusers_attention_names(name: &str) -> bool {
    name.ends_with("to_q.weight")
}

/// Builds one component with random weights and writes its safetensors; returns the parameter count.
pub(crate) fn write_component(file: &Path, seed: u64, build: impl FnOnce(VarBuilder) -> Result<()>) -> Result<usize> {
    write_component_claiming(file, seed, diffusers_attention_names, build)
}

/// [`write_component`] where `claims` says which probed names exist (so a constructor that
/// looks for one of several names picks the one the reference library writes).
pub(crate) fn write_component_claiming(
    file: &Path,
    seed: u64,
    claims: fn(&str) -> bool,
    build: impl FnOnce(VarBuilder) -> Result<()>,
) -> Result<usize> {
    let init = std::sync::Arc::new(RandomInit { seed, made: Mutex::new(HashMap::new()), claims });
    struct Shared(std::sync::Arc<RandomInit>);
    impl SimpleBackend for Shared {
        fn get(&self, s: Shape, n: &str, h: Init, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get(s, n, h, d, dev)
        }
        fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(n, d, dev)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(init.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    let made = std::mem::take(&mut *init.made.lock().expect("init lock"));
    let params = made.values().map(|t| t.elem_count()).sum();
    candle_core::safetensors::save(&made, file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(params)
}

pub(crate) fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

struct Spec {
    unet: Value,
    vae: Value,
    text: Value,
    text2: Option<Value>,
    scheduler: Value,
}

#[expect(clippy::too_many_arguments, reason = "one argument per field of the CLIP config it writes")]
pub(crate) fn clip_json(
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    act: &str,
    proj: usize,
    with_projection: bool,
) -> Value {
    json!({
        "_name_or_path": "easel-random",
        "architectures": [if with_projection { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
        "model_type": "clip_text_model",
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "max_position_embeddings": 77,
        "hidden_act": act, "layer_norm_eps": 1e-5, "projection_dim": proj,
        "bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": 1,
        "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
        "torch_dtype": "float32"
    })
}

fn unet_json(family: Family, scale: Scale) -> Value {
    let in_channels = if family.is_inpaint() { 9 } else { 4 };
    let xl = family.is_xl();
    let sd2 = matches!(family, Family::Sd21 | Family::Sd2Inpaint | Family::SdTurbo);
    let (channels, down, heads, depth, cross, layers, groups): (
        Vec<usize>,
        Vec<&str>,
        Value,
        Value,
        usize,
        usize,
        usize,
    ) = match (scale, xl) {
        (Scale::Full, false) => (
            vec![320, 640, 1280, 1280],
            vec!["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            if sd2 { json!([5, 10, 20, 20]) } else { json!(8) },
            json!(1),
            if sd2 { 1024 } else { 768 },
            2,
            32,
        ),
        (Scale::Full, true) => (
            vec![320, 640, 1280],
            vec!["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            json!([5, 10, 20]),
            json!([1, 2, 10]),
            2048,
            2,
            32,
        ),
        (Scale::Tiny, false) => {
            (vec![32, 64], vec!["CrossAttnDownBlock2D", "DownBlock2D"], json!([2, 4]), json!(1), 32, 1, 8)
        }
        (Scale::Tiny, true) => {
            (vec![32, 64], vec!["DownBlock2D", "CrossAttnDownBlock2D"], json!([2, 4]), json!([1, 2]), 64, 1, 8)
        }
    };
    let up: Vec<String> = down.iter().rev().map(|d| d.replace("Down", "Up")).collect();
    let mut v = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "attention_head_dim": heads,
        "block_out_channels": channels,
        "center_input_sample": false,
        "cross_attention_dim": cross,
        "down_block_types": down,
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": layers,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-5,
        "norm_num_groups": groups,
        "out_channels": 4,
        "sample_size": match (scale, xl) { (Scale::Tiny, _) => 8, (_, true) => 128, _ if sd2 => 96, _ => 64 },
        "transformer_layers_per_block": depth,
        "up_block_types": up,
        "upcast_attention": sd2,
        "use_linear_projection": sd2 || xl,
    });
    if xl {
        let (time_dim, pooled) = match scale {
            Scale::Full => (256, 1280),
            Scale::Tiny => (8, 32),
        };
        v["addition_embed_type"] = json!("text_time");
        v["addition_time_embed_dim"] = json!(time_dim);
        v["projection_class_embeddings_input_dim"] = json!(pooled + 6 * time_dim);
    }
    v
}

fn spec(family: Family, scale: Scale) -> Spec {
    let xl = family.is_xl();
    let sd2 = matches!(family, Family::Sd21 | Family::Sd2Inpaint | Family::SdTurbo);
    let (vae_channels, vae_layers, vae_groups) = match scale {
        Scale::Full => (vec![128, 256, 512, 512], 2, 32),
        Scale::Tiny => (vec![8, 8, 16, 16], 1, 4),
    };
    let vae = json!({
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.42.1", "act_fn": "silu",
        "block_out_channels": vae_channels,
        "down_block_types": vec!["DownEncoderBlock2D"; 4], "up_block_types": vec!["UpDecoderBlock2D"; 4],
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": vae_layers,
        "norm_num_groups": vae_groups, "sample_size": if xl { 1024 } else { 512 },
        "scaling_factor": if xl { 0.13025 } else { 0.18215 },
        "force_upcast": xl
    });
    let (text, text2) = match (scale, xl, sd2) {
        (Scale::Full, false, false) => (clip_json(49408, 768, 3072, 12, 12, "quick_gelu", 768, false), None),
        (Scale::Full, false, true) => (clip_json(49408, 1024, 4096, 23, 16, "gelu", 512, false), None),
        (Scale::Full, true, _) => (
            clip_json(49408, 768, 3072, 12, 12, "quick_gelu", 768, false),
            Some(clip_json(49408, 1280, 5120, 32, 20, "gelu", 1280, true)),
        ),
        (Scale::Tiny, false, _) => {
            (clip_json(1000, 32, 64, 2, 4, if sd2 { "gelu" } else { "quick_gelu" }, 32, false), None)
        }
        (Scale::Tiny, true, _) => (
            clip_json(1000, 32, 64, 2, 4, "quick_gelu", 32, false),
            Some(clip_json(1000, 32, 64, 2, 4, "gelu", 32, true)),
        ),
    };
    let mut scheduler = json!({
        "_diffusers_version": "0.42.1",
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1, "skip_prk_steps": true,
        "prediction_type": if matches!(family, Family::Sd21) { "v_prediction" } else { "epsilon" },
        "timestep_spacing": if family.is_turbo() { "trailing" } else { "leading" },
    });
    scheduler["_class_name"] =
        json!(if family.is_turbo() { "EulerAncestralDiscreteScheduler" } else { "EulerDiscreteScheduler" });
    Spec { unet: unet_json(family, scale), vae, text, text2, scheduler }
}

/// CLIP's byte → printable character table, in CLIP's vocabulary order.
pub(crate) fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    cs.into_iter().map(|c| char::from_u32(c).expect("valid scalar")).collect()
}

/// Writes `tokenizer/`-style files: CLIP's byte alphabet, optional BPE merges, the two special
/// tokens at the top of the vocabulary.
pub fn write_tokenizer(
    dir: &Path,
    vocab_size: usize,
    pad_with_bang: bool,
    merges_file: Option<&Path>,
) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    tokens.extend(chars.iter().map(|c| format!("{c}</w>")));
    let room = vocab_size.checked_sub(514).context("vocab_size must be at least 514")?;
    let mut merges = Vec::new();
    if let Some(file) = merges_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read merges file {} (plain text, not .gz)", file.display()))?;
        for line in text.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()).take(room) {
            let (a, b) = line.split_once(' ').with_context(|| format!("bad merge line '{line}'"))?;
            tokens.push(format!("{a}{b}"));
            merges.push(format!("{a} {b}"));
        }
    }
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .chain([
            ("<|startoftext|>".to_string(), json!(vocab_size - 2)),
            ("<|endoftext|>".to_string(), json!(vocab_size - 1)),
        ])
        .collect();
    let special = |id: usize, content: &str| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": true});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(vocab_size - 2, "<|startoftext|>"), special(vocab_size - 1, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", vocab_size - 1], "cls": ["<|startoftext|>", vocab_size - 2],
            "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    write_json(&dir.join("tokenizer.json"), &tokenizer)?;
    write_json(&dir.join("vocab.json"), &tokenizer["model"]["vocab"])?;
    std::fs::write(dir.join("merges.txt"), format!("#version: 0.2\n{}\n", merges.join("\n")))?;
    let pad = if pad_with_bang { "!" } else { "<|endoftext|>" };
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": true,
                "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}),
    )?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}),
    )?;
    Ok(merges.len())
}

/// What `create` wrote.
pub struct Created {
    pub params: Vec<(String, usize)>,
    pub merges: usize,
}

/// Writes a random model of any family: the SD families here, the flow families in their own
/// modules. `merges_file` is for the SD families' CLIP tokenizer.
pub fn create_any(family: Family, scale: Scale, out: &Path, seed: u64, merges_file: Option<&Path>) -> Result<Created> {
    match family.kind() {
        crate::family::Kind::Sd => create(family, scale, out, seed, merges_file),
        crate::family::Kind::Flux => crate::flux::random::create(family, scale, out, seed),
        crate::family::Kind::Qwen => crate::qwen::random::create(family, scale, out, seed),
    }
}

/// Writes a random model of `family` at `scale` into `out` (which must be empty or absent).
pub fn create(family: Family, scale: Scale, out: &Path, seed: u64, merges_file: Option<&Path>) -> Result<Created> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    let s = spec(family, scale);
    let mut params = Vec::new();
    let mut component = |name: &str,
                         config_name: &str,
                         cfg: &Value,
                         weights: &str,
                         k: u64,
                         build: &dyn Fn(VarBuilder) -> Result<()>|
     -> Result<()> {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        write_json(&dir.join(config_name), cfg)?;
        let n = write_component(&dir.join(weights), seed.wrapping_mul(1000).wrapping_add(k), |vb| build(vb))?;
        params.push((name.to_string(), n));
        Ok(())
    };
    let tcfg: ClipConfig = serde_json::from_value(s.text.clone())?;
    component("text_encoder", "config.json", &s.text, "model.safetensors", 1, &|vb| {
        ClipText::new(vb, &tcfg).map(drop)
    })?;
    if let Some(t2) = &s.text2 {
        let cfg2: ClipConfig = serde_json::from_value(t2.clone())?;
        component("text_encoder_2", "config.json", t2, "model.safetensors", 2, &|vb| {
            ClipText::new(vb, &cfg2).map(drop)
        })?;
    }
    let ucfg = UNetConfig::from_json(&s.unet)?;
    component("unet", "config.json", &s.unet, "diffusion_pytorch_model.safetensors", 3, &|vb| {
        UNet::new(vb, &ucfg).map(drop)
    })?;
    let vcfg = VaeConfig::from_json(&s.vae)?;
    component("vae", "config.json", &s.vae, "diffusion_pytorch_model.safetensors", 4, &|vb| {
        Vae::new(vb, &vcfg).map(drop)
    })?;
    let sched = out.join("scheduler");
    std::fs::create_dir_all(&sched)?;
    write_json(&sched.join("scheduler_config.json"), &s.scheduler)?;
    let vocab = tcfg.vocab_size;
    let merges = write_tokenizer(&out.join("tokenizer"), vocab, family.pads_with_bang(), merges_file)?;
    if family.is_xl() {
        write_tokenizer(&out.join("tokenizer_2"), vocab, true, merges_file)?;
    }
    let class = if family.is_xl() { "StableDiffusionXLPipeline" } else { "StableDiffusionPipeline" };
    let mut index = json!({
        "_class_name": class, "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", s.scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    if family.is_xl() {
        index["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
        index["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
        index["force_zeros_for_empty_prompt"] = json!(true);
    } else {
        index["safety_checker"] = json!([null, null]);
        index["feature_extractor"] = json!([null, null]);
        index["requires_safety_checker"] = json!(false);
    }
    write_json(&out.join("model_index.json"), &index)?;
    write_info(out, family, scale, seed, &params, Some(merges))?;
    Ok(Created { params, merges })
}

/// Writes [`INFO_FILE`]: what marks a folder as random weights (`models list`, `/v1/models`'
/// `random_weights`), for every family. `merges`: the BPE merges of an SD tokenizer.
pub(crate) fn write_info(
    out: &Path,
    family: Family,
    scale: Scale,
    seed: u64,
    params: &[(String, usize)],
    merges: Option<usize>,
) -> Result<()> {
    let mut info = json!({
        "random": true,
        "warning": "The weights of this model are random. It makes noise, not pictures.",
        "created_by": "easel models create-random",
        "family": family.name(),
        "scale": format!("{scale:?}").to_lowercase(),
        "seed": seed,
        "parameters": params.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(m) = merges {
        info["bpe_merges"] = json!(m);
    }
    write_json(&out.join(INFO_FILE), &info)
}

/// diffusers' `AutoencoderTiny` config: TAESD's published widths (`full`) or 8 channels (`tiny`),
/// with the published block counts either way.
fn tiny_vae_json(scale: Scale) -> Value {
    let width = match scale {
        Scale::Full => 64,
        Scale::Tiny => 8,
    };
    json!({
        "_class_name": "AutoencoderTiny", "_diffusers_version": "0.42.1",
        "act_fn": "relu", "upsample_fn": "nearest", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "encoder_block_out_channels": vec![width; 4], "decoder_block_out_channels": vec![width; 4],
        "num_encoder_blocks": [1, 3, 3, 3], "num_decoder_blocks": [3, 3, 3, 1],
        "upsampling_scaling_factor": 2, "latent_magnitude": 3, "latent_shift": 0.5,
        "scaling_factor": 1.0, "shift_factor": 0.0, "force_upcast": false
    })
}

/// Writes a random tiny autoencoder (TAESD's layout) into `dir` (`create-random --tiny-vae` puts
/// it in the model's `vae_tiny/`); returns its parameter count.
pub fn create_tiny_vae(dir: &Path, scale: Scale, seed: u64) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let v = tiny_vae_json(scale);
    write_json(&dir.join("config.json"), &v)?;
    let cfg = TinyVaeConfig::from_json(&v)?;
    write_component(&dir.join("diffusion_pytorch_model.safetensors"), seed.wrapping_mul(1000).wrapping_add(5), |vb| {
        TinyVae::new(vb, &cfg).map(drop)
    })
}
