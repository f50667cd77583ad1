//! What the backend test binaries (`local.rs`, `flux.rs`) share: one tiny random folder per
//! family, a backend built from `[[models]]` options and awaited until loaded, a call, and the
//! pixels of its answer.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use easel_core::backend::{BackendCall, BackendOutput, CallContext, OutputImage, SharedBackend};
use easel_core::error::BackendError;
use easel_diffusion::random::{Scale, create_any};
use easel_diffusion::{Family, build};
use tokio_util::sync::CancellationToken;

/// One tiny model folder per family (seed 7), made once per test binary.
pub fn model_dir(family: &str) -> PathBuf {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let root = ROOT.get_or_init(|| tempfile::tempdir().unwrap());
    let dir = root.path().join(family);
    let _guard = LOCK.lock().unwrap();
    if !dir.exists() {
        create_any(Family::parse(family).unwrap(), Scale::Tiny, &dir, 7, None).unwrap();
    }
    dir
}

/// The backend for `options` once ready, or the reason it is not.
pub async fn start(id: &str, options: &serde_json::Value) -> Result<SharedBackend, String> {
    let b = build(id, options).unwrap();
    let started = Instant::now();
    loop {
        match b.readiness().await {
            Ok(()) => return Ok(b),
            Err(e) if e.contains("is still loading") => {
                assert!(started.elapsed() < Duration::from_secs(60), "model did not load");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub async fn run(b: &SharedBackend, c: BackendCall) -> Result<BackendOutput, BackendError> {
    b.call(c, CallContext::new(CancellationToken::new())).await
}

/// Each image's RGB bytes, checking every image is `size` (width, height).
pub fn pixels(out: &BackendOutput, size: (u32, u32)) -> Vec<Vec<u8>> {
    out.images
        .iter()
        .map(|i| match i {
            OutputImage::Pixels(p) => {
                assert_eq!((p.width(), p.height()), size);
                p.to_rgb8().into_raw()
            }
            other => panic!("expected pixels, got {other:?}"),
        })
        .collect()
}
