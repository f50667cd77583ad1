#!/usr/bin/env python3
"""The diffusers side of the CPU benchmark: same folder, size, steps and guidance as
`easel-diffusion-bench`; times text encoding, the UNet loop and the VAE decode, and reports
peak RSS (ru_maxrss) and the process's CPU-seconds (user + system) per run. fp32,
`torch.set_num_threads(--threads)`."""

import argparse
import resource
import time

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--steps", type=int, default=1)
ap.add_argument("--guidance", type=float, default=0.0)
ap.add_argument("--scheduler", default="euler", choices=["euler", "ddim"])
ap.add_argument("--runs", type=int, default=1)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float32)
cls = EulerDiscreteScheduler if a.scheduler == "euler" else DDIMScheduler
pipe.scheduler = cls.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
prompt = "an astronaut riding a horse on mars"
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


print(f"loaded, peak RSS {rss():.0f} MiB", flush=True)
for run in range(a.runs + 1):
    g = torch.Generator().manual_seed(42)
    cpu0 = cpu()
    with torch.no_grad():
        t0 = time.perf_counter()
        pipe.encode_prompt(prompt, "cpu", 1, a.guidance > 1.0)
        text = time.perf_counter() - t0
        t1 = time.perf_counter()
        lat = pipe(prompt, num_inference_steps=a.steps, guidance_scale=a.guidance, height=a.size, width=a.size,
                   generator=g, output_type="latent").images
        unet = time.perf_counter() - t1 - text
        t2 = time.perf_counter()
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
        vae = time.perf_counter() - t2
    label = "warm-up" if run == 0 else "run"
    print(f"{label}: text {text:.2f} s, unet {unet:.2f} s ({a.steps} steps), vae decode {vae:.2f} s, "
          f"total {text + unet + vae:.2f} s, cpu {cpu() - cpu0:.2f} s, peak RSS {rss():.0f} MiB", flush=True)
