//! CPU (or CUDA) benchmark: time per image and peak RSS for one model folder.
//!
//! Times the text encoders, the denoising loop and the VAE decode (and, with `--tiny-vae`, the
//! tiny autoencoder's decode of the same latents) separately, over `--runs`
//! runs after one warm-up, with the process's CPU-seconds beside the wall time, and reads the
//! peak resident set size from `/proc/self/status`. `--profile` adds the per-operation table of
//! [`easel_diffusion::profile`] for each timed run (convolutions by shape, GEMMs, group norms,
//! attention, copies: calls, seconds, share, GFLOP/s). Random weights give honest numbers:
//! latency does not depend on weight values.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Parser;
use easel_diffusion::Family;
use easel_diffusion::config::DeviceSpec;
use easel_diffusion::model::Model;
use easel_diffusion::pipeline::{self, Generate, Hooks, Preview};
use easel_diffusion::profile;
use easel_diffusion::scheduler::SchedulerKind;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    family: String,
    /// Image edge; several, comma-separated, are timed one after another on the same load.
    #[arg(long, value_delimiter = ',', default_values_t = [512])]
    size: Vec<usize>,
    #[arg(long, default_value_t = 1)]
    steps: usize,
    #[arg(long, default_value_t = 0.0)]
    guidance: f64,
    #[arg(long, default_value = "euler")]
    scheduler: String,
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Keep glibc's malloc defaults (every large output faulted in afresh) instead of what the
    /// worker sets (`easel_diffusion::memory`), to measure the difference.
    #[arg(long)]
    default_malloc: bool,
    /// Skip the warm-up run (first-call costs are then included).
    #[arg(long)]
    no_warmup: bool,
    /// Time single VAE-decoder-sized operations instead (conv 3x3, group norm, silu, upsample).
    #[arg(long)]
    ops: bool,
    /// Print the per-operation timers after each timed run.
    #[arg(long)]
    profile: bool,
    /// Hide profile rows under this share of the run (they are summed per operation).
    #[arg(long, default_value_t = 0.005)]
    min_share: f64,
    /// Time the VAE decoder's and the SD UNet's 3×3 convolution shapes at `--size` output, direct
    /// (im2col + GEMM) against Winograd, `--runs` times each, interleaved.
    #[arg(long)]
    convs: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32`, `f16` or `bf16`; unset, the family's default on the device (what `easel serve` uses).
    #[arg(long)]
    dtype: Option<String>,
    /// Also time this tiny autoencoder's decode of the same latents (`tiny_vae`).
    #[arg(long)]
    tiny_vae: Option<PathBuf>,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<()> {
    let a = Args::parse();
    if !a.default_malloc {
        easel_core::memory::keep_freed_memory(easel_core::memory::Keep::Tensors);
    }
    let family = Family::parse(&a.family)?;
    let (spec, dtype) = DeviceSpec::with_dtype(family, &a.device, a.dtype.as_deref())?;
    let dev = spec.open()?;
    if a.ops {
        return ops(a.size[0]);
    }
    if a.convs {
        return convs(a.size[0], a.runs);
    }
    let t = Instant::now();
    let mut model = Model::load(&a.model, family, &dev, dtype, None)?;
    if let Some(dir) = &a.tiny_vae {
        model = model.with_tiny_vae(dir, pipeline::Decoder::Vae)?;
    }
    dev.synchronize()?;
    println!(
        "load: {:.2} s ({dtype:?} on {}{}), peak RSS {:.0} MiB",
        t.elapsed().as_secs_f64(),
        a.device,
        if dev.is_cuda() {
            format!(", convolutions on {}", easel_diffusion::ops::CUDA_CONVOLUTIONS)
        } else {
            String::new()
        },
        peak_rss_mib()
    );
    for &size in &a.size {
        time_size(&a, &model, &dev, dtype, size)?;
    }
    Ok(())
}

/// Warm-up and `--runs` timed generations of one `size`² image. Each phase ends with a device
/// synchronisation, so on a GPU a phase's time includes its queued kernels.
fn time_size(a: &Args, model: &Model, dev: &Device, dtype: DType, size: usize) -> Result<()> {
    let scheduler: SchedulerKind = serde_json::from_value(serde_json::Value::String(a.scheduler.clone()))?;
    let g = Generate {
        prompt: "an astronaut riding a horse on mars".into(),
        negative_prompt: String::new(),
        width: size,
        height: size,
        seeds: vec![42],
        steps: a.steps,
        guidance_scale: a.guidance,
        scheduler,
        init: None,
        partials: 0,
        preview: Preview::Approx,
    };
    let never = || false;
    let mut ignore = |_| {};
    let runs = if a.no_warmup { a.runs } else { a.runs + 1 };
    for run in 0..runs {
        let _ = profile::take();
        profile::enable(a.profile && (run > 0 || a.no_warmup));
        let cpu0 = profile::cpu_seconds();
        let t0 = Instant::now();
        let cond = pipeline::encode_text(model, ["", &g.prompt], g.guidance_scale > 1.0, 1, (size, size))?;
        dev.synchronize()?;
        drop(cond);
        let text = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut hooks = Hooks { cancelled: &never, partial: &mut ignore, step: &mut |_, _| {} };
        let latents = pipeline::denoise(model, &g, &mut hooks).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        dev.synchronize()?;
        let loop_s = t1.elapsed().as_secs_f64() - text;
        let t2 = Instant::now();
        let image = model.vae.decode(&latents)?;
        let _ = pipeline::tensor_to_images(&image)?;
        let vae = t2.elapsed().as_secs_f64();
        let wall = t0.elapsed().as_secs_f64();
        let cpu = profile::cpu_seconds() - cpu0;
        profile::enable(false);
        let label = if run == 0 && !a.no_warmup { "warm-up" } else { "run" };
        println!(
            "{label} {size}²: text {text:.2} s, unet {loop_s:.2} s ({} steps, {:.4} s/step), vae decode {vae:.2} s, total {:.2} s, cpu {cpu:.2} s, peak RSS {:.0} MiB",
            a.steps,
            loop_s / a.steps as f64,
            text + loop_s + vae,
            peak_rss_mib()
        );
        if let Some(tiny) = &model.tiny_vae {
            let t3 = Instant::now();
            let _ = pipeline::tensor_to_images(&tiny.decode(&latents.to_dtype(dtype)?)?)?;
            println!("{label}: taesd decode {:.2} s", t3.elapsed().as_secs_f64());
        }
        let rows = profile::take();
        if !rows.is_empty() {
            print!("{}", profile::report(&rows, wall, a.min_share));
        }
    }
    Ok(())
}

/// The decoder's last level at `size`: 128 channels at full resolution.
fn ops(size: usize) -> Result<()> {
    use candle_core::{Module, Tensor};
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let conv =
        candle_nn::conv2d(128, 128, 3, candle_nn::Conv2dConfig { padding: 1, ..Default::default() }, vb.pp("c"))?;
    let gn = candle_nn::group_norm(32, 128, 1e-6, vb.pp("g"))?;
    let x = Tensor::randn(0f32, 1.0, (1, 128, size, size), &dev)?;
    let time = |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<()> {
        f()?;
        let t = Instant::now();
        for _ in 0..3 {
            f()?;
        }
        println!("{name}: {:.3} s", t.elapsed().as_secs_f64() / 3.0);
        Ok(())
    };
    time("conv3x3 128->128", &|| conv.forward(&x))?;
    let cols = Tensor::randn(0f32, 1.0, (size * size, 128 * 9), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (128 * 9, 128), &dev)?;
    time("matmul, same flops", &|| cols.matmul(&w))?;
    let wt = Tensor::randn(0f32, 1.0, (128, 128 * 9), &dev)?;
    let colst = Tensor::randn(0f32, 1.0, (128 * 9, size * size), &dev)?;
    time("matmul W x cols (NCHW out)", &|| wt.matmul(&colst))?;
    let fast = easel_diffusion::ops::Conv::new(
        vb.pp("c"),
        128,
        128,
        3,
        candle_nn::Conv2dConfig { padding: 1, ..Default::default() },
    )?;
    time("easel conv3x3 128->128", &|| fast.forward(&x).map_err(|e| candle_core::Error::Msg(e.to_string())))?;
    let fgn = easel_diffusion::ops::GroupNorm::new(vb.pp("g"), 32, 128, 1e-6)?;
    time("easel group_norm+silu", &|| fgn.forward(&x, true).map_err(|e| candle_core::Error::Msg(e.to_string())))?;
    let q = Tensor::randn(0f32, 1.0, (2, 8, 4096, 40), &dev)?;
    let kt = Tensor::randn(0f32, 1.0, (2, 8, 40, 4096), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (2, 8, 4096, 40), &dev)?;
    let seq = |t: &Tensor| t.transpose(1, 2).and_then(|t| t.reshape((2, 4096, 8 * 40)));
    let (qs, ks, vs) = (seq(&q)?, seq(&kt.transpose(2, 3)?)?, seq(&v)?);
    time("attention 2x8x4096x40, fused", &|| {
        easel_diffusion::attention::attend(&qs, &ks, &vs, 8).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?;
    let q1 = Tensor::randn(0f32, 1.0, (1, 4096, 512), &dev)?;
    time("attention 1x1x4096x512 (VAE), fused", &|| {
        easel_diffusion::attention::attend(&q1, &q1, &q1, 1).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?;
    let mut e = x.flatten_all()?.to_vec1::<f32>()?;
    let t = Instant::now();
    easel_diffusion::exp::exp_in_place(&mut e);
    println!("exp over {} floats: {:.3} s", e.len(), t.elapsed().as_secs_f64());
    for budget in [64 << 20, 8 << 20] {
        let name = format!("attention 2x8x4096x40, chunks of {} Mi scores", budget >> 20);
        time(&name, &|| {
            easel_diffusion::blocks::attend(&q, &kt, &v, budget).map_err(|e| candle_core::Error::Msg(e.to_string()))
        })?;
    }
    time("group_norm 32x128", &|| gn.forward(&x))?;
    time("silu", &|| candle_nn::ops::silu(&x))?;
    let half = x.narrow(2, 0, size / 2)?.narrow(3, 0, size / 2)?.contiguous()?;
    time("upsample x2", &|| half.upsample_nearest2d(size, size))?;
    Ok(())
}

/// The VAE decoder's 3×3 convolutions for a `size`² image (latent `size / 8`), then the SD UNet's
/// at its 2nd and 3rd levels (a batch of two, as with guidance), direct against the path `Conv`
/// takes (Winograd where `winograd::variant` says so), each run printed with wall and CPU seconds.
fn convs(size: usize, runs: usize) -> Result<()> {
    use candle_core::Tensor;
    use easel_diffusion::ops::Conv;
    let dev = Device::Cpu;
    let l = size / 8;
    // (batch, cin, cout, edge). The VAE decoder: conv_in, mid and up-block resnets, upsamplers,
    // conv_out. The UNet's 2nd level (640 channels at l/2) and 3rd (1280 at l/4): the down
    // blocks' first and later resnet convolutions, the up blocks' first (skip concatenated), the
    // upsampler into the level; then the same level without guidance (batch 1), SDXL's
    // 1280-channel level at a 1024² image's l/2 (its widest input, 2560), and what half the size
    // puts at l/2: the UNet's first level, the VAE decoder's middle, FLUX's VAE conv_in.
    let shapes = [
        (1, 4, 512, l),
        (1, 512, 512, l),
        (1, 512, 512, 2 * l),
        (1, 512, 512, 4 * l),
        (1, 512, 256, 4 * l),
        (1, 256, 256, 4 * l),
        (1, 256, 256, 8 * l),
        (1, 256, 128, 8 * l),
        (1, 128, 128, 8 * l),
        (1, 128, 3, 8 * l),
        (2, 320, 640, l / 2),
        (2, 640, 640, l / 2),
        (2, 1920, 640, l / 2),
        (2, 1280, 1280, l / 2),
        (2, 640, 1280, l / 4),
        (2, 1280, 1280, l / 4),
        (2, 2560, 1280, l / 4),
        (1, 640, 640, l / 2),
        (1, 1920, 640, l / 2),
        (1, 1280, 1280, l / 2),
        (2, 2560, 1280, l / 2),
        (2, 320, 320, l / 2),
        (1, 512, 512, l / 2),
        (1, 16, 512, l / 2),
    ];
    let cfg = candle_nn::Conv2dConfig { padding: 1, ..Default::default() };
    for (batch, cin, cout, e) in shapes.into_iter().filter(|&(.., e)| e > 0) {
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let wg = Conv::new(vb.pp("c"), cin, cout, 3, cfg)?;
        let direct = Conv::new(vb.pp("c"), cin, cout, 3, cfg)?.direct_only();
        let x = Tensor::randn(0f32, 1.0, (batch, cin, e, e), &dev)?;
        let flops = 2.0 * (batch * cin * cout * 9 * e * e) as f64;
        let a = direct.forward(&x)?;
        let b = wg.forward(&x)?;
        let err = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? / a.abs()?.max_all()?.to_scalar::<f32>()?;
        // The second column is whatever path `Conv` takes for this shape: named by the rule, so
        // a shape the rule keeps direct is not reported as Winograd.
        let path =
            easel_diffusion::winograd::variant(cin, cout, e, e).map_or("direct (rule)".into(), |v| format!("{v:?}"));
        for run in 0..runs {
            for (name, conv) in [("direct", &direct), (path.as_str(), &wg)] {
                let (t, c) = (Instant::now(), profile::cpu_seconds());
                conv.forward(&x)?;
                let wall = t.elapsed().as_secs_f64();
                println!(
                    "conv {batch}x {cin}->{cout} @{e}x{e} run {run} {name}: {wall:.3} s wall, {:.2} s cpu, {:.1} direct-GFLOP/s, max rel diff {err:.1e}",
                    profile::cpu_seconds() - c,
                    flops / wall / 1e9
                );
            }
        }
    }
    Ok(())
}
