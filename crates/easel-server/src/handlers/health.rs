//! `GET /healthz` (the process answers) and `GET /readyz` (this node can serve; 503 otherwise,
//! with the reasons for admin keys).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::state::AppState;
use crate::storage::db;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when this node can serve: not draining, the database and blob store answer, and every
/// local model has loaded. Upstream models whose targets are all failing are reported but do not
/// make the node unready: every node shares them, and taking all nodes out of a load balancer
/// over one failing provider would turn a degraded model into an outage. Anyone sees the status;
/// the checks, with their errors, are for admin keys (or an open server).
pub async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    let mut checks = Map::new();
    let mut ready = !state.drain.is_draining();
    if !ready {
        checks.insert("draining".into(), json!({"ok": false, "error": "the server is shutting down"}));
    }
    let mut note = |name: String, result: Result<(), String>, required: bool| {
        ready &= result.is_ok() || !required;
        let mut check = result.map_or_else(|e| json!({"ok": false, "error": e}), |()| json!({"ok": true}));
        if !required {
            check["required"] = json!(false);
        }
        checks.insert(name, check);
    };
    note("database".into(), db::ping(&state.db).await.map_err(|e| e.to_string()), true);
    note("blobs".into(), state.blobs.check().await.map_err(|e| e.to_string()), true);
    for model in state.service.registry().all() {
        let local = model.backend.kind() == "local";
        note(format!("model:{}", model.id), model.backend.readiness().await, local);
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({"status": if ready { "ready" } else { "not_ready" }});
    if Caller::from_headers(&headers, &state).await.is_ok_and(|c| c.is_admin()) {
        body["checks"] = Value::Object(checks);
    }
    (status, Json(body))
}
