#!/usr/bin/env python3
"""Parity between Easel's native pipeline and diffusers, on random models made by create-random.

For each case: make (once) a random model with `easel-diffusion-parity create-random`, let Easel
dump the token ids, initial noise, final latents and decoded image of one generation, then run
diffusers on the same folder with the same noise and scheduler and print the max relative error
(max |easel - diffusers| / max |diffusers|) of the final latents and of the decoded image.

Not part of CI: it needs torch and diffusers (about 3 GB from PyPI). Run it with run.sh.
"""

import argparse
import pathlib
import subprocess
import sys

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from safetensors.numpy import load_file

PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"

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
            subprocess.run([args.bin, "create-random", "--family", family, "--scale", args.scale,
                            "--out", str(model), "--seed", "0"], check=True, stdout=subprocess.DEVNULL)
        dump = work / f"{family}-{args.scale}-{kind}.safetensors"
        subprocess.run([args.bin, "dump", "--model", str(model), "--family", family, "--prompt", PROMPT,
                        "--negative", negative, "--seed", "1", "--steps", str(steps), "--guidance", str(guidance),
                        "--scheduler", kind, "--size", str(args.size), "--out", str(dump)],
                       check=True, stdout=subprocess.DEVNULL)
        d = load_file(str(dump))
        pipe_cls = StableDiffusionXLPipeline if family.startswith("sdxl") else StableDiffusionPipeline
        pipe = pipe_cls.from_pretrained(str(model), torch_dtype=torch.float32)
        pipe.scheduler = make_scheduler(kind, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
        ids_ok = list(ids) == d["input_ids"].tolist()
        if "input_ids_2" in d:
            ids2 = pipe.tokenizer_2(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
            ids_ok = ids_ok and list(ids2) == d["input_ids_2"].tolist()
        with torch.no_grad():
            latents = pipe(PROMPT, negative_prompt=negative or None, num_inference_steps=steps,
                           guidance_scale=guidance, height=args.size, width=args.size,
                           latents=torch.from_numpy(d["noise"]), output_type="latent").images
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        row = (family, kind, steps, guidance, ids_ok, rel(d["latents"], latents.numpy()), rel(d["image"], image.numpy()))
        rows.append(row)
        print(f"{family:<12} {kind:<16} steps {steps} cfg {guidance:<4} ids {'same' if ids_ok else 'DIFFER'}"
              f"  latents {row[5]:.2e}  image {row[6]:.2e}", flush=True)
    worst = max((max(r[5], r[6]) for r in rows), default=0.0)
    print(f"worst max relative error: {worst:.2e} ({'within' if worst <= 1e-3 else 'ABOVE'} the 1e-3 target)")
    sys.exit(0 if worst <= 1e-3 and all(r[4] for r in rows) else 1)


if __name__ == "__main__":
    main()
