#!/usr/bin/env python3
"""Qwen-Image-Edit parity: Easel's vision tower, image processor and edit pipeline against
transformers' Qwen2.5-VL and diffusers' QwenImageEditPipeline.

`vision` writes `crates/easel-diffusion/tests/golden/qwen-edit/vision.safetensors` (+ `.json`):
a tiny Qwen2.5-VL vision tower made with torch.manual_seed(0) (weights rounded to f16 and stored so,
so both sides hold the same values), transformers' processor output for two images made from a
formula (84x112 and 56x56 pixels: several windows, a padded window row, two images in one
call), the tower's features, and PIL's Lanczos and bicubic resizes of a third formula image. The
Rust test `qwen_edit_vision` in tests/golden.rs recomputes all of it and prints the errors; this
script runs that test at the end (`--no-test` skips it).

`pipeline` (needs an Easel tiny qwen-image-edit made by create-random) runs diffusers'
QwenImageEditPipeline on Easel's folder with Easel's packed noise and compares the final latents
and the decoded image with Easel's `easel-diffusion-parity qwen-edit-dump`.

Run through run.sh: `scripts/parity/run.sh qwen-edit vision|pipeline`.
"""

import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
import diffusers  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from transformers import Qwen2_5_VLConfig  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VisionTransformerPretrainedModel,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

for _lib in (diffusers, transformers):
    _lib.utils.logging.set_verbosity_error()
    _lib.utils.logging.disable_progress_bar()

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "crates/easel-diffusion/tests/golden/qwen-edit"

# The tiny tower of the golden case: diffusers' test dims, full attention in block 1, 56-px
# windows (2x2 merge units) so an 84x112 image has several windows and a cut-short row.
VISION = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16,
          "window_size": 56, "fullatt_block_indexes": [1], "hidden_act": "silu", "in_chans": 3,
          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
IMAGES = [(112, 84), (56, 56)]  # (width, height), multiples of 28: the processor does not resize
RESIZE_SRC = (61, 43)
RESIZE_TO = {"lanczos": (32, 48), "bicubic": (84, 56)}


def formula_image(w, h, k=0):
    """The same 8-bit RGB image Easel's test makes (a smooth field plus a few edges)."""
    y, x = np.mgrid[0:h, 0:w]
    chans = []
    for c in range(3):
        v = (x * (3 + c + k) + y * (5 + 2 * c) + ((x // 7 + y // 5) % 2) * 60 + 40 * c) % 256
        chans.append(v)
    return np.stack(chans, -1).astype(np.uint8)


def rel(a, b):
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def vision(args):
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(vision_config={k: v for k, v in VISION.items() if k != "in_chans"}).vision_config
    cfg._attn_implementation = "eager"
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg).eval()
    with torch.no_grad():
        for p in tower.parameters():
            if torch.all(p == p.flatten()[0]):
                # Norm weights start at one and biases at zero: spread them so a missing one shows.
                p.add_(0.25 * torch.randn_like(p))
            p.copy_(p.half().float())
    proc = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=1024 * 1024)
    imgs = [Image.fromarray(formula_image(w, h, i)) for i, (w, h) in enumerate(IMAGES)]
    out = proc(images=imgs, return_tensors="pt")
    pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
    with torch.no_grad():
        feats = tower(pixel_values, grid_thw=grid).pooler_output
    pv = pixel_values.numpy().astype(np.float32)
    weights = {f"visual.{k}": v.half().numpy() for k, v in tower.state_dict().items()}
    src = formula_image(*RESIZE_SRC, 3)
    tensors = {
        **weights,
        "grid": grid.numpy().astype(np.int64),
        "patch_sum": pv.sum(1),
        "patch_dot": pv @ (np.arange(pv.shape[1], dtype=np.float32) / pv.shape[1]),
        "patch0": pv[:1],
        "features": feats.numpy().astype(np.float32),
    }
    for name, (w, h) in RESIZE_TO.items():
        flt = Image.LANCZOS if name == "lanczos" else Image.BICUBIC
        tensors[f"resize_{name}"] = np.asarray(Image.fromarray(src).resize((w, h), resample=flt))
    GOLDEN.mkdir(parents=True, exist_ok=True)
    path = GOLDEN / "vision.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    path.chmod(0o644)
    meta = {"made_with": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                         f"Pillow {Image.__version__}",
            "vision_config": VISION, "images": IMAGES, "resize_src": RESIZE_SRC, "resize_to": RESIZE_TO,
            "min_pixels": 28 * 28, "max_pixels": 1024 * 1024}
    (GOLDEN / "vision.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size} B; features {tuple(feats.shape)}, grid {grid.tolist()}")
    if not args.no_test:
        subprocess.run(["cargo", "test", "-q", "-p", "easel-diffusion", "--test", "golden", "qwen_edit_vision",
                        "--", "--nocapture"], check=True, cwd=ROOT)


PROMPT = "make it blue"
NEGATIVE = "bad quality"
MODEL_SEED = 0
NOISE_SEED = 1
# name, source (width, height, formula k), condition area, output size, steps, true_cfg_scale, negative
CASES = [
    # 224x224 at a 224² area: no resize anywhere (a multiple of 32 and of 28), so both sides see the same pixels.
    ("qwen-image-edit-cfg", (224, 224, 5), 224 * 224, 32, 2, 4.0, NEGATIVE),
    # A 61x43 source at a 64² area: Lanczos to 64x64, bicubic to 56x56 (the resizers' 1-2/255 show here).
    ("qwen-image-edit-resized", (61, 43, 7), 64 * 64, 32, 2, 1.0, ""),
]


def easel_dump(bin_path, model, src, area, size, steps, guidance, negative, out):
    cmd = [bin_path, "qwen-edit-dump", "--model", str(model), "--image", str(src), "--prompt", PROMPT,
           "--negative", negative, "--seed", str(NOISE_SEED), "--steps", str(steps), "--guidance", str(guidance),
           "--width", str(size), "--height", str(size), "--condition-pixels", str(area), "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return load_file(str(out))


def load_pipe(model, area, token_types=True):
    """diffusers' QwenImageEditPipeline on Easel's folder, the condition area set to `area` (diffusers
    hard-codes 1024²) and, with `token_types`, the text encoder given the processor's
    `mm_token_type_ids`, which diffusers 0.42.1 drops (transformers 5.23 then gives the image
    tokens 1-D positions instead of the 3-D ones the model was trained with)."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
    from diffusers import QwenImageEditPipeline
    from transformers import Qwen2Tokenizer, Qwen2VLProcessor

    calc = edit_module.__dict__.setdefault("_easel_calculate_dimensions", edit_module.calculate_dimensions)
    edit_module.calculate_dimensions = lambda _area, ratio: calc(area, ratio)
    pcfg = json.loads((model / "processor/preprocessor_config.json").read_text())
    keys = ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    # torchvision is not installed, so transformers has no video processor class to check against;
    # the edit sends no video.
    Qwen2VLProcessor.check_argument_for_proper_class = lambda self, name, arg: None
    proc = Qwen2VLProcessor(video_processor=None, image_processor=Qwen2VLImageProcessorPil(**{k: pcfg[k] for k in keys}),
                            tokenizer=Qwen2Tokenizer.from_pretrained(str(model / "tokenizer")))
    pipe = QwenImageEditPipeline.from_pretrained(str(model), processor=proc, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    te = pipe.text_encoder
    if token_types:
        forward = te.forward

        def with_token_types(*a, input_ids=None, **kw):
            if kw.get("pixel_values") is not None and kw.get("mm_token_type_ids") is None:
                kw["mm_token_type_ids"] = (input_ids == te.config.image_token_id).int()
            return forward(*a, input_ids=input_ids, **kw)

        te.forward = with_token_types
    return pipe


@torch.no_grad()
def diffusers_run(model, src_path, area, size, steps, guidance, negative, noise, token_types=True):
    pipe = load_pipe(model, area, token_types)
    img = Image.open(src_path).convert("RGB")
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
    cw, ch, _ = edit_module.calculate_dimensions(None, img.size[0] / img.size[1])
    prompt_image = pipe.image_processor.resize(img, ch, cw)
    ref = {"source_size": np.array([cw, ch], dtype=np.int64)}
    tmpl = pipe.prompt_template_encode
    inputs = pipe.processor(text=[tmpl.format(PROMPT)], images=prompt_image, padding=True, return_tensors="pt")
    ref["ids"] = inputs["input_ids"][0].numpy()
    neg = negative or " "
    ref["neg_ids"] = pipe.processor(text=[tmpl.format(neg)], images=prompt_image, padding=True,
                                    return_tensors="pt")["input_ids"][0].numpy()
    ref["patches"] = inputs["pixel_values"].numpy()
    feats = pipe.text_encoder.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    ref["features"] = torch.cat(list(feats), 0).numpy()
    ref["prompt_embeds"] = pipe.encode_prompt(PROMPT, image=prompt_image)[0].numpy()
    if guidance > 1:
        ref["neg_prompt_embeds"] = pipe.encode_prompt(neg, image=prompt_image)[0].numpy()
    vae_in = pipe.image_processor.preprocess(prompt_image, ch, cw).unsqueeze(2)
    lat = pipe._encode_vae_image(vae_in, None)
    ref["cond_tokens"] = pipe._pack_latents(lat, 1, lat.shape[1], lat.shape[3], lat.shape[4]).numpy()
    packed = pipe(image=img, prompt=PROMPT, negative_prompt=(neg if guidance > 1 else None), true_cfg_scale=guidance,
                  num_inference_steps=steps, height=size, width=size, latents=torch.from_numpy(noise),
                  output_type="latent").images
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents = pipe._unpack_latents(packed, size, size, pipe.vae_scale_factor)
    ref["latents"] = latents[:, :, 0].numpy()
    ref["image"] = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0].numpy()
    return ref


def compare(d, ref):
    rows = {"ids": all(d[k].astype(np.int64).tolist() == ref[k].tolist() for k in ("ids", "neg_ids")),
            "size": d["source_size"].tolist() == ref["source_size"].tolist()}
    for k in ("patches", "features", "prompt_embeds", "neg_prompt_embeds", "cond_tokens", "latents", "image"):
        if k in ref:
            rows[k] = rel(d[k], ref[k])
    return rows


def pipeline(args):
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "qwen-image-edit-tiny"
    if not model.exists():
        subprocess.run([args.bin, "create-random", "--family", "qwen-image-edit", "--scale", "tiny", "--out",
                        str(model), "--seed", str(MODEL_SEED)], check=True, stdout=subprocess.DEVNULL)
    worst, exact, made = 0.0, True, {}
    for name, (w, h, k), area, size, steps, guidance, negative in CASES:
        src = work / f"{name}.png"
        Image.fromarray(formula_image(w, h, k)).save(src)
        d = easel_dump(args.bin, model, src, area, size, steps, guidance, negative, work / f"{name}.easel.safetensors")
        ref = diffusers_run(model, src, area, size, steps, guidance, negative, d["noise"])
        rows = compare(d, ref)
        exact &= rows["ids"] and rows["size"]
        errs = {k: v for k, v in rows.items() if k not in ("ids", "size")}
        print(f"{name:<24} src {w}x{h} area {area} ids {'same' if rows['ids'] else 'DIFFER'} size "
              f"{'same' if rows['size'] else 'DIFFER'}  " + "  ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
        if name.endswith("cfg"):
            worst = max(worst, *errs.values())
            one_d = diffusers_run(model, src, area, size, steps, guidance, negative, d["noise"], token_types=False)
            print(f"  (reference without mm_token_type_ids, 1-D image positions: prompt_embeds "
                  f"{rel(d['prompt_embeds'], one_d['prompt_embeds']):.1e}, latents {rel(d['latents'], one_d['latents']):.1e})")
        made[name] = (w, h, k, area, size, steps, guidance, negative, d, ref, rows)
    print(f"worst max relative error on identical pixels: {worst:.2e} "
          f"({'within' if worst <= 1e-3 else 'ABOVE'} the 1e-3 target)")
    if args.golden:
        write_golden(model, made)
    return 0 if worst <= 1e-3 and exact else 1


def write_golden(model, made):
    """`tests/golden/qwen-edit/edit.safetensors` + `edit.json`: the no-resize case's reference ids,
    packed noise, prompt embeddings, final latents and image (about 40 KB)."""
    w, h, k, area, size, steps, guidance, negative, d, ref, rows = made["qwen-image-edit-cfg"]
    tensors = {key: ref[key] for key in ("ids", "neg_ids", "prompt_embeds", "latents", "image")}
    tensors["noise"] = d["noise"]
    save_file({key: np.ascontiguousarray(v) for key, v in tensors.items()}, str(GOLDEN / "edit.safetensors"))
    (GOLDEN / "edit.safetensors").chmod(0o644)
    meta = {"made_with": f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
                         f"torch {torch.__version__}",
            "prompt": PROMPT, "negative": negative, "seed": NOISE_SEED, "model_seed": MODEL_SEED,
            "source": [w, h, k], "condition_pixels": area, "size": size, "steps": steps, "guidance": guidance,
            "weights": {str(p.relative_to(model)): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(model.rglob("*.safetensors"))},
            "easel_error_when_made": {key: float(f"{v:.2e}") for key, v in rows.items() if key not in ("ids", "size")}}
    (GOLDEN / "edit.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN / 'edit.safetensors'} ({(GOLDEN / 'edit.safetensors').stat().st_size} B)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["vision", "pipeline"])
    ap.add_argument("--bin", help="path to easel-diffusion-parity (pipeline)")
    ap.add_argument("--no-test", action="store_true")
    ap.add_argument("--work", default="/tmp/easel-parity-qwen-edit")
    ap.add_argument("--golden", action="store_true", help="pipeline: also write tests/golden/qwen-edit/edit.*")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "vision":
        return vision(args)
    return pipeline(args)


if __name__ == "__main__":
    sys.exit(main())
