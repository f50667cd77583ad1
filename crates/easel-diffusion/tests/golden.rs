//! Numerics against diffusers, in CI without Python: each fixture in `tests/golden/` holds what
//! diffusers (versions in `cases.json`) computed for one case of `scripts/parity/parity.py`'s CASES (token ids,
//! initial noise, final latents, decoded image) on a tiny random model, written by
//! `scripts/parity/run.sh golden`. The model is not committed: each test recreates it with
//! `create-random`'s seed, checks the sha256 of its weight files first (so a change in
//! `random::create` reads as such, not as a math error), then runs Easel's pipeline through the
//! entry points of the parity dump (`pipeline::denoise`, `Vae::decode`) and compares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use easel_diffusion::Family;
use easel_diffusion::model::Model;
use easel_diffusion::noise::BatchNoise;
use easel_diffusion::pipeline::{self, Generate, Hooks, Preview};
use easel_diffusion::random::{Scale, create};
use easel_diffusion::scheduler::SchedulerKind;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Max |easel − diffusers| / max |diffusers| allowed for the latents and the image. The worst
/// measured is 3.7e-6 (sdxl-ddim's image; f32 summation order, candle's GEMM and convolutions
/// against oneDNN), so 3e-5 leaves 8× for other CPUs. 1e-4 would be too loose on these tiny
/// random models: swapping the UNet's exact GELU for candle's tanh approximation moves
/// sd-turbo's latents by only 8.5e-5 (and the other cases by 1.1e-4 to 3.6e-4); a 0.1 % change
/// to one Euler, DDIM or DPM++ coefficient moves them by 7e-4 to 4e-3.
const TOLERANCE: f32 = 3e-5;

const REGENERATE: &str =
    "regenerate the fixtures with `scripts/parity/run.sh golden` (see crates/easel-diffusion/README.md)";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// One case: its tensors (`<case>.safetensors`) and its parameters (`cases.json`).
struct Fixture {
    tensors: HashMap<String, Tensor>,
    index: Value,
    case: Value,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let path = golden_dir().join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        let index = cases_json();
        let case = index["cases"][name].clone();
        assert!(case.is_object(), "{name} is not in tests/golden/cases.json");
        Self { tensors, index, case }
    }

    /// A case's own value, else the one shared by every case.
    fn get(&self, key: &str) -> &Value {
        self.case.get(key).or_else(|| self.index.get(key)).unwrap_or_else(|| panic!("no `{key}` in cases.json"))
    }

    fn str(&self, key: &str) -> &str {
        self.get(key).as_str().unwrap_or_else(|| panic!("`{key}` in cases.json is not a string"))
    }

    fn num<T: serde::de::DeserializeOwned>(&self, key: &str) -> T {
        T::deserialize(self.get(key)).unwrap_or_else(|e| panic!("`{key}` in cases.json: {e}"))
    }

    fn ids(&self, name: &str) -> Option<Vec<u32>> {
        let t = self.tensors.get(name)?;
        Some(t.to_vec1::<i64>().unwrap().into_iter().map(|i| u32::try_from(i).unwrap()).collect())
    }
}

fn cases_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir().join("cases.json")).unwrap()).unwrap()
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// max |a − b| / max |b|
fn rel_error(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff / scale.max(1e-12)
}

fn check(case: &str) {
    let fx = Fixture::load(case);
    let family = Family::parse(fx.str("family")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    create(family, Scale::Tiny, dir.path(), fx.num("model_seed"), None).unwrap();
    let want: HashMap<String, String> = serde_json::from_value(fx.index["models"][fx.str("family")].clone()).unwrap();
    assert!(!want.is_empty(), "{case}: the fixture records no weight files");
    for (file, hash) in &want {
        assert_eq!(
            &sha256_hex(&dir.path().join(file)),
            hash,
            "{case}: create-random now writes different weights for {file}: if that is intended, {REGENERATE}"
        );
    }

    let dev = Device::Cpu;
    let model = Model::load(dir.path(), family, &dev, DType::F32, None).unwrap();
    let prompt = fx.str("prompt");
    assert_eq!(Some(model.text.tokenizer.encode(prompt).unwrap().ids), fx.ids("input_ids"), "{case}: token ids");
    let ids2 = model.text2.as_ref().map(|t| t.tokenizer.encode(prompt).unwrap().ids);
    assert_eq!(ids2, fx.ids("input_ids_2"), "{case}: second encoder's token ids");

    let (size, seed): (usize, u64) = (fx.num("size"), fx.num("seed"));
    let f = model.latent_factor();
    let c = model.vae.config().latent_channels;
    let noise = BatchNoise::new(&[seed]).draw((c, size / f, size / f), &dev).unwrap();
    let want_noise = &fx.tensors["noise"];
    assert_eq!(
        noise.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want_noise.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        "{case}: the seeded noise changed: if that is intended, {REGENERATE}"
    );

    let scheduler: SchedulerKind = serde_json::from_value(serde_json::json!(fx.str("scheduler"))).unwrap();
    let g = Generate {
        prompt: prompt.to_string(),
        negative_prompt: fx.str("negative").to_string(),
        width: size,
        height: size,
        seeds: vec![seed],
        steps: fx.num("steps"),
        guidance_scale: fx.num("guidance"),
        scheduler,
        init: None,
        partials: 0,
        preview: Preview::Approx,
    };
    let never = || false;
    let mut hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
    let latents = pipeline::denoise(&model, &g, &mut hooks).unwrap();
    let image = model.vae.decode(&latents).unwrap();
    let lat = rel_error(&latents, &fx.tensors["latents"]);
    let img = rel_error(&image, &fx.tensors["image"]);
    println!("{case}: max relative error against diffusers: latents {lat:.2e}, image {img:.2e}");
    assert!(lat <= TOLERANCE, "{case}: final latents differ from diffusers' by {lat:.2e} (> {TOLERANCE:.0e})");
    assert!(img <= TOLERANCE, "{case}: decoded image differs from diffusers' by {img:.2e} (> {TOLERANCE:.0e})");
}

/// One test per fixture, named after its case.
macro_rules! golden {
    ($($name:ident => $case:literal,)*) => {
        $(#[test]
        fn $name() {
            check($case);
        })*

        #[test]
        fn every_fixture_has_a_test() {
            let mut files: Vec<String> = std::fs::read_dir(golden_dir())
                .unwrap()
                .map(|e| e.unwrap())
                // Folders hold other families' fixtures, each checked by its own tests.
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let mut want: Vec<String> = [$($case),*].iter().map(|c| format!("{c}.safetensors")).collect();
            want.push("cases.json".to_string());
            want.sort();
            assert_eq!(files, want, "every fixture in tests/golden/ (one per case of parity.py's CASES) needs a test here");
            let mut cases: Vec<&str> = vec![$($case),*];
            cases.sort();
            let index = cases_json();
            let mut listed: Vec<&str> = index["cases"].as_object().unwrap().keys().map(String::as_str).collect();
            listed.sort();
            assert_eq!(listed, cases, "cases.json and the tests disagree");
        }
    };
}

golden! {
    sd15_ddim => "sd-1.5-ddim",
    sd15_euler => "sd-1.5-euler",
    sd15_dpmpp_2m_karras => "sd-1.5-dpmpp_2m_karras",
    sd21_euler => "sd-2.1-euler",
    sd_turbo_euler_ancestral => "sd-turbo-euler_ancestral",
    sdxl_euler => "sdxl-euler",
    sdxl_ddim => "sdxl-ddim",
    sdxl_turbo_euler_ancestral => "sdxl-turbo-euler_ancestral",
}

/// Qwen-Image-Edit's image branch against transformers (`scripts/parity/run.sh qwen-edit vision`):
/// the Qwen2-VL processor's patches of two formula images (no resize: both are multiples of 28),
/// a tiny Qwen2.5-VL vision tower's features for both in one call (windows, a cut-short window
/// row, full attention in block 1, two images), and PIL's Lanczos and bicubic resizes.
mod qwen_edit {
    use super::*;
    use easel_diffusion::qwen::processor::{self, Filter, ProcessorConfig};
    use easel_diffusion::qwen::vision::{VisionConfig, VisionTower};
    use image::RgbImage;

    fn dir() -> PathBuf {
        golden_dir().join("qwen-edit")
    }

    /// scripts/parity/qwen_edit.py's `formula_image`.
    fn formula_image(w: u32, h: u32, k: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb(std::array::from_fn(|c| {
                let c = c as u32;
                ((x * (3 + c + k) + y * (5 + 2 * c) + ((x / 7 + y / 5) % 2) * 60 + 40 * c) % 256) as u8
            }))
        })
    }

    fn pair(v: &Value) -> (u32, u32) {
        (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
    }

    #[test]
    fn qwen_edit_vision() {
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("vision.json")).unwrap()).unwrap();
        let file = dir().join("vision.safetensors");
        let t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let cfg = ProcessorConfig {
            min_pixels: meta["min_pixels"].as_u64().unwrap() as usize,
            max_pixels: meta["max_pixels"].as_u64().unwrap() as usize,
            ..ProcessorConfig::default()
        };
        let mut all = Vec::new();
        let mut grids = Vec::new();
        for (k, wh) in meta["images"].as_array().unwrap().iter().enumerate() {
            let (w, h) = pair(wh);
            let (p, grid) = processor::process(&formula_image(w, h, k as u32), &cfg).unwrap();
            all.extend(p);
            grids.push(grid);
        }
        let want_grid: Vec<i64> = t["grid"].flatten_all().unwrap().to_vec1().unwrap();
        let got_grid: Vec<i64> = grids.iter().flat_map(|g| [g.t as i64, g.h as i64, g.w as i64]).collect();
        assert_eq!(got_grid, want_grid, "patch grids");
        let dim = 3 * 2 * 14 * 14;
        let patches = Tensor::from_vec(
            all,
            (want_grid.chunks(3).map(|g| g[0] * g[1] * g[2]).sum::<i64>() as usize, dim),
            &Device::Cpu,
        )
        .unwrap();
        let ramp = Tensor::arange(0f32, dim as f32, &Device::Cpu).unwrap().affine(1.0 / dim as f64, 0.0).unwrap();
        let sum = patches.sum(1).unwrap();
        let dot = patches.matmul(&ramp.unsqueeze(1).unwrap()).unwrap().squeeze(1).unwrap();
        let p0 = patches.narrow(0, 0, 1).unwrap();
        let errs = [rel_error(&sum, &t["patch_sum"]), rel_error(&dot, &t["patch_dot"]), rel_error(&p0, &t["patch0"])];
        let vcfg = VisionConfig::from_json(&meta["vision_config"]).unwrap();
        let vb = easel_diffusion::weights::var_builder(&file, DType::F32, &Device::Cpu).unwrap();
        let tower = VisionTower::load(vb, &vcfg).unwrap();
        let feats = tower.forward(&patches, &grids).unwrap();
        let ferr = rel_error(&feats, &t["features"]);
        println!(
            "qwen-edit vision: patches (sum, order, first) {:.2e} {:.2e} {:.2e}; tower features {ferr:.2e}",
            errs[0], errs[1], errs[2]
        );
        for e in errs {
            assert!(e <= 1e-6, "the processor's patches differ from transformers' by {e:.2e}");
        }
        assert!(ferr <= TOLERANCE, "vision tower features differ from transformers' by {ferr:.2e} (> {TOLERANCE:.0e})");

        // PIL's resamplers: fast_image_resize rounds its 16-bit fixed-point weights differently from
        // Pillow's 22-bit ones: a few values land one or two levels of 255 apart (measured: 2).
        let (sw, sh) = pair(&meta["resize_src"]);
        let src = formula_image(sw, sh, 3);
        for (name, filter) in [("lanczos", Filter::Lanczos), ("bicubic", Filter::Bicubic)] {
            let (w, h) = pair(&meta["resize_to"][name]);
            let got = processor::resize(&src, w, h, filter).unwrap();
            let want: Vec<u8> = t[&format!("resize_{name}")].flatten_all().unwrap().to_vec1().unwrap();
            let diffs: Vec<i32> =
                got.as_raw().iter().zip(&want).map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs()).collect();
            let worst = diffs.iter().copied().max().unwrap();
            let off = diffs.iter().filter(|&&d| d > 0).count();
            println!(
                "qwen-edit resize {name} {sw}x{sh} -> {w}x{h}: max |Δ| {worst}/255, {off} of {} values differ",
                diffs.len()
            );
            assert!(worst <= 2, "{name} resize differs from PIL's by {worst}/255");
        }
    }

    /// The whole edit on the tiny random model (`create-random --family qwen-image-edit`, weights
    /// checked by hash) against diffusers' `QwenImageEditPipeline` (`run.sh qwen-edit pipeline
    /// --golden`): a 224² formula source at a 224² condition area (no resize on either side),
    /// true CFG, 2 steps; template ids with the image tokens, prompt embeddings, final latents
    /// and decoded image.
    #[test]
    fn qwen_edit_pipeline() {
        use easel_diffusion::pipeline::InitImage;
        use easel_diffusion::qwen::{QwenModel, edit, pipeline as qp};

        let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("edit.json")).unwrap()).unwrap();
        let t = candle_core::safetensors::load(dir().join("edit.safetensors"), &Device::Cpu).unwrap();
        let model_dir = tempfile::tempdir().unwrap();
        let seed = meta["model_seed"].as_u64().unwrap();
        easel_diffusion::random::create_any(Family::QwenImageEdit, Scale::Tiny, model_dir.path(), seed, None).unwrap();
        for (file, hash) in meta["weights"].as_object().unwrap() {
            assert_eq!(
                sha256_hex(&model_dir.path().join(file)),
                hash.as_str().unwrap(),
                "create-random now writes different weights for {file}: if that is intended, regenerate with \
                 `scripts/parity/run.sh qwen-edit pipeline --golden`"
            );
        }
        let dev = Device::Cpu;
        let mut model = QwenModel::load(model_dir.path(), Family::QwenImageEdit, &dev, DType::F32, None, None).unwrap();
        model.condition_pixels = meta["condition_pixels"].as_u64().unwrap();
        let src = &meta["source"];
        let image = std::sync::Arc::new(image::DynamicImage::ImageRgb8(formula_image(
            src[0].as_u64().unwrap() as u32,
            src[1].as_u64().unwrap() as u32,
            src[2].as_u64().unwrap() as u32,
        )));
        let size = meta["size"].as_u64().unwrap() as usize;
        let g = Generate {
            prompt: meta["prompt"].as_str().unwrap().to_string(),
            negative_prompt: meta["negative"].as_str().unwrap().to_string(),
            width: size,
            height: size,
            seeds: vec![meta["seed"].as_u64().unwrap()],
            steps: meta["steps"].as_u64().unwrap() as usize,
            guidance_scale: meta["guidance"].as_f64().unwrap(),
            scheduler: SchedulerKind::Euler,
            init: Some(InitImage { image: image.clone(), mask: None, strength: 1.0 }),
            partials: 0,
            preview: Preview::Vae,
        };
        let cfg = model.processor.clone().unwrap();
        let (prompts, condition) = edit::prepare(&model, &g, &image, model.condition_pixels, &cfg).unwrap();
        let want_ids: Vec<i64> = t["ids"].to_vec1().unwrap();
        let n = want_ids.iter().filter(|&&i| i == 151_655).count();
        let (ids, _) = edit::template_ids(&model.tokenizer, &g.prompt, n).unwrap();
        assert_eq!(ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(), want_ids, "template ids");
        let noise = qp::initial_noise(&model, &g).unwrap();
        assert_eq!(
            noise.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            t["noise"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "the seeded noise changed"
        );
        let never = || false;
        let mut hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
        let latents = qp::denoise(&model, &g, &prompts, Some(&condition), noise, &mut hooks).unwrap();
        let image = model.vae.decode(&latents).unwrap();
        let errs = [
            ("prompt_embeds", rel_error(&prompts.cond, &t["prompt_embeds"])),
            ("latents", rel_error(&latents, &t["latents"])),
            ("image", rel_error(&image, &t["image"])),
        ];
        println!("qwen-edit pipeline against diffusers: {errs:?}");
        for (what, e) in errs {
            assert!(e <= TOLERANCE, "qwen-image-edit {what} differ from diffusers' by {e:.2e} (> {TOLERANCE:.0e})");
        }
    }
}

/// FLUX.1 schnell and dev against diffusers (`tests/golden/flux/`, written by
/// `scripts/parity/run.sh golden` through flux.py's `write_golden`): token ids and the packed
/// seeded noise exactly, then each component on its own — T5's first positions and CLIP's pooled
/// output (against a float64 reference), one transformer call, the sigmas, the VAE encoding the
/// fixture's image — and the whole loop's latents and decoded image.
mod flux {
    use super::*;
    use easel_diffusion::flow::pack;
    use easel_diffusion::flux::{FluxModel, pipeline as flux};
    use easel_diffusion::random::create_any;

    fn dir() -> PathBuf {
        golden_dir().join("flux")
    }

    fn ids(t: &Tensor) -> Vec<u32> {
        t.to_vec1::<i64>().unwrap().into_iter().map(|i| u32::try_from(i).unwrap()).collect()
    }

    fn check(case: &str) {
        let index: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
        let c = &index["cases"][case];
        assert!(c.is_object(), "{case} is not in tests/golden/flux/cases.json");
        let file = dir().join(format!("{case}.safetensors"));
        let fx = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let family = Family::parse(c["family"].as_str().unwrap()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        create_any(family, Scale::Tiny, tmp.path(), index["model_seed"].as_u64().unwrap(), None).unwrap();
        let want: HashMap<String, String> = serde_json::from_value(index["models"][case].clone()).unwrap();
        assert!(!want.is_empty(), "{case}: the fixture records no weight files");
        for (f, hash) in &want {
            assert_eq!(
                &sha256_hex(&tmp.path().join(f)),
                hash,
                "{case}: create-random now writes different weights for {f}: if that is intended, {REGENERATE}"
            );
        }

        let dev = Device::Cpu;
        let model = FluxModel::load(tmp.path(), family, &dev, DType::F32, None).unwrap();
        let (clip_ids, t5_ids) = model.text.ids(index["prompt"].as_str().unwrap(), model.max_sequence_length).unwrap();
        assert_eq!(clip_ids, ids(&fx["clip_ids"]), "{case}: CLIP token ids");
        assert_eq!(t5_ids, ids(&fx["t5_ids"]), "{case}: T5 token ids");
        let size_px = index["size"].as_u64().unwrap() as usize;
        let size = flux::latent_size(&model, size_px, size_px).unwrap();
        let c_lat = model.transformer_config.latent_channels();
        let seed = index["seed"].as_u64().unwrap();
        let noise = pack(&BatchNoise::new(&[seed]).draw((c_lat, size.0, size.1), &dev).unwrap()).unwrap();
        assert_eq!(
            noise.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            fx["noise"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{case}: the seeded noise changed: if that is intended, {REGENERATE}"
        );

        let mut errs: Vec<(&str, f32)> = Vec::new();
        let prompt = model.text.encode_ids(&clip_ids, &t5_ids).unwrap();
        let head = fx["t5_head"].dim(1).unwrap();
        errs.push(("t5", rel_error(&prompt.t5.narrow(1, 0, head).unwrap(), &fx["t5_head"])));
        errs.push(("pooled", rel_error(&prompt.pooled, &fx["pooled"])));
        let steps = c["steps"].as_u64().unwrap() as usize;
        let guidance = c["guidance"].as_f64().unwrap() as f32;
        let schedule = flux::schedule(&model, steps, size);
        let sigmas = Tensor::new(schedule.sigmas(), &dev).unwrap();
        errs.push(("sigmas", rel_error(&sigmas, &fx["sigmas"])));
        let rope = flux::rope(&model, t5_ids.len(), size).unwrap();
        let g = model.transformer_config.guidance_embeds.then_some([guidance]);
        let velocity = model
            .transformer
            .get()
            .unwrap()
            .forward(
                &noise,
                &prompt.t5,
                &prompt.pooled,
                &[schedule.model_t(0)],
                g.as_ref().map(|g| g.as_slice()),
                &rope,
            )
            .unwrap();
        errs.push(("velocity", rel_error(&velocity, &fx["velocity"])));
        let s = flux::Sampling { prompt: &prompt, schedule: &schedule, start: 0, guidance, size, partials: 0 };
        let never = || false;
        let mut hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
        let latents = flux::sample(&model, noise, &s, &mut hooks).unwrap();
        errs.push(("latents", rel_error(&latents, &fx["latents"])));
        errs.push(("image", rel_error(&flux::decode(&model, &latents, size).unwrap(), &fx["image"])));
        errs.push(("vae encode", rel_error(&model.vae.encode(&fx["image"]).unwrap(), &fx["vae_encoded"])));
        let line: Vec<String> = errs.iter().map(|(k, e)| format!("{k} {e:.2e}")).collect();
        println!("{case}: max relative error against diffusers: {}", line.join(", "));
        for (k, e) in errs {
            assert!(e <= TOLERANCE, "{case}: {k} differs from diffusers' by {e:.2e} (> {TOLERANCE:.0e})");
        }
    }

    #[test]
    fn flux_schnell() {
        check("flux-schnell");
    }

    #[test]
    fn flux_dev() {
        check("flux-dev");
    }

    #[test]
    fn every_flux_fixture_has_a_test() {
        let mut files: Vec<String> =
            std::fs::read_dir(dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        assert_eq!(files, ["cases.json", "flux-dev.safetensors", "flux-schnell.safetensors"]);
    }
}

/// Qwen-Image text to image against diffusers (`scripts/parity/qwen.py --golden`): the template
/// token ids of prompt and negative, the prompt embeddings, and the whole run (true CFG with its
/// rescale, the folder's dynamic-shift schedule with `shift_terminal`, or the Lightning preset)
/// from Easel's seeded packed noise to the final latents and the decoded image.
mod qwen {
    use super::*;
    use easel_diffusion::qwen::pipeline::{self as qp, Prompts};
    use easel_diffusion::qwen::text::{T2I_DROP, T2I_TEMPLATE, TOKENIZER_MAX};
    use easel_diffusion::qwen::{FlowPreset, QwenModel};

    fn dir() -> PathBuf {
        golden_dir().join("qwen")
    }

    fn check(case: &str) {
        let index: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
        let c = &index["cases"][case];
        let bytes = std::fs::read(dir().join(format!("{case}.safetensors"))).unwrap();
        let fx = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        let model_dir = tempfile::tempdir().unwrap();
        let seed = index["model_seed"].as_u64().unwrap();
        easel_diffusion::qwen::random::create(Family::QwenImage, Scale::Tiny, model_dir.path(), seed).unwrap();
        for (file, hash) in index["weights"].as_object().unwrap() {
            assert_eq!(
                sha256_hex(&model_dir.path().join(file)),
                hash.as_str().unwrap(),
                "{case}: create-random now writes different weights for {file}: if that is intended, {REGENERATE}"
            );
        }
        let preset = c["preset"].as_str().map(|p| serde_json::from_value::<FlowPreset>(p.into()).unwrap());
        let dev = Device::Cpu;
        let model = QwenModel::load(model_dir.path(), Family::QwenImage, &dev, DType::F32, preset, None).unwrap();
        let size = c["size"].as_u64().unwrap() as usize;
        let g = Generate {
            prompt: index["prompt"].as_str().unwrap().to_string(),
            negative_prompt: c["negative"].as_str().unwrap().to_string(),
            width: size,
            height: size,
            seeds: vec![index["seed"].as_u64().unwrap()],
            steps: c["steps"].as_u64().unwrap() as usize,
            guidance_scale: c["guidance"].as_f64().unwrap(),
            scheduler: SchedulerKind::Euler,
            init: None,
            partials: 0,
            preview: Preview::Vae,
        };
        let ids = |p: &str| -> Vec<i64> {
            let ids = model.tokenizer.encode(&T2I_TEMPLATE.replace("{}", p), TOKENIZER_MAX + T2I_DROP).unwrap();
            ids.into_iter().map(i64::from).collect()
        };
        assert_eq!(ids(&g.prompt), fx["ids"].to_vec1::<i64>().unwrap(), "{case}: prompt token ids");
        assert_eq!(ids(qp::negative_prompt(&g)), fx["neg_ids"].to_vec1::<i64>().unwrap(), "{case}: negative ids");
        let noise = qp::initial_noise(&model, &g).unwrap();
        assert_eq!(
            noise.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            fx["noise"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{case}: the seeded noise changed: if that is intended, {REGENERATE}"
        );
        let prompts: Prompts = qp::encode(&model, &g).unwrap();
        let never = || false;
        let mut hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
        let latents = qp::denoise(&model, &g, &prompts, None, noise, &mut hooks).unwrap();
        let errs = [
            ("prompt embeddings", rel_error(&prompts.cond, &fx["prompt_embeds"])),
            ("latents", rel_error(&latents, &fx["latents"])),
            ("image", rel_error(&model.vae.decode(&latents).unwrap(), &fx["image"])),
        ];
        let line: Vec<String> = errs.iter().map(|(k, e)| format!("{k} {e:.2e}")).collect();
        println!("{case}: max relative error against diffusers: {}", line.join(", "));
        for (k, e) in errs {
            assert!(e <= TOLERANCE, "{case}: {k} differs from diffusers' by {e:.2e} (> {TOLERANCE:.0e})");
        }
    }

    #[test]
    fn qwen_image_true_cfg() {
        check("qwen-image-cfg");
    }

    #[test]
    fn qwen_image_lightning() {
        check("qwen-image-lightning");
    }

    #[test]
    fn every_qwen_fixture_has_a_test() {
        // The text-to-image fixtures (qwen.py's); the edit's (`edit.*`) are checked by its own test.
        let mut files: Vec<String> = std::fs::read_dir(dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("qwen-image-"))
            .collect();
        files.sort();
        assert_eq!(files, ["qwen-image-cfg.safetensors", "qwen-image-lightning.safetensors"]);
        assert!(dir().join("cases.json").is_file());
    }
}
