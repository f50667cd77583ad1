//! The web playground (`[server] playground`): its page and assets over HTTP, the setting, and the
//! browser tests (`tests/browser`, Playwright driving Debian's headless Chromium) against a server
//! with the tiny local model: generate with partials, copy as curl, a painted-mask edit, errors
//! next to their fields, the gallery, the usage chart, a phone-sized screen.
//!
//! The browser test needs `/usr/bin/chromium` and `tests/browser/node_modules` (both installed by
//! `scripts/test.sh`); without them it is skipped with a notice, or fails under
//! `EASEL_TEST_REQUIRE_SERVICES=1` so the suite cannot pass by skipping it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use easel_server::config::ServerConfig;
use easel_server::storage::keys::KeySettings;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};
use crate::local::local_app;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[tokio::test]
async fn the_page_and_every_asset_it_loads_are_served() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    for remote in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(remote), "nothing loaded from elsewhere: {remote}");
    }

    // Every `/playground/…` the page names, and every module a script imports, is served.
    let mut wanted: Vec<String> =
        html.split("\"/playground/").skip(1).map(|s| s.split('"').next().unwrap().into()).collect();
    let mut seen = Vec::new();
    while let Some(name) = wanted.pop() {
        if seen.contains(&name) {
            continue;
        }
        let response = app.client.get(app.url(&format!("/playground/{name}"))).send().await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let kind = response.headers()["content-type"].to_str().unwrap().to_string();
        let text = response.text().await.unwrap();
        if name.ends_with(".js") {
            assert_eq!(kind, "text/javascript; charset=utf-8");
            wanted.extend(text.split("from \"./").skip(1).map(|s| s.split('"').next().unwrap().to_string()));
        }
        seen.push(name);
    }
    assert!(seen.len() >= 3, "{seen:?}");
    assert_error(app.client.get(app.url("/playground/nope.js")).send().await.unwrap(), 404, None, "unknown_url").await;
}

#[tokio::test]
async fn the_playground_can_be_turned_off() {
    let app = spawn_app_with(|c| c.server.playground = Some(false), Vec::new()).await;
    assert_error(app.client.get(app.url("/")).send().await.unwrap(), 404, None, "unknown_url").await;
    assert_error(app.client.get(app.url("/playground/app.js")).send().await.unwrap(), 404, None, "unknown_url").await;
}

#[test]
fn the_playground_is_on_by_default_only_on_loopback() {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    let mut server = ServerConfig::default();
    assert!(server.playground_on(addr("127.0.0.1:8080")));
    assert!(server.playground_on(addr("[::1]:8080")));
    assert!(!server.playground_on(addr("0.0.0.0:8080")));
    server.playground = Some(true);
    assert!(server.playground_on(addr("0.0.0.0:8080")));
    server.playground = Some(false);
    assert!(!server.playground_on(addr("127.0.0.1:8080")));
}

/// What the browser test needs, or why it cannot run.
fn browser_tools(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("EASEL_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!("{} is missing (apt-get install chromium)", chromium.display()));
    }
    let dir = root.join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        return Err("tests/browser/node_modules is missing (npm ci in tests/browser)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node is not on PATH".into());
    }
    Ok((chromium, dir))
}

#[tokio::test]
async fn the_playground_in_a_browser() {
    let root = repo_root();
    let (chromium, dir) = match browser_tools(&root) {
        Ok(tools) => tools,
        Err(why) => {
            let required = std::env::var("EASEL_TEST_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0");
            assert!(!required, "EASEL_TEST_REQUIRE_SERVICES is set but the browser test cannot run: {why}");
            eprintln!("SKIPPED: the browser test cannot run: {why}; ./scripts/test.sh installs both");
            return;
        }
    };
    let app = local_app().await;
    let key =
        app.app_state.keys.create(KeySettings { admin: Some(true), ..KeySettings::named("browser") }).await.unwrap();
    // Beside nextest's own output: <target>/browser-screenshots.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("browser-screenshots");
    let mut command = Command::new("node");
    command
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1", "playground.test.mjs"])
        .current_dir(&dir)
        .env("EASEL_URL", &app.address)
        .env("EASEL_API_KEY", &key.plaintext)
        .env("EASEL_MODEL", "turbo")
        .env("EASEL_SCREENSHOTS", &shots)
        .env("EASEL_CHROMIUM", &chromium);
    let python = root.join(".venv/bin/python");
    if python.exists() {
        command.env("EASEL_PYTHON", python);
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    eprintln!("screenshots in {}", shots.display());
}
