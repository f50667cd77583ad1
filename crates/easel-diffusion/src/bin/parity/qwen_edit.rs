//! `qwen-edit-dump`: what Easel computes for one Qwen-Image-Edit edit, component by component,
//! for `scripts/parity/qwen_edit.py` to compare with transformers and diffusers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use easel_diffusion::Family;
use easel_diffusion::pipeline::{Generate, Hooks, InitImage, Preview};
use easel_diffusion::qwen::QwenModel;
use easel_diffusion::qwen::edit::{self, EDIT_DROP};
use easel_diffusion::qwen::pipeline::{self as qp};
use easel_diffusion::scheduler::SchedulerKind;

#[derive(clap::Args)]
pub struct QwenEditArgs {
    #[arg(long)]
    model: PathBuf,
    /// The source image (PNG).
    #[arg(long)]
    image: PathBuf,
    #[arg(long, default_value = "make it blue")]
    prompt: String,
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
    width: usize,
    #[arg(long, default_value_t = 32)]
    height: usize,
    /// The area the source is brought to (diffusers: 1024²).
    #[arg(long, default_value_t = edit::CONDITION_PIXELS)]
    condition_pixels: u64,
    #[arg(long)]
    out: PathBuf,
}

/// Template ids with the image tokens expanded (`ids`, `neg_ids`), the vision features, the
/// prompt embeddings, the packed condition latents, the packed noise, the final latents
/// (unpacked, normalised) and their decoded image.
pub fn dump(a: QwenEditArgs) -> Result<()> {
    let dev = Device::Cpu;
    let mut model = QwenModel::load(&a.model, Family::QwenImageEdit, &dev, DType::F32, None, None)?;
    model.condition_pixels = a.condition_pixels;
    let image = Arc::new(image::open(&a.image)?);
    let g = Generate {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative.clone(),
        width: a.width,
        height: a.height,
        seeds: vec![a.seed],
        steps: a.steps,
        guidance_scale: a.guidance,
        scheduler: SchedulerKind::Euler,
        init: Some(InitImage { image: Arc::clone(&image), mask: None, strength: 1.0 }),
        partials: 0,
        preview: Preview::Vae,
    };
    let cfg = model.processor.clone().unwrap_or_default();
    let mut out = HashMap::new();
    let source = edit::prepare_source(&image, model.condition_pixels, &cfg, &dev)?;
    out.insert("source_size".to_string(), Tensor::new(&[i64::from(source.width), i64::from(source.height)], &dev)?);
    let tower = model.vision.as_ref().expect("edit loads the vision tower").get()?;
    let dim = tower.config().patch_dim();
    let patches = Tensor::from_vec(source.patches.clone(), (source.patches.len() / dim, dim), &dev)?;
    let features = tower.forward(&patches, &[source.grid])?;
    let n = features.dim(0)?;
    let to_t = |v: Vec<u32>| Tensor::new(v.into_iter().map(i64::from).collect::<Vec<_>>().as_slice(), &dev);
    out.insert("ids".to_string(), to_t(edit::template_ids(&model.tokenizer, &a.prompt, n)?.0)?);
    out.insert("neg_ids".to_string(), to_t(edit::template_ids(&model.tokenizer, qp::negative_prompt(&g), n)?.0)?);
    out.insert("patches".to_string(), patches);
    out.insert("features".to_string(), features);
    let (prompts, condition) = edit::prepare(&model, &g, &image, model.condition_pixels, &cfg)?;
    out.insert("prompt_embeds".to_string(), prompts.cond.clone());
    if let Some(u) = &prompts.uncond {
        out.insert("neg_prompt_embeds".to_string(), u.clone());
    }
    out.insert("cond_tokens".to_string(), condition.tokens.clone());
    let noise = qp::initial_noise(&model, &g)?;
    out.insert("noise".to_string(), noise.clone());
    let never = || false;
    let mut hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
    let latents =
        qp::denoise(&model, &g, &prompts, Some(&condition), noise, &mut hooks).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    out.insert("image".to_string(), model.vae.decode(&latents)?);
    out.insert("latents".to_string(), latents);
    out.insert("drop".to_string(), Tensor::new(&[EDIT_DROP as i64], &dev)?);
    candle_core::safetensors::save(&out, &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
