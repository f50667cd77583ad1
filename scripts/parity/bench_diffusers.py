#!/usr/bin/env python3
"""The diffusers side of the diffusion benchmark: same folder, sizes, steps and guidance as
`easel-diffusion-bench`; times text encoding, the UNet loop and the VAE decode, and reports
peak RSS (ru_maxrss) and the process's CPU-seconds (user + system) per run.

On the CPU: fp32, `torch.set_num_threads(--threads)`. With `--device cuda` (or `cuda:N`):
`--dtype` f16, bf16 or f32 (TF32 off, like candle's f32 GEMMs), each phase ends with
`torch.cuda.synchronize()`, and the allocator's peak (`max_memory_reserved`) is printed beside
the times. An f16 SDXL decodes with its VAE in f32 when the VAE says `force_upcast`, as the
pipeline's `__call__` (and Easel) do."""

import argparse
import resource
import time

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from parity import load_pipe

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--family", default="sd-turbo", help="sdxl and sdxl-turbo load StableDiffusionXLPipeline")
ap.add_argument("--size", default="512", help="edges, comma-separated, timed one after another")
ap.add_argument("--steps", type=int, default=1)
ap.add_argument("--guidance", type=float, default=0.0)
ap.add_argument("--scheduler", default="euler", choices=["euler", "ddim"])
ap.add_argument("--runs", type=int, default=1)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
t = time.perf_counter()
pipe = load_pipe(a.model, a.family, dtype, a.device)
sched = EulerDiscreteScheduler if a.scheduler == "euler" else DDIMScheduler
pipe.scheduler = sched.from_config(pipe.scheduler.config)
prompt = "an astronaut riding a horse on mars"
cuda = a.device.startswith("cuda")
decoder = pipe.vae
if a.family.startswith("sdxl") and dtype == torch.float16 and decoder.config.force_upcast:
    decoder = decoder.to(torch.float32)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync():
    if cuda:
        torch.cuda.synchronize()


def gpu():
    return f", peak device memory {torch.cuda.max_memory_reserved() / 2**20:.0f} MiB (reserved)" if cuda else ""


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


sync()
print(f"loaded in {time.perf_counter() - t:.2f} s ({a.dtype} on {a.device}), peak RSS {rss():.0f} MiB", flush=True)
for size in map(int, a.size.split(",")):
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for run in range(a.runs + 1):
        g = torch.Generator(a.device).manual_seed(42)
        cpu0 = cpu()
        with torch.no_grad():
            t0 = time.perf_counter()
            pipe.encode_prompt(prompt, device=a.device, num_images_per_prompt=1,
                               do_classifier_free_guidance=a.guidance > 1.0)
            sync()
            text = time.perf_counter() - t0
            t1 = time.perf_counter()
            lat = pipe(prompt, num_inference_steps=a.steps, guidance_scale=a.guidance, height=size, width=size,
                       generator=g, output_type="latent").images
            sync()
            unet = time.perf_counter() - t1 - text
            t2 = time.perf_counter()
            img = decoder.decode(lat.to(decoder.dtype) / decoder.config.scaling_factor).sample
            img = img.float().cpu()
            vae = time.perf_counter() - t2
        label = "warm-up" if run == 0 else "run"
        print(f"{label} {size}²: text {text:.2f} s, unet {unet:.2f} s ({a.steps} steps, {unet / a.steps:.4f} s/step), "
              f"vae decode {vae:.2f} s, total {text + unet + vae:.2f} s, cpu {cpu() - cpu0:.2f} s, "
              f"peak RSS {rss():.0f} MiB{gpu()}", flush=True)
