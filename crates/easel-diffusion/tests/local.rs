//! End-to-end tests of the local backend on tiny random models written by `create-random` and
//! loaded back through the real loading path. Images are 64 px so debug builds stay fast.

use std::time::{Duration, Instant};

mod common;

use common::{model_dir, run, start};
use easel_core::backend::{BackendCall, BackendOutput, CallContext, OutputImage, PixelInput, SharedBackend};
use easel_core::error::BackendError;
use easel_core::testing::CallBuilder;
use easel_core::types::{ImageSize, Operation};
use easel_diffusion::random::{Scale, create};
use easel_diffusion::{Family, build};
use image::{DynamicImage, Rgba, RgbaImage};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn backend(family: &str, extra: serde_json::Value) -> SharedBackend {
    let mut options = json!({"family": family, "path": model_dir(family), "min_edge": 32, "default_size": "64x64"});
    for (k, v) in extra.as_object().unwrap() {
        options[k] = v.clone();
    }
    start("test", &options).await.unwrap()
}

fn call(prompt: &str, seed: u64, n: u32) -> BackendCall {
    with(Operation::Generate, prompt, seed, n).build()
}

fn with(operation: Operation, prompt: &str, seed: u64, n: u32) -> CallBuilder {
    CallBuilder::new(operation).prompt(prompt).seed(seed).n(n)
}

fn source() -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(64, 64, |x, y| Rgba([(x * 4) as u8, (y * 4) as u8, 128, 255])))
}

/// Transparent (repaint) on the left half, opaque on the right.
fn half_mask() -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(64, 64, |x, _| Rgba([0, 0, 0, if x < 32 { 0 } else { 255 }])))
}

fn pixels(out: &BackendOutput) -> Vec<Vec<u8>> {
    common::pixels(out, (64, 64))
}

#[tokio::test]
async fn same_seed_same_bytes_other_seed_other_image() {
    let b = backend("sd-turbo", json!({})).await;
    let a = pixels(&run(&b, call("a red fox", 1, 1)).await.unwrap());
    let again = pixels(&run(&b, call("a red fox", 1, 1)).await.unwrap());
    let other = pixels(&run(&b, call("a red fox", 2, 1)).await.unwrap());
    assert_eq!(a, again);
    assert_ne!(a, other);
    assert_eq!(b.kind(), "local");
}

#[tokio::test]
async fn n_images_are_distinct_and_independent_of_batching() {
    // max_batch 2 splits n = 3 into two UNet batches: images 0 and 1 together, 2 alone.
    // SDXL adds the pooled text embedding and its size ids to the time embedding.
    for family in ["sd-turbo", "sdxl-turbo"] {
        let b = backend(family, json!({"max_batch": 2, "steps": 2})).await;
        let three = pixels(&run(&b, call("boats", 10, 3)).await.unwrap());
        assert_eq!(three.len(), 3);
        assert_ne!(three[0], three[1]);
        assert_ne!(three[1], three[2]);
        assert_ne!(three[0], three[2]);
        // Image i of a call seeded s is the image of seed s + i made alone (ancestral noise
        // included), whether it ran in a batch of two (the time embedding's layers see two rows)
        // or alone.
        for (seed, i) in [(11, 1), (12, 2)] {
            let alone = pixels(&run(&b, call("boats", seed, 1)).await.unwrap());
            assert_eq!(alone[0], three[i], "{family}: image {i}");
        }
    }
}

#[tokio::test]
async fn every_family_generates_with_guidance_and_each_scheduler() {
    for (family, scheduler) in [
        ("sd-1.5", "dpmpp_2m_karras"),
        ("sd-2.1", "ddim"),
        ("sdxl", "euler"),
        ("sdxl-turbo", "euler_ancestral"),
        ("sd-1.5-inpaint", "euler"),
    ] {
        let b = backend(family, json!({"steps": 2, "scheduler": scheduler})).await;
        let mut c = call("a lighthouse at dusk", 3, 1);
        c.options.extensions.guidance_scale = Some(5.0);
        c.options.extensions.negative_prompt = Some("blurry".into());
        let out = pixels(&run(&b, c).await.unwrap_or_else(|e| panic!("{family}: {e:#}")));
        let mut c = call("a lighthouse at dusk", 3, 1);
        c.options.extensions.guidance_scale = Some(1.0);
        let plain = pixels(&run(&b, c).await.unwrap());
        assert_ne!(out, plain, "{family}: guidance changed nothing");
    }
}

#[tokio::test]
async fn long_prompts_are_truncated_not_refused() {
    let b = backend("sd-turbo", json!({})).await;
    let long = "a very long prompt with many words ".repeat(40);
    let out = run(&b, call(&long, 1, 1)).await.unwrap();
    assert_eq!(out.images.len(), 1);
}

#[tokio::test]
async fn img2img_and_variations_start_from_the_image() {
    let b = backend("sd-turbo", json!({"steps": 4})).await;
    let mut c = with(Operation::Edit, "make it blue", 5, 1).image(&source()).build();
    c.options.extensions.strength = Some(0.5);
    let edited = pixels(&run(&b, c.clone()).await.unwrap());
    let generated = pixels(&run(&b, call("make it blue", 5, 1)).await.unwrap());
    assert_ne!(edited, generated);
    c.options.extensions.strength = Some(0.25);
    assert_ne!(pixels(&run(&b, c).await.unwrap()), edited, "strength must matter");
    let v = with(Operation::Variation, "ignored", 5, 2).image(&source()).build();
    let vars = pixels(&run(&b, v).await.unwrap());
    assert_ne!(vars[0], vars[1]);
}

#[tokio::test]
async fn inpainting_with_latent_blending_and_with_a_9_channel_unet() {
    for family in ["sd-turbo", "sd-1.5-inpaint"] {
        let b = backend(family, json!({"steps": 2})).await;
        let mut c = with(Operation::Edit, "a cat", 9, 1).image(&source()).mask(&half_mask()).build();
        let a = pixels(&run(&b, c.clone()).await.unwrap());
        c.options.extensions.seed = Some(10);
        let other = pixels(&run(&b, c).await.unwrap());
        // Other noise repaints the transparent (left) half differently.
        let left = |p: &Vec<u8>| p.chunks(64 * 3).flat_map(|row| row[..16 * 3].to_vec()).collect::<Vec<u8>>();
        assert_ne!(left(&a[0]), left(&other[0]), "{family}");
    }
}

#[tokio::test]
async fn capabilities_declare_what_the_core_checks() {
    // The core refuses a second image, out-of-range steps or strength and odd sizes before a local
    // model is called (tests/api/local.rs in the server shows the 400s); the backend declares them.
    let b = backend("sd-turbo", json!({})).await;
    let caps = b.capabilities();
    assert_eq!(caps.max_input_images, 1);
    assert!(caps.pixels == PixelInput::AtCallSize && caps.native_masks);
    assert_eq!(caps.extensions, easel_diffusion::config::EXTENSION_RANGES);
    assert!(
        caps.extensions.steps.check("steps", 201).is_err() && caps.extensions.strength.check("strength", 0.0).is_err()
    );
    assert!(caps.sizes.check(ImageSize::new(68, 64)).is_err() && caps.sizes.check(ImageSize::new(72, 64)).is_ok());
}

#[test]
fn check_reads_the_folder_without_loading_it() {
    let dir = model_dir("sd-turbo");
    easel_diffusion::check("m", &json!({"family": "sd-turbo", "path": dir})).unwrap();
    let err = easel_diffusion::check("m", &json!({"family": "sd-turbo", "path": "/nonexistent/model"})).unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/model"), "{err:#}");
    let err = easel_diffusion::check("m", &json!({"family": "sd-1.5-inpaint", "path": dir})).unwrap_err();
    assert!(format!("{err:#}").contains("9-channel"), "{err:#}");
    let err = easel_diffusion::check("m", &json!({"family": "sd-turbo", "path": dir, "steps": 0})).unwrap_err();
    assert!(format!("{err:#}").contains("steps"), "{err:#}");
}

#[tokio::test]
async fn a_full_queue_is_overloaded() {
    let b = backend("sd-turbo", json!({"queue_size": 1, "steps": 8})).await;
    // Spawned all at once: one runs, one waits in the queue, the rest are refused.
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { run(&b, call("queue", i, 1)).await })
        })
        .collect();
    let results = futures_join(calls.into_iter()).await;
    let overloaded = results.iter().filter(|r| matches!(r, Err(BackendError::Overloaded { .. }))).count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        overloaded >= 1,
        "no call was refused: {:?}",
        results.iter().map(|r| r.as_ref().map(|o| o.images.len()).map_err(|e| e.to_string())).collect::<Vec<_>>()
    );
    assert!(ok >= 1, "no call was served");
    if let Some(Err(BackendError::Overloaded { retry_after })) = results.iter().find(|r| r.is_err()) {
        assert!(*retry_after >= Duration::from_secs(1));
    }
}

async fn futures_join(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<BackendOutput, BackendError>>>,
) -> Vec<Result<BackendOutput, BackendError>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn cancellation_stops_the_work_between_steps() {
    let b = backend("sd-turbo", json!({"queue_size": 2})).await;
    // Measure one step, then ask for far more than the test will wait.
    let t = Instant::now();
    let mut c = call("slow", 1, 1);
    c.options.extensions.steps = Some(2);
    run(&b, c).await.unwrap();
    let two_steps = t.elapsed();
    let token = CancellationToken::new();
    let mut long = call("slow", 1, 1);
    long.options.extensions.steps = Some(200);
    let (b2, tok) = (b.clone(), token.clone());
    let handle = tokio::spawn(async move { b2.call(long, CallContext::new(tok)).await });
    tokio::time::sleep(two_steps).await;
    token.cancel();
    assert!(matches!(handle.await.unwrap(), Err(BackendError::Cancelled)));
    // The worker is free again long before 200 steps could have run.
    let t = Instant::now();
    let mut c = call("after", 1, 1);
    c.options.extensions.steps = Some(2);
    run(&b, c).await.unwrap();
    assert!(t.elapsed() < two_steps * 20, "the cancelled job kept the worker busy");
}

#[tokio::test]
async fn partial_images_are_real_renders_of_the_progress() {
    let b = backend("sd-1.5", json!({"steps": 4})).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut c = call("streaming", 4, 1);
    c.partial_images = 2;
    let cx = CallContext { cancel: CancellationToken::new(), partials: Some(tx) };
    let out = b.call(c, cx).await.unwrap();
    let mut partials = Vec::new();
    while let Ok(p) = rx.try_recv() {
        partials.push(p);
    }
    assert_eq!(partials.len(), 2);
    assert_eq!(partials.iter().map(|p| p.index).collect::<Vec<_>>(), vec![0, 1]);
    let last = pixels(&out);
    for p in &partials {
        let OutputImage::Pixels(img) = &p.image else { panic!("pixels expected") };
        assert_eq!((img.width(), img.height()), (64, 64));
        assert_ne!(img.to_rgb8().into_raw(), last[0], "a partial before the end equals the final image");
    }
}

#[tokio::test]
async fn a_model_that_cannot_load_reports_why() {
    let b = build("broken", &json!({"family": "sd-turbo", "path": "/nonexistent/model"})).unwrap();
    let started = Instant::now();
    let reason = loop {
        match b.readiness().await {
            Err(e) if e.contains("loading") => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => break e,
            Ok(()) => panic!("a missing folder loaded"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    };
    assert!(reason.contains("/nonexistent/model"), "{reason}");
    assert!(matches!(run(&b, call("x", 1, 1)).await, Err(BackendError::Unavailable { .. })));
}

#[test]
fn options_are_checked_strictly() {
    let err = build("m", &json!({"family": "sd-turbo", "path": "/x", "stepz": 3})).unwrap_err();
    assert!(format!("{err:#}").contains("stepz"), "{err:#}");
    let err = build("m", &json!({"family": "sd-9", "path": "/x"})).unwrap_err();
    assert!(format!("{err:#}").contains("sd-9"), "{err:#}");
    let err = build("m", &json!({"family": "sd-turbo", "path": "/x", "dtype": "f16"})).unwrap_err();
    assert!(format!("{err:#}").contains("f32"), "{err:#}");
}

#[test]
fn create_random_is_reproducible_and_says_it_is_random() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    create(Family::SdTurbo, Scale::Tiny, &a, 3, None).unwrap();
    create(Family::SdTurbo, Scale::Tiny, &b, 3, None).unwrap();
    for f in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "tokenizer/tokenizer.json"]
    {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
    }
    let info = std::fs::read_to_string(a.join("random_model_info.json")).unwrap();
    assert!(info.contains("\"random\": true"));
    assert!(create(Family::SdTurbo, Scale::Tiny, &a, 3, None).is_err(), "must not overwrite a folder");
}

#[tokio::test]
async fn the_models_cli_creates_lists_and_explains_pull() {
    use easel_diffusion::cli::{ModelsCommand, run as models};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-xl");
    models(ModelsCommand::CreateRandom {
        family: "sdxl-turbo".into(),
        scale: Scale::Tiny,
        out: out.clone(),
        seed: 1,
        bpe: None,
        tiny_vae: true,
    })
    .await
    .unwrap();
    assert!(out.join("text_encoder_2/model.safetensors").is_file());
    assert!(out.join("vae_tiny/diffusion_pytorch_model.safetensors").is_file(), "--tiny-vae writes vae_tiny/");
    assert!(out.join("tokenizer_2/tokenizer.json").is_file());
    models(ModelsCommand::List { dir: dir.path().to_path_buf() }).await.unwrap();
    let bad = models(ModelsCommand::CreateRandom {
        family: "sd-9".into(),
        scale: Scale::Tiny,
        out: dir.path().join("x"),
        seed: 1,
        bpe: None,
        tiny_vae: false,
    })
    .await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn a_panicking_job_answers_500_and_the_worker_serves_the_next() {
    // Its own model id, so the fault armed here touches no other test's worker.
    let id = "panicky";
    let mut options =
        json!({"family": "sd-turbo", "path": model_dir("sd-turbo"), "min_edge": 32, "default_size": "64x64"});
    options["steps"] = json!(1);
    let b = build(id, &options).unwrap();
    while let Err(e) = b.readiness().await {
        assert!(e.contains("loading"), "{e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    easel_diffusion::worker::fault::panic_next_jobs(id, 1);
    let err = run(&b, call("boom", 1, 1)).await.unwrap_err();
    assert!(matches!(err, BackendError::Internal(_)), "{err:?}");
    assert!(format!("{err:#}").contains("panicked"), "{err:#}");
    // The same worker serves the next job, and one panic does not make it unready.
    assert_eq!(pixels(&run(&b, call("after", 1, 1)).await.unwrap()).len(), 1);
    b.readiness().await.unwrap();

    // Panics in a row take it out of rotation; a job that completes puts it back.
    easel_diffusion::worker::fault::panic_next_jobs(id, 3);
    for i in 0..3 {
        assert!(matches!(run(&b, call("boom", i, 1)).await, Err(BackendError::Internal(_))));
    }
    let reason = b.readiness().await.unwrap_err();
    assert!(reason.contains("panicked") && reason.contains("3"), "{reason}");
    assert_eq!(pixels(&run(&b, call("recovered", 1, 1)).await.unwrap()).len(), 1);
    b.readiness().await.unwrap();
}

#[tokio::test]
async fn a_worker_out_of_rotation_tests_itself_and_comes_back_without_traffic() {
    let id = "probed";
    let mut options =
        json!({"family": "sd-turbo", "path": model_dir("sd-turbo"), "min_edge": 32, "default_size": "64x64"});
    options["steps"] = json!(1);
    options["recheck_after_secs"] = json!(1);
    let b = build(id, &options).unwrap();
    while let Err(e) = b.readiness().await {
        assert!(e.contains("loading"), "{e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three jobs panic, and so does the first probe: out of rotation until a probe succeeds.
    easel_diffusion::worker::fault::panic_next_jobs(id, 4);
    for i in 0..3 {
        assert!(matches!(run(&b, call("boom", i, 1)).await, Err(BackendError::Internal(_))));
    }
    let reason = b.readiness().await.unwrap_err();
    assert!(reason.contains("panicked"), "{reason}");
    // No job is sent: the worker's own probes bring it back (the first panics, a later one works).
    let started = Instant::now();
    while let Err(reason) = b.readiness().await {
        assert!(reason.contains("panicked"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(120), "the worker never recovered: {reason}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it serves again.
    assert_eq!(pixels(&run(&b, call("after", 1, 1)).await.unwrap()).len(), 1);
}
