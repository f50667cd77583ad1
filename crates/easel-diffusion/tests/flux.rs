//! FLUX.1 through the local backend, on tiny random folders written by `create-random` (diffusers'
//! own test configuration) and loaded through the real loading path (32 px images, 256 tokens, so debug builds stay fast): seeds, `n`, img2img edits,
//! partial images, the family's refusals, and folders that must fail to load naming what is wrong.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

mod common;

use common::{model_dir, run};
use easel_core::backend::{BackendOutput, CallContext, OutputImage, SharedBackend};
use easel_core::error::BackendError;
use easel_core::testing::CallBuilder;
use easel_core::types::{ImageSize, Operation};
use image::{DynamicImage, Rgba, RgbaImage};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A copy of a tiny folder to break.
fn copy_of(family: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let target = to.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&model_dir(family), dir.path());
    dir
}

fn options(family: &str, path: &Path, extra: serde_json::Value) -> serde_json::Value {
    let mut options = json!({"family": family, "path": path, "min_edge": 16, "default_size": "32x32"});
    for (k, v) in extra.as_object().unwrap() {
        options[k] = v.clone();
    }
    options
}

/// The backend once ready, or the reason it is not.
async fn start(options: serde_json::Value) -> Result<SharedBackend, String> {
    common::start("flux", &options).await
}

async fn backend(family: &str, extra: serde_json::Value) -> SharedBackend {
    start(options(family, &model_dir(family), extra)).await.unwrap()
}

fn with(operation: Operation, prompt: &str, seed: u64, n: u32) -> CallBuilder {
    CallBuilder::new(operation).prompt(prompt).seed(seed).n(n).size(32, 32)
}

fn source() -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(32, 32, |x, y| Rgba([(x * 8) as u8, (y * 8) as u8, 128, 255])))
}

fn pixels(out: &BackendOutput) -> Vec<Vec<u8>> {
    common::pixels(out, (32, 32))
}

#[tokio::test]
async fn seeds_and_n_for_schnell_and_dev() {
    for family in ["flux-schnell", "flux-dev"] {
        let b = backend(family, json!({"steps": 2})).await;
        let two = pixels(&run(&b, with(Operation::Generate, "a fox", 3, 2).build()).await.unwrap());
        assert_ne!(two[0], two[1], "{family}: n images are distinct");
        let alone = pixels(&run(&b, with(Operation::Generate, "a fox", 4, 1).build()).await.unwrap());
        let worst = alone[0].iter().zip(&two[1]).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert_eq!(worst, 0, "{family}: image i of a batch has seed + i, alone or batched");
        let other = pixels(&run(&b, with(Operation::Generate, "a hen", 3, 1).build()).await.unwrap());
        assert_ne!(other[0], two[0], "{family}: the prompt conditions the image");
    }
}

#[tokio::test]
async fn dev_guidance_changes_the_image() {
    let b = backend("flux-dev", json!({"steps": 2})).await;
    let mut c = with(Operation::Generate, "a fox", 3, 1).build();
    c.options.extensions.guidance_scale = Some(1.0);
    let low = pixels(&run(&b, c.clone()).await.unwrap());
    c.options.extensions.guidance_scale = Some(6.0);
    let high = pixels(&run(&b, c).await.unwrap());
    assert_ne!(low, high);
}

#[tokio::test]
async fn edits_are_img2img_with_strength() {
    let b = backend("flux-schnell", json!({"steps": 4})).await;
    let mut c = with(Operation::Edit, "make it blue", 9, 1).image(&source()).build();
    c.options.extensions.strength = Some(0.3);
    let light = pixels(&run(&b, c.clone()).await.unwrap());
    c.options.extensions.strength = Some(1.0);
    let full = pixels(&run(&b, c).await.unwrap());
    let plain = pixels(&run(&b, with(Operation::Generate, "make it blue", 9, 1).build()).await.unwrap());
    assert_eq!(full, plain, "strength 1 starts from pure noise, as a generation");
    assert_ne!(light, full, "a light edit starts from the source");
}

#[tokio::test]
async fn partial_images_render_the_progress() {
    let b = backend("flux-schnell", json!({"steps": 4})).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut c = with(Operation::Generate, "streaming", 4, 1).build();
    c.partial_images = 2;
    let out = b.call(c, CallContext { cancel: CancellationToken::new(), partials: Some(tx) }).await.unwrap();
    let last = pixels(&out);
    let mut partials = Vec::new();
    while let Ok(p) = rx.try_recv() {
        partials.push(p);
    }
    assert_eq!(partials.iter().map(|p| p.index).collect::<Vec<_>>(), vec![0, 1]);
    for p in &partials {
        let OutputImage::Pixels(img) = &p.image else { panic!("pixels expected") };
        assert_ne!(img.to_rgb8().into_raw(), last[0], "a partial before the end equals the final image");
    }
}

#[tokio::test]
async fn capabilities_and_refusals() {
    let b = backend("flux-schnell", json!({})).await;
    let caps = b.capabilities();
    assert_eq!(caps.max_input_images, 1);
    assert!(caps.sizes.check(ImageSize::new(72, 64)).is_err(), "FLUX sizes are multiples of 16");
    assert!(caps.sizes.check(ImageSize::new(80, 64)).is_ok());
    let mask = DynamicImage::ImageRgba8(RgbaImage::from_pixel(32, 32, Rgba([0, 0, 0, 0])));
    let c = with(Operation::Edit, "p", 1, 1).image(&source()).mask(&mask).build();
    match run(&b, c).await {
        Err(BackendError::InvalidInput { param: Some(p), message }) => {
            assert_eq!(p, "mask");
            assert!(message.contains("inpainting"), "{message}");
        }
        other => panic!("a mask must be refused, got {:?}", other.map(|o| o.images.len())),
    }
}

#[test]
fn check_config_reads_flux_folders() {
    let dir = model_dir("flux-schnell");
    easel_diffusion::check("m", &json!({"family": "flux-schnell", "path": dir})).unwrap();
    let err = easel_diffusion::check("m", &json!({"family": "flux-dev", "path": dir})).unwrap_err();
    assert!(format!("{err:#}").contains("guidance_embeds"), "{err:#}");
    let err = easel_diffusion::check("m", &json!({"family": "flux-dev", "path": dir, "min_edge": 40})).unwrap_err();
    assert!(format!("{err:#}").contains("multiples of 16"), "{err:#}");
}

#[tokio::test]
async fn broken_folders_fail_to_load_naming_the_file_or_tensor() {
    // A missing weights file.
    let dir = copy_of("flux-schnell");
    std::fs::remove_file(dir.path().join("transformer/diffusion_pytorch_model.safetensors")).unwrap();
    let why = start(options("flux-schnell", dir.path(), json!({}))).await.err().unwrap();
    assert!(why.contains("diffusion_pytorch_model") && why.contains("transformer"), "{why}");

    // A config that is not JSON.
    let dir = copy_of("flux-schnell");
    std::fs::write(dir.path().join("scheduler/scheduler_config.json"), "{not json").unwrap();
    let why = start(options("flux-schnell", dir.path(), json!({}))).await.err().unwrap();
    assert!(why.contains("scheduler_config.json"), "{why}");

    // A tensor of the wrong shape.
    let dir = copy_of("flux-schnell");
    let file = dir.path().join("transformer/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    tensors.insert("x_embedder.weight".into(), Tensor::zeros((32, 5), candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let why = start(options("flux-schnell", dir.path(), json!({}))).await.err().unwrap();
    assert!(why.contains("x_embedder.weight") && why.contains("shape"), "{why}");
}

#[tokio::test]
async fn sharded_transformer_weights_load_as_one_file() {
    let dir = copy_of("flux-schnell");
    let t = dir.path().join("transformer");
    let file = t.join("diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    std::fs::remove_file(&file).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (name, tensor)) in tensors.into_iter().enumerate() {
        let shard = if i % 2 == 0 {
            "diffusion_pytorch_model-00001-of-00002.safetensors"
        } else {
            "diffusion_pytorch_model-00002-of-00002.safetensors"
        };
        map.insert(name.clone(), json!(shard));
        if i % 2 == 0 {
            a.insert(name, tensor)
        } else {
            b.insert(name, tensor)
        };
    }
    candle_core::safetensors::save(&a, t.join("diffusion_pytorch_model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, t.join("diffusion_pytorch_model-00002-of-00002.safetensors")).unwrap();
    let index = json!({"metadata": {}, "weight_map": map});
    std::fs::write(t.join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = start(options("flux-schnell", dir.path(), json!({"steps": 1}))).await.unwrap();
    let whole = backend("flux-schnell", json!({"steps": 1})).await;
    let c = with(Operation::Generate, "a fox", 3, 1).build();
    assert_eq!(pixels(&run(&sharded, c.clone()).await.unwrap()), pixels(&run(&whole, c).await.unwrap()));
}

#[tokio::test]
async fn bf16_runs_on_the_cpu() {
    let b = backend("flux-schnell", json!({"steps": 2, "dtype": "bf16"})).await;
    let half = pixels(&run(&b, with(Operation::Generate, "a fox", 3, 1).build()).await.unwrap());
    let again = pixels(&run(&b, with(Operation::Generate, "a fox", 3, 1).build()).await.unwrap());
    assert_eq!(half, again, "bf16 is deterministic too");
    let full = backend("flux-schnell", json!({"steps": 2})).await;
    let exact = pixels(&run(&full, with(Operation::Generate, "a fox", 3, 1).build()).await.unwrap());
    let mean =
        half[0].iter().zip(&exact[0]).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / exact[0].len() as f64;
    assert!(mean < 8.0, "bf16 strays {mean} grey levels on average from f32");
}
