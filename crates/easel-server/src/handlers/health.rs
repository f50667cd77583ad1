//! `GET /healthz` (the process answers) and `GET /readyz` (the database, the blob store and
//! every configured model can serve; 503 with the reasons otherwise).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::state::AppState;
use crate::storage::db;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut checks = Map::new();
    let mut ready = !state.drain.is_draining();
    if !ready {
        checks.insert("draining".into(), json!({"ok": false, "error": "the server is shutting down"}));
    }
    let mut note = |name: String, result: Result<(), String>| {
        ready &= result.is_ok();
        checks.insert(name, result.map_or_else(|e| json!({"ok": false, "error": e}), |()| json!({"ok": true})));
    };
    note("database".into(), db::ping(&state.db).await.map_err(|e| e.to_string()));
    note("blobs".into(), state.blobs.check().await.map_err(|e| e.to_string()));
    for model in state.service.registry().all() {
        note(format!("model:{}", model.id), model.backend.readiness().await);
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks})))
}
