//! API keys: open loopback mode, 401s, revocation, per-key model lists, and the CLI.

use std::process::Command;

use serde_json::json;

use easel_server::storage::keys::KeySettings;

use crate::helpers::{assert_error, json_body, spawn_app, spawn_app_with, test_models};

#[tokio::test]
async fn keyless_loopback_servers_are_open_until_a_key_exists_and_never_again() {
    let app = spawn_app().await;
    let open = app
        .client
        .post(app.url("/v1/images/generations"))
        .bearer_auth("sk-anything")
        .json(&json!({"model": "test-image", "prompt": "p"}));
    json_body(open.send().await.unwrap(), 200).await;

    let key = app.app_state.keys.create(KeySettings::named("ci")).await.unwrap();
    let request = |token: Option<&str>| {
        let r = app.client.post(app.url("/v1/images/generations")).json(&json!({"model": "test-image", "prompt": "p"}));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };
    assert_error(request(None).send().await.unwrap(), 401, None, "invalid_api_key").await;
    assert_error(request(Some("sk-anything")).send().await.unwrap(), 401, None, "invalid_api_key").await;
    // The last character changed to one it is not (a fixed `x` would be the key itself 1 time in 36).
    let (head, last) = key.plaintext.split_at(key.plaintext.len() - 1);
    let forged = format!("{head}{}", if last == "x" { "y" } else { "x" });
    assert_error(request(Some(&forged)).send().await.unwrap(), 401, None, "invalid_api_key").await;
    json_body(request(Some(&key.plaintext)).send().await.unwrap(), 200).await;
    assert_error(app.client.get(app.url("/v1/models")).send().await.unwrap(), 401, None, "invalid_api_key").await;

    assert!(app.app_state.keys.revoke(&key.record.id).await.unwrap());
    // The last key is revoked, but a server that has had a key never falls back to open.
    assert_error(request(None).send().await.unwrap(), 401, None, "invalid_api_key").await;
    assert_error(request(Some(&key.plaintext)).send().await.unwrap(), 401, None, "invalid_api_key").await;
}

#[tokio::test]
async fn keys_limited_to_models() {
    let app = spawn_app().await;
    let key = app.app_state.keys.create(KeySettings::named("limited").models(&["test-fixed"])).await.unwrap();
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .bearer_auth(&key.plaintext)
        .json(&json!({"model": "test-image", "prompt": "p"}))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, Some("model"), "model_not_allowed").await;
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .bearer_auth(&key.plaintext)
        .json(&json!({"model": "test-fixed", "prompt": "p"}))
        .send()
        .await
        .unwrap();
    json_body(response, 200).await;
    let list =
        json_body(app.client.get(app.url("/v1/models")).bearer_auth(&key.plaintext).send().await.unwrap(), 200).await;
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["test-fixed"]);
    let hidden = app.client.get(app.url("/v1/models/test-image")).bearer_auth(&key.plaintext).send().await.unwrap();
    assert_error(hidden, 404, Some("model"), "model_not_found").await;
}

#[tokio::test]
async fn non_loopback_binds_need_keys_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = easel_server::config::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.server.bind = "0.0.0.0:0".into();
    // A wildcard bind names no reachable host for hosted URLs: it needs public_url.
    config.server.public_url = Some("https://images.example.com".parse().unwrap());
    let error = easel_server::startup::Application::build(config.clone()).await.err().expect("refused").to_string();
    assert!(error.contains("--insecure-no-auth"), "{error}");
    config.server.insecure_no_auth = true;
    assert!(easel_server::startup::Application::build(config).await.is_ok());
}

#[tokio::test]
async fn the_keys_cli_creates_lists_and_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let easel = |args: &[&str]| {
        let output =
            Command::new(env!("CARGO_BIN_EXE_easel")).args(args).arg("--data-dir").arg(dir.path()).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let key = easel(&["keys", "create", "--name", "alice", "--models", "test-image,test-fixed"]).trim().to_string();
    assert!(key.starts_with("sk-easel-"), "{key}");
    let list = easel(&["keys", "list"]);
    assert!(list.contains("alice") && list.contains("active") && list.contains("test-image,test-fixed"), "{list}");
    assert!(!list.contains(&key), "secrets are never listed");

    // A server on that data directory now requires the key.
    let app = spawn_app_with(|c| c.storage.data_dir = dir.path().to_path_buf(), test_models()).await;
    assert_error(app.generate(json!({"model": "test-image", "prompt": "p"})).await, 401, None, "invalid_api_key").await;
    let ok = app
        .client
        .post(app.url("/v1/images/generations"))
        .bearer_auth(&key)
        .json(&json!({"model": "test-image", "prompt": "p"}))
        .send()
        .await
        .unwrap();
    json_body(ok, 200).await;

    let id = key.trim_start_matches("sk-easel-").split('-').next().unwrap().to_string();
    easel(&["keys", "revoke", &id]);
    assert!(easel(&["keys", "list"]).contains("revoked"));
}

#[test]
fn the_example_gateway_config_checks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["serve", "--check-config", "--config"])
        .arg(root.join("examples/gateway.toml"))
        .env("OPENAI_API_KEY", "k")
        .env("DASHSCOPE_API_KEY", "k")
        .env("IG1AI_API_KEY", "k")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    assert!(said.contains("configuration OK: 3 model(s)"), "{said}");
    let without_keys = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["serve", "--check-config", "--config"])
        .arg(root.join("examples/gateway.toml"))
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert!(!without_keys.status.success(), "a missing key variable is an error");
}
