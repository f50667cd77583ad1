#!/usr/bin/env python3
"""Writes the golden fixtures of `crates/easel-diffusion/tests/golden.rs`: diffusers' outputs for
every case of parity.py's CASES, on the tiny random models, so CI checks Easel's math against
diffusers without Python.

For each case: create the tiny model with `create-random --seed MODEL_SEED` (deterministic; the
model itself is not committed, the test recreates it and first compares the sha256 of its
weight files, recorded here, so a change in create-random is told apart from a change in the
math), let Easel dump its initial noise for seed NOISE_SEED (Easel draws its noise from a ChaCha
stream; the test checks it is unchanged), run diffusers from that noise, and save diffusers'
token ids, the noise, its final latents and its decoded image (f32) as
`<family>-<scheduler>.safetensors`; the cases' parameters, the weight hashes and the versions go
to `cases.json` beside them (sorted keys, so regenerating unchanged fixtures changes no byte).

FLUX.1 schnell and dev go to `flux/` beside them (`flux.write_golden`: component outputs too),
Qwen-Image to `qwen/` (`qwen.golden`).

Run through run.sh: `scripts/parity/run.sh golden` (a few seconds per case on 2 cores).
"""

import argparse
import hashlib
import json
import pathlib
import shutil

# parity first: it quiets transformers' import-time warnings.
from parity import CASES, MODEL_SEED, NOISE_SEED, PROMPT, compare, create_model, diffusers_run, easel_dump
import flux  # noqa: E402,I001
import qwen  # noqa: E402,I001

import diffusers  # noqa: E402,I001
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def weight_hashes(model):
    """sha256 of every weight file, by its path in the model folder."""
    return {str(p.relative_to(model)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(model.rglob("*.safetensors"))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to easel-diffusion-parity")
    ap.add_argument("--work", default="/tmp/easel-golden")
    ap.add_argument("--out", default=str(ROOT / "crates/easel-diffusion/tests/golden"))
    # 32 px (a 4x4 latent) keeps each fixture near 14 KB and the debug test fast.
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work, out = pathlib.Path(args.work), pathlib.Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    index = {
        "made_with": f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
        "prompt": PROMPT, "seed": NOISE_SEED, "model_seed": MODEL_SEED, "size": args.size,
        "models": {}, "cases": {},
    }
    for family, kind, steps, guidance, negative in CASES:
        model = work / family
        if not model.exists():
            create_model(args.bin, model, family, "tiny", MODEL_SEED)
            index["models"][family] = weight_hashes(model)
        d = easel_dump(args.bin, model, family, kind, steps, guidance, negative, args.size,
                       work / f"{family}-{kind}.easel.safetensors")
        ref = diffusers_run(model, family, kind, steps, guidance, negative, args.size, d["noise"])
        ids_ok, lat, img = compare(d, ref)
        name = f"{family}-{kind}"
        index["cases"][name] = {
            "family": family, "scheduler": kind, "steps": steps, "guidance": guidance, "negative": negative,
            "easel_error_when_made": {"latents": float(f"{lat:.2e}"), "image": float(f"{img:.2e}"), "ids_same": ids_ok},
        }
        path = out / f"{name}.safetensors"
        tensors = {**ref, "noise": d["noise"].astype(np.float32)}
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
        print(f"{path.name:<40} {path.stat().st_size:>6} B   Easel now: ids {'same' if ids_ok else 'DIFFER'}"
              f"  latents {lat:.2e}  image {img:.2e}", flush=True)
    (out / "cases.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    # FLUX.1 schnell and dev (flux.py's CASES), in their own folder.
    flux.write_golden(args.bin, out / "flux", work / "flux", args.size)
    # Qwen-Image (qwen.py's 32-px CASES), in its own folder.
    qwen.golden(args.bin, out / "qwen", work / "qwen")


if __name__ == "__main__":
    main()
