//! `GET /openapi.json` and `GET /docs`, and schemathesis (installed into `.venv` by
//! `scripts/test.sh` from `tests/sdk/python/requirements.txt`) run against the served document:
//! it makes requests from every operation's schemas, valid and invalid, and fails on any 5xx and
//! on any answer whose status, content type or body the document does not describe.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use easel_server::storage::keys::KeySettings;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app};
use crate::local::local_app_with;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[tokio::test]
async fn the_document_is_public_and_describes_the_api() {
    let app = spawn_app().await;
    // A key exists, so the API needs one; the document does not.
    app.app_state.keys.create(KeySettings::named("someone")).await.unwrap();
    let response = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for path in ["/v1/images/generations", "/v1/images/edits", "/v1/images/variations", "/v1/tasks/{id}", "/docs"] {
        assert!(paths.contains_key(path), "{path} is missing");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let unauthorized = &paths["/v1/models"]["get"]["responses"]["401"]["content"]["application/json"]["schema"];
    assert_eq!(unauthorized["$ref"], "#/components/schemas/ErrorBody");
}

#[tokio::test]
async fn the_docs_page_renders_the_document_from_embedded_files() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("src=\"/docs/docs.js\"") && html.contains("href=\"/docs/docs.css\""));
    assert!(!html.contains("https://"), "nothing is loaded from elsewhere");
    let script = app.client.get(app.url("/docs/docs.js")).send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(script.text().await.unwrap().contains("fetch(\"/openapi.json\")"));
    let style = app.client.get(app.url("/docs/docs.css")).send().await.unwrap();
    assert_eq!(style.status(), 200);
    assert_error(app.client.get(app.url("/docs/nothing.js")).send().await.unwrap(), 404, None, "unknown_url").await;
}

/// Schemathesis over every operation, with an admin key, on the test backends: no 5xx, and every
/// status, content type and JSON body as documented. A fixed seed makes a failure reproducible;
/// `--max-examples` keeps the run to about a minute on two cores.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let app = spawn_app().await;
    let settings = KeySettings { admin: Some(true), ..KeySettings::named("schemathesis") };
    let key = app.app_state.keys.create(settings).await.unwrap().plaintext;
    run_schemathesis(&app, &key, &["--phases", "examples,coverage,fuzzing", "--max-examples", "12"]).await;
}

/// The image routes and the model list again, on a tiny random local diffusion model (the real
/// pipeline, bounded to small images so each request takes a moment).
#[tokio::test]
async fn schemathesis_on_a_tiny_local_model() {
    let app = local_app_with(&[("max_edge", json!(64)), ("max_n", json!(2))]).await;
    let key = app.app_state.keys.create(KeySettings::named("schemathesis")).await.unwrap().plaintext;
    let only = ["--include-tag", "images", "--include-tag", "models"];
    run_schemathesis(
        &app,
        &key,
        &[&only[..], &["--phases", "examples,coverage,fuzzing", "--max-examples", "25"]].concat(),
    )
    .await;
}

async fn run_schemathesis(app: &TestApp, key: &str, args: &[&str]) {
    let root = repo_root();
    let schemathesis = root.join(".venv/bin/schemathesis");
    assert!(schemathesis.exists(), "{} is missing: run scripts/test.sh, which installs it", schemathesis.display());
    let reports = tempfile::tempdir().unwrap();
    let mut command = Command::new(schemathesis);
    command
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--url", &app.address])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args([
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "120",
            "--suppress-health-check",
            "all",
            "--no-color",
        ])
        .args(args)
        .arg("--report-dir")
        .arg(reports.path())
        .current_dir(reports.path());
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("schemathesis starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("schemathesis ran for {:.0?}\n{stdout}", started.elapsed());
    assert!(output.status.success(), "schemathesis failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
}
