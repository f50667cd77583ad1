//! `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's list and model objects, so
//! `client.models.list()` works. A key restricted to some models sees only those.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Uri;
use easel_core::error::CoreError;
use easel_core::registry::Model;
use easel_wire::response::{ModelList, ModelObject};
use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract;
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, caller: Caller) -> Json<Value> {
    let data: Vec<Value> =
        state.service.registry().all().iter().filter(|m| caller.may_use(&m.id)).map(|m| object(m)).collect();
    let mut list = serde_json::to_value(ModelList::new(Vec::new())).unwrap_or_default();
    list["data"] = Value::Array(data);
    Json(list)
}

/// OpenAI's model object plus Easel's additive `capabilities` (`easel_upstream::node`): what a
/// client, or an Easel gateway in front of this node, may ask of the model. A model with random
/// weights (`easel models create-random`, for tests) also says `"random_weights": true`.
fn object(m: &Model) -> Value {
    let mut v = serde_json::to_value(ModelObject::new(&m.id, m.created, &m.owned_by)).unwrap_or_default();
    v["capabilities"] = easel_upstream::node::describe(m.backend.capabilities());
    if m.backend.random_weights() {
        v["random_weights"] = Value::Bool(true);
    }
    v
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = extract::segment(path, &uri);
    match state.service.registry().get(&id) {
        Some(m) if caller.may_use(&m.id) => Ok(Json(object(&m))),
        _ => Err(CoreError::ModelNotFound(id).into()),
    }
}
