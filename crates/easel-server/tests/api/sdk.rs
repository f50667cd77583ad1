//! The official OpenAI SDKs (Python and Node), installed by `scripts/test.sh`, run against a real
//! server: generate, edit with one image, a list of images and a mask, variations, streaming,
//! errors. Once against the deterministic test backend, once through an upstream provider (a
//! fake OpenAI-compatible service, whose fixed sizes and formats the core fills in).

use std::path::{Path, PathBuf};
use std::process::Command;

use easel_upstream::testing::Fake;
use serde_json::json;

use crate::helpers::{TestApp, mask, png, spawn_app, spawn_app_with};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Writes the images the SDK scripts upload.
fn fixtures(dir: &Path) {
    std::fs::write(dir.join("image.png"), png(64, 64, [200, 100, 50])).unwrap();
    std::fs::write(dir.join("image2.png"), png(64, 64, [10, 20, 30])).unwrap();
    std::fs::write(dir.join("mask.png"), mask(64, 64, |x, _| if x < 32 { 255 } else { 0 })).unwrap();
}

#[derive(Clone, Copy)]
pub enum Sdk {
    Python,
    Node,
}

pub async fn run_sdk(sdk: Sdk, app: &TestApp, model: &str, skip: &[&str]) {
    let fixture_dir = tempfile::tempdir().unwrap();
    fixtures(fixture_dir.path());
    let root = repo_root();
    let mut command = match sdk {
        Sdk::Python => {
            let python = root.join(".venv/bin/python");
            assert!(python.exists(), "{} is missing: run scripts/test.sh, which creates it", python.display());
            let mut command = Command::new(python);
            command.arg(root.join("tests/sdk/python/test_sdk.py"));
            command
        }
        Sdk::Node => {
            let node_dir = root.join("tests/sdk/node");
            assert!(node_dir.join("node_modules/openai").exists(), "the Node SDK is missing: run scripts/test.sh");
            let mut command = Command::new("node");
            command.arg("--test").arg("--test-reporter=spec").arg(node_dir.join("sdk.test.mjs")).current_dir(&node_dir);
            command
        }
    };
    command
        .env("EASEL_BASE_URL", format!("{}/v1", app.address))
        .env("EASEL_FIXTURES", fixture_dir.path())
        .env("EASEL_MODEL", model)
        .env("EASEL_SKIP", skip.join("\n"));
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("the SDK test starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
}

#[tokio::test]
async fn python_sdk() {
    run_sdk(Sdk::Python, &spawn_app().await, "test-image", &[]).await;
}

#[tokio::test]
async fn node_sdk() {
    run_sdk(Sdk::Node, &spawn_app().await, "test-image", &[]).await;
}

/// An app whose model `relay` is gpt-image-1.5 on a fake OpenAI service: the provider makes only
/// 1024x1024-class sizes, the model accepts any multiple of 16, and the core resizes.
async fn relay_app(fake: &Fake) -> TestApp {
    let provider = json!({
        "id": "oa", "kind": "openai", "base_url": format!("{}/v1", fake.url()), "api_key_env": "CARGO_PKG_NAME",
        "retries": 0, "timeout_secs": 10.0,
    });
    let mut options = serde_json::Map::new();
    options.insert("targets".into(), json!([{"provider": "oa", "model": "gpt-image-1.5"}]));
    options.insert("sizes".into(), json!({"min_edge": 16, "max_edge": 2048, "multiple_of": 16}));
    let model = easel_server::config::ModelConfig {
        id: "relay".into(),
        backend: "upstream".into(),
        response_format: None,
        options,
    };
    spawn_app_with(
        move |c| {
            c.providers = vec![provider];
            c.models = vec![model];
        },
        Vec::new(),
    )
    .await
}

#[tokio::test]
async fn python_sdk_through_an_upstream_provider() {
    let fake = Fake::start(&std::env::var("CARGO_PKG_NAME").unwrap()).await;
    run_sdk(Sdk::Python, &relay_app(&fake).await, "relay", &["test_variations"]).await;
    assert!(!fake.hits("/v1/images/edits").is_empty());
}

#[tokio::test]
async fn node_sdk_through_an_upstream_provider() {
    let fake = Fake::start(&std::env::var("CARGO_PKG_NAME").unwrap()).await;
    run_sdk(Sdk::Node, &relay_app(&fake).await, "relay", &["images.createVariation"]).await;
    assert!(!fake.hits("/v1/images/generations").is_empty());
}
