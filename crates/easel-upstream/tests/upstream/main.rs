//! The crate's integration tests: real HTTP against in-process fake providers on loopback.

mod config;
mod conformance;
mod dashscope;
mod enhance;
mod openai;
mod resilience;

use std::time::Duration;

use easel_core::backend::{BackendCall, BackendOutput, CallContext, InputImage, OutputImage, SharedBackend};
use easel_core::error::BackendError;
use easel_core::testing::CallBuilder;
use easel_core::types::{ImageSize, Operation, OutputFormat};
use easel_upstream::Gateway;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use easel_upstream::testing::{Fake, Reply, png};

/// Tests read the API key from an environment variable cargo always sets when running tests, so
/// no test has to modify the environment.
pub const KEY_ENV: &str = "CARGO_PKG_NAME";

pub fn api_key() -> String {
    std::env::var(KEY_ENV).expect("cargo sets CARGO_PKG_NAME for test binaries")
}

/// A provider table pointing at a fake, with short timeouts and backoffs; `extra` overrides.
pub fn provider(id: &str, kind: &str, fake: &Fake, extra: Value) -> Value {
    let base = match kind {
        "dashscope" => fake.url(),
        _ => format!("{}/v1", fake.url()),
    };
    let mut table = json!({
        "id": id,
        "kind": kind,
        "base_url": base,
        "api_key_env": KEY_ENV,
        "allow_hosts": [format!("http://{}", fake.addr)],
        "timeout_secs": 2.0,
        "retries": 2,
        "backoff_base_secs": 0.01,
        "backoff_max_secs": 0.05,
        "poll_interval_secs": 0.01,
        "poll_max_interval_secs": 0.03,
        "circuit_cooldown_secs": 60.0,
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        table[k] = v;
    }
    table
}

pub fn gateway(providers: &[Value]) -> Gateway {
    Gateway::from_config(providers, None).unwrap()
}

pub fn model(gw: &Gateway, targets: Value) -> SharedBackend {
    gw.build_model("m", &json!({ "targets": targets })).unwrap()
}

pub fn call(operation: Operation, n: u32, size: (u32, u32)) -> BackendCall {
    CallBuilder::new(operation).model("m").n(n).size(size.0, size.1).build()
}

pub fn input(w: u32, h: u32) -> InputImage {
    easel_core::testing::png_input(&image::load_from_memory(&png(w, h)).unwrap())
}

pub fn edit(n: u32, images: usize) -> BackendCall {
    let mut c = call(Operation::Edit, n, (64, 64));
    c.prompt = "make it blue".into();
    c.images = (0..images).map(|_| input(64, 64)).collect();
    c
}

pub fn cx() -> CallContext {
    CallContext::new(CancellationToken::new())
}

pub async fn run(backend: &SharedBackend, call: BackendCall) -> Result<BackendOutput, BackendError> {
    tokio::time::timeout(Duration::from_secs(20), backend.call(call, cx())).await.expect("the call finished")
}

/// The size of each output image (all must be encoded PNGs).
pub fn sizes(out: &BackendOutput) -> Vec<(u32, u32)> {
    out.images
        .iter()
        .map(|i| match i {
            OutputImage::Encoded { bytes, format } => {
                assert_eq!(*format, OutputFormat::Png);
                let (_, size) = easel_core::imaging::probe_encoded(bytes).unwrap();
                (size.width, size.height)
            }
            OutputImage::Pixels(_) => panic!("upstream backends return encoded bytes"),
        })
        .collect()
}
