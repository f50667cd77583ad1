#!/usr/bin/env python3
"""Parity on a GPU: Easel's CUDA build and diffusers on the same device, same weights and noise,
in f32, f16 and bf16 (scripts/gpu/run.sh runs it on the GPU host).

Every output is compared with diffusers' own f32 answer on that device (TF32 off on both sides),
so the f32 row checks the math (parity.py's TARGET), and each half-precision row says
how far each implementation moves from the f32 answer, beside how far the two are from each other.
Fails when the f32 row is above the bar, token ids differ, or an output is not finite.
"""

import argparse
import copy
import pathlib
import sys
import time

import numpy as np
import torch

from parity import NEGATIVE, TARGET, compare, create_model, diffusers_run, easel_dump, load_pipe, rel

# family, scheduler, steps, guidance, negative prompt (one case a family: the loads dominate)
CASES = [
    ("sd-turbo", "euler_ancestral", 1, 0.0, ""),
    ("sd-1.5", "ddim", 3, 7.5, NEGATIVE),
    ("sdxl", "euler", 3, 5.0, ""),
]
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def finite(d):
    return all(np.isfinite(d[k]).all() for k in ("latents", "image"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to easel-diffusion-parity (built with the cuda feature)")
    ap.add_argument("--work", default="/tmp/easel-parity-gpu")
    ap.add_argument("--scale", default="full", choices=["tiny", "full"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--families", default="", help="comma-separated subset")
    ap.add_argument("--dtypes", default="f16,bf16", help="half precisions to compare (f32 always runs)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.families.split(",")))
    ok = True
    for family, kind, steps, guidance, negative in CASES:
        if wanted and family not in wanted:
            continue
        model = work / f"{family}-{args.scale}"
        if not model.exists():
            create_model(args.bin, model, family, args.scale)
        case = (family, kind, steps, guidance, negative, args.size)
        t = time.perf_counter()

        def easel(dtype):
            out = work / f"{family}-{args.scale}-{dtype}.safetensors"
            return easel_dump(args.bin, model, *case, out, extra=["--device", args.device, "--dtype", dtype])

        e32 = easel("f32")
        pipe32 = load_pipe(model, family, torch.float32, args.device)
        ref = diffusers_run(model, *case, e32["noise"], pipe=pipe32)
        ids, lat, img = compare(e32, ref)
        good = ids and finite(e32) and max(lat, img) <= TARGET
        ok &= good
        print(f"{family:<9} {kind:<16} {args.size}² f32   ids {'same' if ids else 'DIFFER'}  easel vs diffusers f32: "
              f"latents {lat:.2e} image {img:.2e}{'' if good else '  FAIL'}", flush=True)
        for dtype in filter(None, args.dtypes.split(",")):
            e = easel(dtype)
            pipe = copy.deepcopy(pipe32).to(DTYPES[dtype])
            d = diffusers_run(model, *case, e32["noise"], pipe=pipe)
            del pipe
            torch.cuda.empty_cache()
            fin = finite(e) and finite(d)
            ok &= fin
            print(f"{family:<9} {kind:<16} {args.size}² {dtype:<5} against diffusers f32: "
                  f"easel latents {rel(e['latents'], ref['latents']):.2e} image {rel(e['image'], ref['image']):.2e}; "
                  f"diffusers latents {rel(d['latents'], ref['latents']):.2e} image {rel(d['image'], ref['image']):.2e}; "
                  f"easel vs diffusers {dtype}: latents {rel(e['latents'], d['latents']):.2e} "
                  f"image {rel(e['image'], d['image']):.2e}{'' if fin else '  NOT FINITE'}", flush=True)
        del pipe32
        torch.cuda.empty_cache()
        print(f"# {family}: {time.perf_counter() - t:.0f} s", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
