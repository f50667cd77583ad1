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
    let model = Model::load(dir.path(), family, &dev, DType::F32).unwrap();
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
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
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
