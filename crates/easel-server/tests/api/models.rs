//! `/v1/models`, `/healthz`, `/readyz`.

use async_trait::async_trait;
use easel_core::backend::{BackendCall, BackendOutput, CallContext, Capabilities, ImageBackend};
use easel_core::error::BackendError;

use crate::backend::capabilities;
use crate::helpers::{assert_error, json_body, spawn_app};

#[tokio::test]
async fn models_list_and_get() {
    let app = spawn_app().await;
    let list = json_body(app.client.get(app.url("/v1/models")).send().await.unwrap(), 200).await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["test-image", "test-fixed", "test-encoded", "test-dalle"]);
    let mut model = json_body(app.client.get(app.url("/v1/models/test-fixed")).send().await.unwrap(), 200).await;
    // Easel's additive `capabilities` (tested in `upstream_faults`) beside OpenAI's fields.
    assert!(model.as_object_mut().unwrap().remove("capabilities").is_some_and(|c| c.is_object()));
    assert_eq!(
        model,
        serde_json::json!({"id": "test-fixed", "object": "model", "created": 1_700_000_000, "owned_by": "easel"})
    );
    assert_error(
        app.client.get(app.url("/v1/models/nope")).send().await.unwrap(),
        404,
        Some("model"),
        "model_not_found",
    )
    .await;
}

/// A local model whose weights did not load (`local` is the kind that makes a node unready).
#[derive(Debug)]
struct Broken(Capabilities);

#[async_trait]
impl ImageBackend for Broken {
    fn kind(&self) -> &'static str {
        "local"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.0
    }
    async fn readiness(&self) -> Result<(), String> {
        Err("weights failed to load: unet.safetensors is truncated".into())
    }
    async fn call(&self, _: BackendCall, _: CallContext) -> Result<BackendOutput, BackendError> {
        Err(BackendError::Unavailable { message: "not loaded".into(), retry_after: None })
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = json_body(app.client.get(app.url("/healthz")).send().await.unwrap(), 200).await;
    assert_eq!(health["status"], "ok");
    let ready = json_body(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(ready["checks"]["database"]["ok"], true);
    assert_eq!(ready["checks"]["blobs"]["ok"], true);
    assert_eq!(ready["checks"]["model:test-image"]["ok"], true);

    let dir = tempfile::tempdir().unwrap();
    let mut config = easel_server::config::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.server.bind = "127.0.0.1:0".into();
    let broken = easel_core::registry::Model {
        id: "broken".into(),
        backend: std::sync::Arc::new(Broken(capabilities())),
        created: 0,
        owned_by: "easel".into(),
        defaults: Default::default(),
    };
    let built = easel_server::startup::Application::build_with(config, vec![broken]).await.unwrap();
    let (url, stop) = (format!("http://{}/readyz", built.address()), built.stop_token());
    tokio::spawn(built.run_until_stopped());
    let ready = json_body(reqwest::get(&url).await.unwrap(), 503).await;
    assert_eq!(ready["status"], "not_ready");
    assert!(ready["checks"]["model:broken"]["error"].as_str().unwrap().contains("truncated"));
    stop.cancel();
}

/// Once keys exist, `/readyz` tells anyone only whether the node is ready; the checks, which name
/// models and carry error details, are for admin keys.
#[tokio::test]
async fn readiness_details_are_for_admin_keys() {
    use easel_server::storage::keys::KeySettings;
    let app = spawn_app().await;
    let admin =
        app.app_state.keys.create(KeySettings { admin: Some(true), ..KeySettings::named("ops") }).await.unwrap();
    let plain = app.app_state.keys.create(KeySettings::named("app")).await.unwrap();
    let anonymous = json_body(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(anonymous, serde_json::json!({"status": "ready"}));
    let ordinary = app.client.get(app.url("/readyz")).bearer_auth(&plain.plaintext).send().await.unwrap();
    assert!(json_body(ordinary, 200).await.get("checks").is_none());
    let full = app.client.get(app.url("/readyz")).bearer_auth(&admin.plaintext).send().await.unwrap();
    assert_eq!(json_body(full, 200).await["checks"]["model:test-image"]["ok"], true);
}
