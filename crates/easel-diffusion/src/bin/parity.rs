//! Dumps what Easel computes for one generation, for `scripts/parity/parity.py` to compare with
//! diffusers: the token ids, the initial noise, the final latents and the decoded image (as
//! floats in [-1, 1], before quantisation), in one safetensors file.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use easel_diffusion::Family;
use easel_diffusion::config::{self, DeviceSpec};
use easel_diffusion::model::Model;
use easel_diffusion::noise::BatchNoise;
use easel_diffusion::pipeline::{self, Generate, Hooks, Preview};
use easel_diffusion::scheduler::SchedulerKind;

#[path = "parity/qwen.rs"]
mod qwen;
#[path = "parity/qwen_edit.rs"]
mod qwen_edit;

#[derive(Parser)]
enum Cmd {
    /// `easel models ...` (create-random, list, pull), so the script needs no server binary.
    #[command(flatten)]
    Models(easel_diffusion::cli::ModelsCommand),
    /// Run one generation and dump its tensors.
    Dump(Args),
    /// Run one FLUX.1 generation and dump its tensors, component by component (`scripts/parity/flux.py`).
    FluxDump(FluxArgs),
    /// Write only FLUX.1's CLIP (with tokenizer) and VAE with random weights (`flux.py --parts`:
    /// full size without the 12 B transformer and the 4.8 B T5).
    FluxPartsCreate(PartsCreateArgs),
    /// CLIP's ids and pooled output, a VAE decode of seeded latents and the encode of that image.
    FluxPartsDump(PartsArgs),
    /// Run one Qwen-Image generation and dump its tensors, component by component (`scripts/parity/qwen.py`).
    QwenDump(qwen::QwenArgs),
    /// Run one Qwen-Image-Edit edit and dump its tensors (`scripts/parity/qwen_edit.py`).
    QwenEditDump(qwen_edit::QwenEditArgs),
    /// Decode latents with a tiny autoencoder and encode its image back (`scripts/parity/taesd.py`).
    Taesd(TaesdArgs),
}

#[derive(clap::Args)]
struct TaesdArgs {
    /// The AutoencoderTiny folder; with `--create`, a random one is written there first.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, value_enum)]
    create: Option<easel_diffusion::random::Scale>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A safetensors file with `latents` (b, 4, h, w).
    #[arg(long)]
    latents: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    family: String,
    #[arg(long, default_value = "a photo of a cat")]
    prompt: String,
    #[arg(long, default_value = "")]
    negative: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    steps: usize,
    #[arg(long, default_value_t = 0.0)]
    guidance: f64,
    /// euler, euler_ancestral, ddim, dpmpp_2m_karras
    #[arg(long, default_value = "euler")]
    scheduler: String,
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32`, `f16` or `bf16`, on any device (unset: the family's default there, what `easel
    /// serve` uses); e.g. f16 on the CPU to study half precision without a GPU.
    #[arg(long)]
    dtype: Option<String>,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    match Cmd::parse() {
        Cmd::Models(cmd) => tokio::runtime::Runtime::new()?.block_on(easel_diffusion::cli::run(cmd)),
        Cmd::Dump(a) => dump(a),
        Cmd::Taesd(a) => taesd(a),
        Cmd::FluxDump(a) => flux_dump(a),
        Cmd::FluxPartsCreate(a) => flux_parts_create(a),
        Cmd::FluxPartsDump(a) => flux_parts_dump(a),
        Cmd::QwenDump(a) => qwen::dump(a),
        Cmd::QwenEditDump(a) => qwen_edit::dump(a),
    }
}

fn taesd(a: TaesdArgs) -> Result<()> {
    if let Some(scale) = a.create {
        easel_diffusion::random::create_tiny_vae(&a.dir, scale, a.seed)?;
    }
    let dev = Device::Cpu;
    let vae = easel_diffusion::taesd::TinyVaeLayout::read(&a.dir)?.load(DType::F32, &dev)?;
    let latents = candle_core::safetensors::load(&a.latents, &dev)?
        .remove("latents")
        .ok_or_else(|| anyhow::anyhow!("no `latents` in {}", a.latents.display()))?;
    let image = vae.decode(&latents)?;
    let encoded = vae.encode(&image)?;
    let out = HashMap::from([("image".to_string(), image), ("encoded".to_string(), encoded)]);
    candle_core::safetensors::save(&out, &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn dump(a: Args) -> Result<()> {
    let family = Family::parse(&a.family)?;
    let scheduler: SchedulerKind = serde_json::from_value(serde_json::Value::String(a.scheduler.clone()))?;
    let (spec, default) = DeviceSpec::with_dtype(family, &a.device, None)?;
    let dtype = a.dtype.as_deref().map_or(Ok(default), config::parse_dtype)?;
    let dev = spec.open()?;
    let model = Model::load(&a.model, family, &dev, dtype, None)?;
    let g = Generate {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative.clone(),
        width: a.size,
        height: a.size,
        seeds: vec![a.seed],
        steps: a.steps,
        guidance_scale: a.guidance,
        scheduler,
        init: None,
        partials: 0,
        preview: Preview::Approx,
    };
    let mut out = HashMap::new();
    let f = model.latent_factor();
    let c = model.vae.config().latent_channels;
    out.insert("noise".to_string(), BatchNoise::new(&[a.seed]).draw((c, a.size / f, a.size / f), &dev)?);
    let ids = model.text.tokenizer.encode(&a.prompt)?.ids;
    out.insert("input_ids".to_string(), Tensor::new(ids.as_slice(), &dev)?);
    if let Some(t2) = &model.text2 {
        let ids = t2.tokenizer.encode(&a.prompt)?.ids;
        out.insert("input_ids_2".to_string(), Tensor::new(ids.as_slice(), &dev)?);
    }
    let never = || false;
    let mut ignore = |_| {};
    let mut hooks = Hooks { cancelled: &never, partial: &mut ignore, step: &mut |_, _| {} };
    let latents = pipeline::denoise(&model, &g, &mut hooks).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let image = model.vae.decode(&latents)?;
    out.insert("latents".to_string(), latents);
    out.insert("image".to_string(), image);
    // Saved from the host, floats as f32 whatever the dtype the model ran in.
    let host = |t: Tensor| -> Result<Tensor> {
        let t = t.to_device(&Device::Cpu)?;
        Ok(if t.dtype().is_float() { t.to_dtype(DType::F32)? } else { t })
    };
    let out = out.into_iter().map(|(k, t)| Ok((k, host(t)?))).collect::<Result<HashMap<_, _>>>()?;
    candle_core::safetensors::save(&out, &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

#[derive(clap::Args)]
struct FluxArgs {
    #[arg(long)]
    model: PathBuf,
    /// flux-schnell or flux-dev
    #[arg(long)]
    family: String,
    #[arg(long, default_value = "a photo of a cat")]
    prompt: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Dev's distilled guidance (schnell ignores it).
    #[arg(long, default_value_t = 3.5)]
    guidance: f32,
    #[arg(long, default_value_t = 32)]
    size: usize,
    #[arg(long)]
    out: PathBuf,
}

/// The token ids of both encoders, their outputs (`t5`, `pooled`), the packed seeded noise, the
/// first step's velocity, the sigmas, the final packed latents, their decoded image and that
/// image encoded again (`vae_encoded`, the shifted and scaled posterior mean).
fn flux_dump(a: FluxArgs) -> Result<()> {
    use easel_diffusion::flow::pack;
    use easel_diffusion::flux::{FluxModel, pipeline as flux};

    let family = Family::parse(&a.family)?;
    let dev = Device::Cpu;
    let model = FluxModel::load(&a.model, family, &dev, DType::F32, None)?;
    let (clip_ids, t5_ids) = model.text.ids(&a.prompt, model.max_sequence_length)?;
    let prompt = model.text.encode_ids(&clip_ids, &t5_ids)?;
    let size = flux::latent_size(&model, a.size, a.size)?;
    let c = model.transformer_config.latent_channels();
    let noise = pack(&BatchNoise::new(&[a.seed]).draw((c, size.0, size.1), &dev)?)?;
    let schedule = flux::schedule(&model, a.steps, size);
    let rope = flux::rope(&model, t5_ids.len(), size)?;
    let guidance = model.transformer_config.guidance_embeds.then_some([a.guidance]);
    let velocity = model.transformer.get()?.forward(
        &noise,
        &prompt.t5,
        &prompt.pooled,
        &[schedule.model_t(0)],
        guidance.as_ref().map(|g| g.as_slice()),
        &rope,
    )?;
    let s = flux::Sampling { prompt: &prompt, schedule: &schedule, start: 0, guidance: a.guidance, size, partials: 0 };
    let never = || false;
    let mut hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
    let latents = flux::sample(&model, noise.clone(), &s, &mut hooks).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let image = flux::decode(&model, &latents, size)?;
    let encoded = model.vae.encode(&image)?;
    let mut out = HashMap::new();
    out.insert("clip_ids".to_string(), Tensor::new(clip_ids.as_slice(), &dev)?);
    out.insert("t5_ids".to_string(), Tensor::new(t5_ids.as_slice(), &dev)?);
    out.insert("t5".to_string(), prompt.t5.clone());
    out.insert("pooled".to_string(), prompt.pooled.clone());
    out.insert("noise".to_string(), noise);
    out.insert("velocity".to_string(), velocity);
    out.insert("sigmas".to_string(), Tensor::new(schedule.sigmas(), &dev)?);
    out.insert("latents".to_string(), latents);
    out.insert("image".to_string(), image);
    out.insert("vae_encoded".to_string(), encoded);
    candle_core::safetensors::save(&out, &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

#[derive(clap::Args)]
struct PartsCreateArgs {
    #[arg(long, value_enum)]
    scale: easel_diffusion::random::Scale,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
}

fn flux_parts_create(a: PartsCreateArgs) -> Result<()> {
    use easel_diffusion::flux::random_text;
    let clip = random_text::write_clip(&a.out, a.scale, a.seed)?;
    let vae = random_text::write_vae(&a.out, a.scale, a.seed)?;
    println!("wrote {} ({} and {} parameters, random)", a.out.display(), clip.1, vae.1);
    Ok(())
}

#[derive(clap::Args)]
struct PartsArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "a photo of a cat")]
    prompt: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pixels of the decoded image.
    #[arg(long, default_value_t = 128)]
    size: usize,
    #[arg(long)]
    out: PathBuf,
}

fn flux_parts_dump(a: PartsArgs) -> Result<()> {
    use easel_diffusion::clip::ClipText;
    use easel_diffusion::model::{read_json, weights_file};
    use easel_diffusion::tokenizer::ClipTokenizer;
    use easel_diffusion::vae::{Vae, VaeConfig};
    use easel_diffusion::weights::var_builder;

    let dev = Device::Cpu;
    let cfg = serde_json::from_value(read_json(&a.model.join("text_encoder/config.json"))?)?;
    let clip =
        ClipText::new(var_builder(&weights_file(&a.model.join("text_encoder"), "model")?, DType::F32, &dev)?, &cfg)?;
    let tok = ClipTokenizer::load(&a.model.join("tokenizer"))?;
    let ids = tok.encode(&a.prompt)?.ids;
    let pooled = clip.forward(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?, tok.eos())?.pooled;
    let vcfg = VaeConfig::from_json(&read_json(&a.model.join("vae/config.json"))?)?;
    let vfile = weights_file(&a.model.join("vae"), "diffusion_pytorch_model")?;
    let vae = Vae::new(var_builder(&vfile, DType::F32, &dev)?, &vcfg)?;
    let f = vcfg.scale_factor();
    let latents = BatchNoise::new(&[a.seed]).draw((vcfg.latent_channels, a.size / f, a.size / f), &dev)?;
    let image = vae.decode(&latents)?;
    let encoded = vae.encode(&image)?;
    let mut out = HashMap::new();
    out.insert("clip_ids".to_string(), Tensor::new(ids.as_slice(), &dev)?);
    out.insert("pooled".to_string(), pooled);
    out.insert("latents".to_string(), latents);
    out.insert("image".to_string(), image);
    out.insert("vae_encoded".to_string(), encoded);
    candle_core::safetensors::save(&out, &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
