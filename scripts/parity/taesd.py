#!/usr/bin/env python3
"""Parity of Easel's tiny autoencoder (crates/easel-diffusion/src/taesd.rs) with diffusers'
AutoencoderTiny, on the same random weights and latents.

For each scale: Easel's parity binary writes a random AutoencoderTiny folder (`create_tiny_vae`,
the code behind `create-random --tiny-vae`), decodes the latents drawn here and encodes its image
back; diffusers loads the same folder with `AutoencoderTiny.from_pretrained` and does the same.
Prints max |easel - diffusers| / max |diffusers| for the image and the encoded latents; fails
above 1e-4. `--golden` also writes the tiny case (diffusers' tensors, the weights' sha256 and the
versions in its metadata) to crates/easel-diffusion/tests/taesd/, for tests/taesd.rs.

Run through run.sh: `scripts/parity/run.sh taesd [--scales tiny,full] [--latent 8] [--golden]`.
"""

import argparse
import hashlib
import pathlib
import shutil
import subprocess
import sys

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderTiny
from safetensors.numpy import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_SEED = 0
LATENT_SEED = 3
TOLERANCE = 1e-4


def rel(a, b):
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def run(bin_path, work, scale, edge):
    folder = work / f"taesd-{scale}"
    shutil.rmtree(folder, ignore_errors=True)
    gen = torch.Generator().manual_seed(LATENT_SEED)
    # SD latents after the VAE's scaling have a standard deviation near 1; 1.5 reaches the
    # decoder's 3*tanh(x/3) squash too.
    latents = (torch.randn((1, 4, edge, edge), generator=gen) * 1.5).numpy().astype(np.float32)
    save_file({"latents": latents}, str(work / f"latents-{scale}.safetensors"))
    easel_out = work / f"easel-{scale}.safetensors"
    subprocess.run([bin_path, "taesd", "--dir", str(folder), "--create", scale, "--seed", str(MODEL_SEED),
                    "--latents", str(work / f"latents-{scale}.safetensors"), "--out", str(easel_out)],
                   check=True, stdout=subprocess.DEVNULL)
    easel = load_file(str(easel_out))
    vae = AutoencoderTiny.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        image = vae.decode(torch.from_numpy(latents) / vae.config.scaling_factor).sample
        encoded = vae.encode(image).latents * vae.config.scaling_factor
    ref = {"latents": latents, "image": image.numpy().astype(np.float32),
           "encoded": encoded.numpy().astype(np.float32)}
    return folder, ref, rel(easel["image"], ref["image"]), rel(easel["encoded"], ref["encoded"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to easel-diffusion-parity")
    ap.add_argument("--work", default="/tmp/easel-taesd")
    ap.add_argument("--scales", default="tiny,full")
    ap.add_argument("--latent", type=int, default=8, help="latent edge (the image is 8x that)")
    ap.add_argument("--golden", action="store_true", help="write the tiny fixture (a 4x4 latent)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    worst = 0.0
    print(f"{'scale':<6} {'latent':>6} {'image':>9} {'encoded':>9}")
    for scale in args.scales.split(","):
        edge = 4 if args.golden and scale == "tiny" else args.latent
        folder, ref, img, enc = run(args.bin, work, scale, edge)
        worst = max(worst, img, enc)
        print(f"{scale:<6} {edge:>4}^2 {img:>9.2e} {enc:>9.2e}", flush=True)
        if args.golden and scale == "tiny":
            out = ROOT / "crates/easel-diffusion/tests/taesd"
            out.mkdir(parents=True, exist_ok=True)
            weights = folder / "diffusion_pytorch_model.safetensors"
            meta = {
                "made_with": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
                "model_seed": str(MODEL_SEED), "scale": scale,
                "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                "easel_error_when_made": f"image {img:.2e}, encoded {enc:.2e}",
            }
            path = out / "tiny.safetensors"
            save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(path), metadata=meta)
            print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} B)")
    if worst > TOLERANCE:
        sys.exit(f"max relative error {worst:.2e} is over {TOLERANCE:.0e}")


if __name__ == "__main__":
    main()
