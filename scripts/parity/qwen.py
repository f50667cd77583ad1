#!/usr/bin/env python3
"""Parity of Easel's Qwen-Image with diffusers, component by component and end to end, on random
models made by `create-random --family qwen-image`.

For each case Easel dumps (`easel-diffusion-parity qwen-dump`) the template token ids of the
prompt and the negative prompt, their prompt embeddings, its packed seeded noise, the sigmas, the
first step's velocity, the velocity of a zero-padded batch [prompt, negative] with its key mask,
the final latents, their decoded image and that image encoded again. diffusers (and
transformers) then compute on the same folder:

- the tokenizer (`Qwen2Tokenizer` from `tokenizer/`) on the templates: ids must be identical;
- the text encoder (`Qwen2_5_VLForConditionalGeneration`) on Easel's ids: `hidden_states[-1]`
  (checked equal to the post-norm `last_hidden_state`) less the 34 template positions;
- one transformer call on Easel's noise, prompt embeddings and first timestep, and the padded
  batch with `encoder_hidden_states_mask`;
- the VAE: decode of Easel's final latents (de-normalised as the pipeline does, frame 0, clamped),
  encode (posterior mean, normalised) of Easel's image;
- the whole `QwenImagePipeline` from the same packed noise (`latents=`) with its own tokenizer and
  text encoder on the prompt strings, `output_type="latent"`, then unpacked and decoded as the
  pipeline does; and its scheduler's sigmas (the folder's config, or Lightning's).

It prints max |easel - diffusers| / max |diffusers| for each. Not part of CI (torch and diffusers
from PyPI); run it with `scripts/parity/run.sh qwen`. `golden.py` (`run.sh golden`) calls
`golden()` to write the fixtures `crates/easel-diffusion/tests/golden.rs` checks.
"""

import argparse
import hashlib
import json
import math
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
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

for _lib in (diffusers, transformers):
    _lib.utils.logging.set_verbosity_error()
    _lib.utils.logging.disable_progress_bar()

PROMPT = "dance monkey"
NEGATIVE = "bad quality"
MODEL_SEED = 0
NOISE_SEED = 1
DROP = 34

# name, steps, true_cfg_scale, negative prompt, size, preset
CASES = [
    ("qwen-image-cfg", 3, 4.0, NEGATIVE, 32, None),
    ("qwen-image-nocfg", 2, 1.0, "", 64, None),
    ("qwen-image-lightning", 4, 1.0, "", 32, "lightning"),
]


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def create_model(bin_path, out, scale="tiny", seed=MODEL_SEED):
    subprocess.run([bin_path, "create-random", "--family", "qwen-image", "--scale", scale,
                    "--out", str(out), "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)


def easel_dump(bin_path, model, steps, guidance, negative, size, preset, out):
    cmd = [bin_path, "qwen-dump", "--model", str(model), "--prompt", PROMPT, "--negative", negative,
           "--seed", str(NOISE_SEED), "--steps", str(steps), "--guidance", str(guidance),
           "--size", str(size), "--out", str(out)]
    if preset:
        cmd += ["--preset", preset]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return load_file(str(out))


def load_pipe(model, preset):
    pipe = QwenImagePipeline.from_pretrained(str(model), dtype=torch.float32)
    if preset == "lightning":
        # Qwen-Image-Lightning's scheduler: e^mu = 3 at every size, no terminal stretch.
        cfg = dict(pipe.scheduler.config)
        cfg.update(base_shift=math.log(3), max_shift=math.log(3), shift_terminal=None, max_image_seq_len=8192)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def diffusers_run(model, d, steps, guidance, negative, size, preset):
    pipe = load_pipe(model, preset)
    neg = negative or " "
    ref = {}
    tmpl = pipe.prompt_template_encode
    ref["ids"] = np.array(pipe.tokenizer(tmpl.format(PROMPT)).input_ids, dtype=np.int64)
    ref["neg_ids"] = np.array(pipe.tokenizer(tmpl.format(neg)).input_ids, dtype=np.int64)

    def embeds(ids):
        out = pipe.text_encoder(input_ids=torch.from_numpy(ids.astype(np.int64))[None],
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long), output_hidden_states=True)
        return out.hidden_states[-1][:, DROP:].numpy()

    ref["prompt_embeds"] = embeds(d["ids"])
    ref["neg_prompt_embeds"] = embeds(d["neg_ids"])
    # hidden_states[-1] must be the post-norm state (what the pipeline keeps).
    out = pipe.text_encoder.model(input_ids=torch.from_numpy(d["ids"].astype(np.int64))[None], output_hidden_states=True)
    assert torch.allclose(out.hidden_states[-1], out.last_hidden_state), "hidden_states[-1] is not post-norm"

    h = w = size // pipe.vae_scale_factor // 2
    noise = torch.from_numpy(d["noise"])
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps),
                                 mu=mu(pipe.scheduler.config, h * w))
    t0 = (pipe.scheduler.timesteps[:1] / 1000).to(torch.float32)
    tr = pipe.transformer
    ref["velocity0"] = tr(hidden_states=noise, encoder_hidden_states=torch.from_numpy(d["prompt_embeds"]),
                          timestep=t0, img_shapes=[[(1, h, w)]], return_dict=False)[0].numpy()
    mask = torch.from_numpy(d["mask"])
    lc, ln = d["prompt_embeds"].shape[1], d["neg_prompt_embeds"].shape[1]
    L = max(lc, ln)
    pad = lambda e, l: np.concatenate([e, np.zeros((1, L - l, e.shape[2]), np.float32)], 1)  # noqa: E731
    batch = torch.from_numpy(np.concatenate([pad(d["prompt_embeds"], lc), pad(d["neg_prompt_embeds"], ln)], 0))
    ref["velocity_masked"] = tr(hidden_states=torch.cat([noise, noise]), encoder_hidden_states=batch,
                                encoder_hidden_states_mask=mask, timestep=t0.repeat(2),
                                img_shapes=[[(1, h, w)]] * 2, return_dict=False)[0].numpy()

    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    ref["vae_decoded"] = vae.decode(torch.from_numpy(d["latents"])[:, :, None] / inv_std + mean,
                                    return_dict=False)[0][:, :, 0].numpy()
    post = vae.encode(torch.from_numpy(d["image"])[:, :, None]).latent_dist.mode()
    ref["vae_encoded"] = ((post - mean) * inv_std)[:, :, 0].numpy()

    packed = pipe(PROMPT, negative_prompt=negative or (" " if guidance > 1 else None), true_cfg_scale=guidance,
                  num_inference_steps=steps, height=size, width=size, latents=noise,
                  output_type="latent").images
    ref["sigmas"] = pipe.scheduler.sigmas.numpy().astype(np.float32)
    latents = pipe._unpack_latents(packed, size, size, pipe.vae_scale_factor)
    ref["latents"] = latents[:, :, 0].numpy()
    ref["image"] = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0].numpy()
    return ref


def mu(cfg, seq):
    m = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_image_seq_len"] - cfg["base_image_seq_len"])
    return seq * m + cfg["base_shift"] - m * cfg["base_image_seq_len"]


def compare(d, ref):
    rows = {"ids": all(d[k].astype(np.int64).tolist() == ref[k].tolist() for k in ("ids", "neg_ids"))}
    for k, easel_key in [("prompt_embeds", "prompt_embeds"), ("neg_prompt_embeds", "neg_prompt_embeds"),
                         ("velocity0", "velocity0"), ("velocity_masked", "velocity_masked"),
                         ("vae_decoded", "image"), ("vae_encoded", "vae_encoded"), ("sigmas", "sigmas"),
                         ("latents", "latents"), ("image", "image")]:
        rows[k] = rel(d[easel_key], ref[k])
    return rows


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_golden(out, work, model, cases):
    """`tests/golden/qwen/<case>.safetensors` (diffusers' ids, packed noise, prompt embeddings,
    final latents, decoded image) and `cases.json` (parameters, the model's weight hashes), for
    the 32-px cases (about 26 KB each; a 64-px one is 69 KB)."""
    out.mkdir(parents=True, exist_ok=True)
    index = {
        "made_with": f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
        "prompt": PROMPT, "seed": NOISE_SEED, "model_seed": MODEL_SEED,
        "weights": {str(p.relative_to(model)): sha256(p) for p in sorted(model.rglob("*.safetensors"))},
        "cases": {},
    }
    for stale in out.glob("qwen-image-*.safetensors"):  # (the edit's fixtures live here too)
        stale.unlink()
    for name, (steps, guidance, negative, size, preset, d, ref, rows) in cases.items():
        tensors = {k: ref[k] for k in ("ids", "neg_ids", "prompt_embeds", "latents", "image")}
        tensors["noise"] = d["noise"]
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
        index["cases"][name] = {"steps": steps, "guidance": guidance, "negative": negative, "size": size,
                                "preset": preset, "easel_error_when_made": {k: float(f"{v:.2e}") for k, v in rows.items()
                                                                           if k != "ids"}}
    (out / "cases.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def run_cases(bin_path, work, scale="tiny", max_size=None):
    """Runs CASES (those up to `max_size` px), printing each row; returns (made, model, worst, ids_ok)."""
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"qwen-image-{scale}"
    if not model.exists():
        create_model(bin_path, model, scale)
    worst, ids_ok, made = 0.0, True, {}
    for name, steps, guidance, negative, size, preset in CASES:
        if max_size and size > max_size:
            continue
        d = easel_dump(bin_path, model, steps, guidance, negative, size, preset, work / f"{name}.easel.safetensors")
        ref = diffusers_run(model, d, steps, guidance, negative, size, preset)
        rows = compare(d, ref)
        ids_ok &= rows["ids"]
        errs = {k: v for k, v in rows.items() if k != "ids"}
        worst = max(worst, *errs.values())
        print(f"{name:<22} steps {steps} cfg {guidance:<3} {size}px ids {'same' if rows['ids'] else 'DIFFER'}  "
              + "  ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
        made[name] = (steps, guidance, negative, size, preset, d, ref, rows)
    return made, model, worst, ids_ok


def golden(bin_path, out, work):
    """What `golden.py` calls: the 32-px cases on a fresh tiny model, written to `out`."""
    shutil.rmtree(work, ignore_errors=True)
    made, model, _, _ = run_cases(bin_path, work, max_size=32)
    write_golden(out, work, model, made)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to easel-diffusion-parity")
    ap.add_argument("--work", default="/tmp/easel-parity-qwen")
    ap.add_argument("--scale", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, _, worst, ids_ok = run_cases(args.bin, pathlib.Path(args.work), args.scale)
    print(f"worst max relative error: {worst:.2e} ({'within' if worst <= 1e-3 else 'ABOVE'} the 1e-3 target)")
    sys.exit(0 if worst <= 1e-3 and ids_ok else 1)


if __name__ == "__main__":
    main()
