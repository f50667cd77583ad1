#!/usr/bin/env python3
"""Parity between Easel's native pipeline and diffusers, on random models made by create-random.

For each case: make (once) a random model with `easel-diffusion-parity create-random`, let Easel
dump the token ids, initial noise, final latents and decoded image of one generation, then run
diffusers on the same folder with the same noise and scheduler and print the max relative error
(max |easel - diffusers| / max |diffusers|) of the final latents and of the decoded image.

Not part of CI: it needs torch and diffusers (about 3 GB from PyPI). Run it with run.sh.
`golden.py` reuses these functions to write the fixtures that CI does check.
"""

import argparse
import os
import pathlib
import subprocess
import sys

import numpy as np
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from safetensors.numpy import load_file  # noqa: E402

for _lib in (diffusers, transformers):
    _lib.utils.logging.set_verbosity_error()
    _lib.utils.logging.disable_progress_bar()

PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"
MODEL_SEED = 0
NOISE_SEED = 1
# The largest max relative error a case may show against diffusers (f32).
TARGET = 1e-3

# family, scheduler, steps, guidance, negative prompt
CASES = [
    ("sd-1.5", "ddim", 3, 7.5, NEGATIVE),
    ("sd-1.5", "euler", 3, 7.5, NEGATIVE),
    ("sd-1.5", "dpmpp_2m_karras", 4, 7.5, ""),
    ("sd-2.1", "euler", 3, 7.5, NEGATIVE),
    ("sd-turbo", "euler_ancestral", 1, 0.0, ""),
    ("sdxl", "euler", 3, 5.0, ""),
    ("sdxl", "ddim", 2, 5.0, NEGATIVE),
    ("sdxl-turbo", "euler_ancestral", 1, 0.0, ""),
]


def make_scheduler(kind, config):
    if kind == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if kind == "euler_ancestral":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if kind == "ddim":
        return DDIMScheduler.from_config(config)
    if kind == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(
            config, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2
        )
    raise ValueError(kind)


def rel(a, b):
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def create_model(bin_path, out, family, scale, seed=MODEL_SEED):
    """`create-random` into `out` (which must be empty or absent)."""
    subprocess.run([bin_path, "create-random", "--family", family, "--scale", scale,
                    "--out", str(out), "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)


def easel_dump(bin_path, model, family, kind, steps, guidance, negative, size, out, extra=()):
    """Easel's token ids, initial noise (seed NOISE_SEED), final latents and decoded image
    (`extra`: more flags for `dump`, e.g. `--device cuda --dtype f16`)."""
    subprocess.run([bin_path, "dump", "--model", str(model), "--family", family, "--prompt", PROMPT,
                    "--negative", negative, "--seed", str(NOISE_SEED), "--steps", str(steps),
                    "--guidance", str(guidance), "--scheduler", kind, "--size", str(size), "--out", str(out),
                    *extra], check=True, stdout=subprocess.DEVNULL)
    return load_file(str(out))


def load_pipe(model, family, dtype=torch.float32, device="cpu"):
    pipe_cls = StableDiffusionXLPipeline if family.startswith("sdxl") else StableDiffusionPipeline
    pipe = pipe_cls.from_pretrained(str(model), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_run(model, family, kind, steps, guidance, negative, size, noise, pipe=None):
    """diffusers' token ids, final latents and decoded image (f32, in [-1, 1]) from `noise`, with
    `pipe` (default: the folder in f32 on the CPU) on its device and in its dtype. An f16 SDXL
    pipeline decodes in f32 when its VAE says `force_upcast`, as its `__call__` does."""
    pipe = pipe or load_pipe(model, family)
    pipe.scheduler = make_scheduler(kind, pipe.scheduler.config)
    out = {"input_ids": np.array(pipe.tokenizer(PROMPT, padding="max_length", max_length=77,
                                                truncation=True).input_ids, dtype=np.int64)}
    if getattr(pipe, "tokenizer_2", None) is not None:
        out["input_ids_2"] = np.array(pipe.tokenizer_2(PROMPT, padding="max_length", max_length=77,
                                                       truncation=True).input_ids, dtype=np.int64)
    with torch.no_grad():
        latents = pipe(PROMPT, negative_prompt=negative or None, num_inference_steps=steps,
                       guidance_scale=guidance, height=size, width=size,
                       latents=torch.from_numpy(noise).to(pipe.device, pipe.dtype), output_type="latent").images
        vae = pipe.vae
        if family.startswith("sdxl") and vae.dtype == torch.float16 and vae.config.force_upcast:
            vae = vae.to(torch.float32)
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    out["latents"] = latents.float().cpu().numpy()
    out["image"] = image.float().cpu().numpy()
    return out


def compare(easel, ref):
    """(token ids identical, latents error, image error)."""
    ids_ok = all(easel[k].astype(np.int64).tolist() == ref[k].tolist()
                 for k in ("input_ids", "input_ids_2") if k in ref)
    return ids_ok, rel(easel["latents"], ref["latents"]), rel(easel["image"], ref["image"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to easel-diffusion-parity")
    ap.add_argument("--work", default="/tmp/easel-parity")
    ap.add_argument("--scale", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--families", default="", help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.families.split(",")))
    rows = []
    for family, kind, steps, guidance, negative in CASES:
        if wanted and family not in wanted:
            continue
        model = work / f"{family}-{args.scale}"
        if not model.exists():
            create_model(args.bin, model, family, args.scale)
        d = easel_dump(args.bin, model, family, kind, steps, guidance, negative, args.size,
                       work / f"{family}-{args.scale}-{kind}.safetensors")
        ref = diffusers_run(model, family, kind, steps, guidance, negative, args.size, d["noise"])
        ids_ok, lat, img = compare(d, ref)
        rows.append((ids_ok, lat, img))
        print(f"{family:<12} {kind:<16} steps {steps} cfg {guidance:<4} ids {'same' if ids_ok else 'DIFFER'}"
              f"  latents {lat:.2e}  image {img:.2e}", flush=True)
    worst = max((max(r[1], r[2]) for r in rows), default=0.0)
    print(f"worst max relative error: {worst:.2e} ({'within' if worst <= TARGET else 'ABOVE'} the {TARGET:.0e} target)")
    sys.exit(0 if worst <= TARGET and all(r[0] for r in rows) else 1)


if __name__ == "__main__":
    main()
