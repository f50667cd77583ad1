//! Dumps what Easel computes for one generation, for `scripts/parity/parity.py` to compare with
//! diffusers: the token ids, the initial noise, the final latents and the decoded image (as
//! floats in [-1, 1], before quantisation), in one safetensors file.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use easel_diffusion::Family;
use easel_diffusion::model::Model;
use easel_diffusion::noise::BatchNoise;
use easel_diffusion::pipeline::{self, Generate, Hooks, Preview};
use easel_diffusion::scheduler::SchedulerKind;

#[derive(Parser)]
enum Cmd {
    /// `easel models ...` (create-random, list, pull), so the script needs no server binary.
    #[command(flatten)]
    Models(easel_diffusion::cli::ModelsCommand),
    /// Run one generation and dump its tensors.
    Dump(Args),
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
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    match Cmd::parse() {
        Cmd::Models(cmd) => tokio::runtime::Runtime::new()?.block_on(easel_diffusion::cli::run(cmd)),
        Cmd::Dump(a) => dump(a),
        Cmd::Taesd(a) => taesd(a),
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
    let dev = Device::Cpu;
    let model = Model::load(&a.model, family, &dev, DType::F32)?;
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
    candle_core::safetensors::save(&out, &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
