#!/usr/bin/env python3
"""Parity of Easel's FLUX.1 (schnell, dev) with diffusers, component by component and end to end,
on random models made by `create-random --family flux-schnell|flux-dev`.

For each case Easel dumps (`easel-diffusion-parity flux-dump`) both encoders' token ids and
outputs, its packed seeded noise, the first step's velocity, the sigmas, the final packed latents,
the decoded image and that image encoded again. diffusers then computes, on the same folder:

- tokenizers: `tokenizer` (77, max_length padding) and `tokenizer_2` (max_sequence_length) on the
  prompt: the ids must be identical;
- CLIP `pooler_output` and T5 `last_hidden_state` on Easel's ids;
- one transformer call on Easel's noise, text states and first timestep (dev: guidance too);
- the VAE: decode of Easel's final latents, encode (posterior mean, shifted and scaled) of
  Easel's image;
- the whole `FluxPipeline` from the same packed noise (`latents=`) and its own text embeddings of
  the same ids (`prompt_embeds=`, `pooled_prompt_embeds=`), `output_type="latent"`, then its
  unpack and decode as the pipeline does; and its scheduler's sigmas.

It prints max |easel - diffusers| / max |diffusers| for each. Not part of CI (torch and diffusers
from PyPI); run it with `scripts/parity/run.sh flux`. `scripts/parity/run.sh golden` writes the fixtures of
`tests/golden.rs` (module `flux`) with `write_golden`.
"""

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

for _lib in (diffusers, transformers):
    _lib.utils.logging.set_verbosity_error()
    _lib.utils.logging.disable_progress_bar()

PROMPT = "a photo of an astronaut riding a horse on mars"
MODEL_SEED = 0
NOISE_SEED = 1

# family, steps, guidance (dev's distilled guidance; schnell has none)
CASES = [
    ("flux-schnell", 4, 0.0),
    ("flux-dev", 3, 3.5),
]

# What is compared, in report order: (name, Easel's key, diffusers' key).
COMPONENTS = [
    ("t5", "t5", "t5"),
    ("clip pooled", "pooled", "pooled"),
    ("transformer step", "velocity", "velocity"),
    ("sigmas", "sigmas", "sigmas"),
    ("vae decode", "image", "vae_decoded"),
    ("vae encode", "vae_encoded", "vae_encoded"),
    ("latents (pipeline)", "latents", "latents"),
    ("image (pipeline)", "image", "image"),
]


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def create_model(bin_path, out, family, scale="tiny", seed=MODEL_SEED):
    subprocess.run([bin_path, "create-random", "--family", family, "--scale", scale,
                    "--out", str(out), "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)


def easel_dump(bin_path, model, family, steps, guidance, size, out, prompt=PROMPT, seed=NOISE_SEED):
    subprocess.run([bin_path, "flux-dump", "--model", str(model), "--family", family, "--prompt", prompt,
                    "--seed", str(seed), "--steps", str(steps), "--guidance", str(guidance),
                    "--size", str(size), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return load_file(str(out))


def max_sequence_length(family):
    return 256 if family == "flux-schnell" else 512


def diffusers_run(model, family, steps, guidance, size, easel, prompt=PROMPT):
    """diffusers' side of every comparison, fed Easel's ids, noise and (per component) inputs."""
    pipe = FluxPipeline.from_pretrained(str(model), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    msl = max_sequence_length(family)
    out = {
        "clip_ids": np.array(pipe.tokenizer(prompt, padding="max_length", max_length=77,
                                            truncation=True).input_ids, dtype=np.int64),
        "t5_ids": np.array(pipe.tokenizer_2(prompt, padding="max_length", max_length=msl,
                                            truncation=True).input_ids, dtype=np.int64),
    }
    t = lambda k, dt=torch.float32: torch.from_numpy(np.ascontiguousarray(easel[k])).to(dt)  # noqa: E731
    clip_ids = t("clip_ids", torch.long)[None]
    t5_ids = t("t5_ids", torch.long)[None]
    with torch.no_grad():
        pooled = pipe.text_encoder(clip_ids, output_hidden_states=False).pooler_output
        t5 = pipe.text_encoder_2(t5_ids, output_hidden_states=False)[0]
        out["pooled"], out["t5"] = pooled.numpy(), t5.numpy()

        # One transformer call on Easel's inputs, as the pipeline's first step makes it.
        noise = t("noise")
        vsf = pipe.vae_scale_factor
        h, w = 2 * (size // (vsf * 2)), 2 * (size // (vsf * 2))
        img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, noise.device, noise.dtype)
        txt_ids = torch.zeros(t5.shape[1], 3)
        sigma0 = torch.tensor([float(easel["sigmas"][0])])
        guide = torch.full([1], guidance, dtype=torch.float32) if pipe.transformer.config.guidance_embeds else None
        v = pipe.transformer(hidden_states=noise, timestep=(sigma0 * 1000) / 1000, guidance=guide,
                             pooled_projections=t("pooled"), encoder_hidden_states=t("t5"),
                             txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        out["velocity"] = v.numpy()

        # The VAE alone on Easel's tensors.
        sf, shift = pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor
        z = pipe._unpack_latents(t("latents"), size, size, vsf)
        out["vae_decoded"] = pipe.vae.decode(z / sf + shift, return_dict=False)[0].numpy()
        mean = pipe.vae.encode(t("image")).latent_dist.mean
        out["vae_encoded"] = ((mean - shift) * sf).numpy()

        # The whole pipeline from the same noise and its own embeddings of the same ids.
        latents = pipe(prompt_embeds=t5, pooled_prompt_embeds=pooled, latents=noise, num_inference_steps=steps,
                       guidance_scale=guidance, height=size, width=size, max_sequence_length=msl,
                       output_type="latent").images
        out["sigmas"] = pipe.scheduler.sigmas.numpy().astype(np.float32)
        out["latents"] = latents.numpy()
        z = pipe._unpack_latents(latents, size, size, vsf)
        image = pipe.vae.decode(z / sf + shift, return_dict=False)[0]
        out["image"] = image.numpy()
        out["vae_encoded_pipeline"] = ((pipe.vae.encode(image).latent_dist.mean - shift) * sf).numpy()
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def weight_hashes(model):
    """sha256 of every weight file, by its path in the model folder."""
    return {str(p.relative_to(model)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(model.rglob("*.safetensors"))}


# The first T5 positions kept in a golden fixture (all 256 or 512 would be 32-64 KB; the whole
# sequence still reaches the fixture's latents through the transformer).
GOLDEN_T5_POSITIONS = 64


def write_golden(bin_path, out, work, size):
    """The fixtures of `tests/golden.rs`'s `flux` module: per case, diffusers' ids, text states
    (T5's first GOLDEN_T5_POSITIONS positions and CLIP's pooled output, computed in float64 so the
    fixture carries no f32 error of its own), first-step velocity, sigmas, final latents, image and
    the image encoded again, with Easel's packed noise; `cases.json` beside them."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    index = {
        "made_with": f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
        "prompt": PROMPT, "seed": NOISE_SEED, "model_seed": MODEL_SEED, "size": size,
        "t5_positions": GOLDEN_T5_POSITIONS, "models": {}, "cases": {},
    }
    for family, steps, guidance in CASES:
        model = work / family
        create_model(bin_path, model, family)
        index["models"][family] = weight_hashes(model)
        d = easel_dump(bin_path, model, family, steps, guidance, size, work / f"{family}.easel.safetensors")
        ref = diffusers_run(model, family, steps, guidance, size, d)
        ids_ok, errs = compare(d, ref)
        pipe = FluxPipeline.from_pretrained(str(model), dtype=torch.float64)
        with torch.no_grad():
            ids = lambda k: torch.from_numpy(d[k].astype(np.int64))[None]  # noqa: E731
            t5 = pipe.text_encoder_2(ids("t5_ids"))[0].numpy()
            pooled = pipe.text_encoder(ids("clip_ids")).pooler_output.numpy()
        tensors = {
            "clip_ids": ref["clip_ids"], "t5_ids": ref["t5_ids"], "noise": d["noise"],
            "t5_head": t5[:, :GOLDEN_T5_POSITIONS], "pooled": pooled, "velocity": ref["velocity"],
            "sigmas": ref["sigmas"], "latents": ref["latents"], "image": ref["image"],
            "vae_encoded": ref["vae_encoded_pipeline"],
        }
        path = out / f"{family}.safetensors"
        save_file({k: np.ascontiguousarray(v.astype(np.int64 if k.endswith("_ids") else np.float32))
                   for k, v in tensors.items()}, str(path))
        index["cases"][family] = {
            "family": family, "steps": steps, "guidance": guidance,
            "easel_error_when_made": {**{k: float(f"{v:.2e}") for k, v in errs.items()}, "ids_same": ids_ok},
        }
        print(f"{'flux/' + path.name:<40} {path.stat().st_size:>6} B   Easel now: ids {'same' if ids_ok else 'DIFFER'}  "
              + "  ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
    (out / "cases.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def compare(easel, ref):
    """(ids identical, {component: max relative error})."""
    ids_ok = all(easel[k].astype(np.int64).tolist() == ref[k].tolist() for k in ("clip_ids", "t5_ids"))
    return ids_ok, {name: rel(easel[e], ref[r]) for name, e, r in COMPONENTS}


def parts_run(bin_path, work, scale, size):
    """CLIP-L's pooled output and the 16-channel VAE (decode of seeded latents, encode of that
    image) at `scale`, without the transformer and T5 (full size: 12 B + 4.8 B parameters)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    model = work / f"parts-{scale}"
    if not model.exists():
        subprocess.run([bin_path, "flux-parts-create", "--scale", scale, "--out", str(model)], check=True,
                       stdout=subprocess.DEVNULL)
    out = work / f"parts-{scale}-{size}.easel.safetensors"
    subprocess.run([bin_path, "flux-parts-dump", "--model", str(model), "--prompt", PROMPT, "--seed", str(NOISE_SEED),
                    "--size", str(size), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    d = load_file(str(out))
    tok = CLIPTokenizer.from_pretrained(str(model / "tokenizer"))
    ids = tok(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    clip = CLIPTextModel.from_pretrained(str(model / "text_encoder"), dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(str(model / "vae"), dtype=torch.float32)
    sf, shift = vae.config.scaling_factor, vae.config.shift_factor
    with torch.no_grad():
        pooled = clip(torch.tensor([ids])).pooler_output.numpy()
        image = vae.decode(torch.from_numpy(d["latents"]) / sf + shift, return_dict=False)[0].numpy()
        enc = ((vae.encode(torch.from_numpy(d["image"])).latent_dist.mean - shift) * sf).numpy()
    ids_ok = d["clip_ids"].astype(np.int64).tolist() == ids
    return ids_ok, {"clip pooled": rel(d["pooled"], pooled), "vae decode": rel(d["image"], image),
                    "vae encode": rel(d["vae_encoded"], enc)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to easel-diffusion-parity")
    ap.add_argument("--work", default="/tmp/easel-parity-flux")
    ap.add_argument("--size", type=int, default=32, help="pixels (the tiny VAE has factor 1)")
    ap.add_argument("--families", default="", help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", choices=["tiny", "full"],
                    help="only CLIP and the VAE at this scale (full: CLIP-L and the 16-channel VAE)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.parts:
        ids_ok, errs = parts_run(args.bin, work, args.parts, args.size)
        print(f"parts {args.parts} size {args.size}  CLIP ids {'same' if ids_ok else 'DIFFER'}")
        for name, e in errs.items():
            print(f"    {name:<20} {e:.2e}", flush=True)
        worst = max(errs.values())
        sys.exit(0 if worst <= 1e-3 and ids_ok else 1)
    wanted = set(filter(None, args.families.split(",")))
    worst, ids_all = 0.0, True
    for family, steps, guidance in CASES:
        if wanted and family not in wanted:
            continue
        model = work / f"{family}-tiny"
        if not model.exists():
            create_model(args.bin, model, family)
        d = easel_dump(args.bin, model, family, steps, guidance, args.size, work / f"{family}.easel.safetensors")
        ref = diffusers_run(model, family, steps, guidance, args.size, d)
        ids_ok, errs = compare(d, ref)
        ids_all &= ids_ok
        worst = max(worst, *errs.values())
        print(f"{family:<13} steps {steps} guidance {guidance:<4} size {args.size}  ids {'same' if ids_ok else 'DIFFER'}",
              flush=True)
        for name, e in errs.items():
            print(f"    {name:<20} {e:.2e}", flush=True)
    print(f"worst max relative error: {worst:.2e} ({'within' if worst <= 1e-3 else 'ABOVE'} the 1e-3 target)")
    sys.exit(0 if worst <= 1e-3 and ids_all else 1)


if __name__ == "__main__":
    main()
