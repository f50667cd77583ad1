//! The official OpenAI SDKs (Python and Node), installed by `scripts/test.sh`, run against a real
//! server: generate, edit with one image, a list of images and a mask, variations, streaming.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{mask, png, spawn_app};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Writes the images the SDK scripts upload.
fn fixtures(dir: &Path) {
    std::fs::write(dir.join("image.png"), png(64, 64, [200, 100, 50])).unwrap();
    std::fs::write(dir.join("image2.png"), png(64, 64, [10, 20, 30])).unwrap();
    std::fs::write(dir.join("mask.png"), mask(64, 64, |x, _| if x < 32 { 255 } else { 0 })).unwrap();
}

fn run(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start ({e}); run scripts/test.sh, which installs the SDKs"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    println!("{stdout}");
}

#[tokio::test]
async fn python_sdk() {
    let app = spawn_app().await;
    let fixture_dir = tempfile::tempdir().unwrap();
    fixtures(fixture_dir.path());
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/test.sh, which creates it", python.display());
    let mut command = Command::new(python);
    command
        .arg(root.join("tests/sdk/python/test_sdk.py"))
        .env("EASEL_BASE_URL", format!("{}/v1", app.address))
        .env("EASEL_FIXTURES", fixture_dir.path());
    tokio::task::spawn_blocking(move || run(command, "the Python SDK test")).await.unwrap();
}

#[tokio::test]
async fn node_sdk() {
    let app = spawn_app().await;
    let fixture_dir = tempfile::tempdir().unwrap();
    fixtures(fixture_dir.path());
    let node_dir = repo_root().join("tests/sdk/node");
    assert!(
        node_dir.join("node_modules/openai").exists(),
        "the Node SDK is missing: run scripts/test.sh, which installs it"
    );
    let mut command = Command::new("node");
    command
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(node_dir.join("sdk.test.mjs"))
        .current_dir(&node_dir)
        .env("EASEL_BASE_URL", format!("{}/v1", app.address))
        .env("EASEL_FIXTURES", fixture_dir.path());
    tokio::task::spawn_blocking(move || run(command, "the Node SDK test")).await.unwrap();
}
