//! `qwen-dump`: what Easel computes for one Qwen-Image generation, component by component, for
//! `scripts/parity/qwen.py` to compare with diffusers (and, for the tiny model, for the golden
//! fixtures of `tests/golden.rs`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use easel_diffusion::Family;
use easel_diffusion::flow::FlowSchedule;
use easel_diffusion::pipeline::{Generate, Hooks, Preview};
use easel_diffusion::qwen::pipeline::{self as qp, Prompts};
use easel_diffusion::qwen::text::{T2I_DROP, T2I_TEMPLATE, TOKENIZER_MAX};
use easel_diffusion::qwen::transformer::{ImageShape, TextInput};
use easel_diffusion::qwen::{FlowPreset, QwenModel};
use easel_diffusion::scheduler::SchedulerKind;

#[derive(clap::Args)]
pub struct QwenArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "dance monkey")]
    prompt: String,
    /// The negative prompt (`true_cfg_scale` > 1 guides with it; empty is sent as " ").
    #[arg(long, default_value = "")]
    negative: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// `true_cfg_scale`.
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// `lightning` replaces the folder's scheduler config.
    #[arg(long)]
    preset: Option<String>,
    #[arg(long)]
    out: PathBuf,
}

/// Template ids (`ids`, `neg_ids`), prompt embeddings, the packed noise, the sigmas, the first
/// step's velocity, the velocity of a padded batch of [prompt, negative] with its key mask, the
/// final latents (unpacked, normalised), their decoded image and that image encoded again.
pub fn dump(a: QwenArgs) -> Result<()> {
    let dev = Device::Cpu;
    let preset = a.preset.as_deref().map(|p| serde_json::from_value::<FlowPreset>(p.into())).transpose()?;
    let model = QwenModel::load(&a.model, Family::QwenImage, &dev, DType::F32, preset, None)?;
    let g = Generate {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative.clone(),
        width: a.size,
        height: a.size,
        seeds: vec![a.seed],
        steps: a.steps,
        guidance_scale: a.guidance,
        scheduler: SchedulerKind::Euler,
        init: None,
        partials: 0,
        preview: Preview::Vae,
    };
    let mut out = HashMap::new();
    let ids = |p: &str| model.tokenizer.encode(&T2I_TEMPLATE.replace("{}", p), TOKENIZER_MAX + T2I_DROP);
    let to_t = |v: Vec<u32>| Tensor::new(v.into_iter().map(i64::from).collect::<Vec<_>>().as_slice(), &dev);
    out.insert("ids".to_string(), to_t(ids(&a.prompt)?)?);
    out.insert("neg_ids".to_string(), to_t(ids(qp::negative_prompt(&g))?)?);
    let prompts = qp::encode(&model, &Generate { guidance_scale: 2.0, ..clone_generate(&g) })?;
    let neg = prompts.uncond.clone().expect("encoded with guidance");
    out.insert("prompt_embeds".to_string(), prompts.cond.clone());
    out.insert("neg_prompt_embeds".to_string(), neg.clone());
    let noise = qp::initial_noise(&model, &g)?;
    out.insert("noise".to_string(), noise.clone());
    let (h, w) = qp::latent_size(&model, &g)?;
    let n = (h / 2) * (w / 2);
    let sched = FlowSchedule::new(&model.flow, a.steps, model.flow.mu(n));
    out.insert("sigmas".to_string(), Tensor::new(sched.sigmas(), &dev)?);
    let shapes = [ImageShape { frames: 1, rows: h / 2, cols: w / 2 }];
    let t0 = sched.model_t(0);
    let v0 =
        model.transformer.get()?.forward(&noise, TextInput { embeds: &prompts.cond, mask: None }, &[t0], &shapes)?;
    out.insert("velocity0".to_string(), v0);
    // A padded batch: [prompt, negative], the shorter zero-padded, with the key mask.
    let (lc, ln) = (prompts.cond.dim(1)?, neg.dim(1)?);
    let len = lc.max(ln);
    let pad = |t: &Tensor, l: usize| t.pad_with_zeros(1, 0, len - l);
    let embeds = Tensor::cat(&[pad(&prompts.cond, lc)?, pad(&neg, ln)?], 0)?;
    let mask: Vec<f32> = [lc, ln].iter().flat_map(|&l| (0..len).map(move |i| if i < l { 1.0 } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (2, len), &dev)?;
    let batch = Tensor::cat(&[&noise, &noise], 0)?;
    let vm = model.transformer.get()?.forward(
        &batch,
        TextInput { embeds: &embeds, mask: Some(&mask) },
        &[t0, t0],
        &shapes,
    )?;
    out.insert("velocity_masked".to_string(), vm);
    out.insert("mask".to_string(), mask);
    let never = || false;
    let mut hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
    let run = Prompts { cond: prompts.cond, uncond: qp::cfg_scale(&g).map(|_| neg) };
    let latents = qp::denoise(&model, &g, &run, None, noise, &mut hooks).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let image = model.vae.decode(&latents)?;
    out.insert("vae_encoded".to_string(), model.vae.encode(&image)?);
    out.insert("latents".to_string(), latents.clone());
    out.insert("packed_latents".to_string(), easel_diffusion::flow::pack(&latents)?);
    out.insert("image".to_string(), image);
    candle_core::safetensors::save(&out, &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn clone_generate(g: &Generate) -> Generate {
    Generate {
        prompt: g.prompt.clone(),
        negative_prompt: g.negative_prompt.clone(),
        width: g.width,
        height: g.height,
        seeds: g.seeds.clone(),
        steps: g.steps,
        guidance_scale: g.guidance_scale,
        scheduler: g.scheduler,
        init: None,
        partials: g.partials,
        preview: g.preview,
    }
}
