//! `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's list and model objects, so
//! `client.models.list()` works. A key restricted to some models sees only those.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Uri;
use easel_core::error::CoreError;
use easel_wire::response::{ModelList, ModelObject};

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract;
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, caller: Caller) -> Json<ModelList> {
    let data = state
        .service
        .registry()
        .all()
        .iter()
        .filter(|m| caller.may_use(&m.id))
        .map(|m| ModelObject::new(&m.id, m.created, &m.owned_by))
        .collect();
    Json(ModelList::new(data))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ModelObject>> {
    let id = extract::segment(path, &uri);
    match state.service.registry().get(&id) {
        Some(m) if caller.may_use(&m.id) => Ok(Json(ModelObject::new(&m.id, m.created, &m.owned_by))),
        _ => Err(CoreError::ModelNotFound(id).into()),
    }
}
