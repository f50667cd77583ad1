//! The CLI client without a server: the request goes through the same parser
//! (`easel_wire::request`) and image service (`ImageService::resolve`, `prepare`, `run`) as an
//! HTTP request would, on the one model of the local config it names (only that model is
//! built, so only its weights load). Nothing is stored: no keys, usage or hosted images.
//!
//! The progress bar follows the job's denoising steps ([`Steps`], reported by the local
//! backend). A model still loading answers 503 with a `retry_after`; the job is run again until
//! it has loaded.

use std::time::Duration;

use anyhow::{Context, Result};
use easel_core::error::BackendError;
use easel_core::error::CoreError;
use easel_core::job::{JobContext, Steps};
use easel_core::types::Operation;
use easel_wire::request;
use tokio_util::sync::CancellationToken;

use super::ConfigArgs;
use super::client::{Made, Order, progress_bar, refusal};
use crate::error::ApiError;

pub async fn make(config_args: &ConfigArgs, order: &Order) -> Result<Vec<Made>> {
    let mut config = config_args.load()?;
    let wanted = order.fields.get("model").and_then(|v| v.as_str()).map(str::to_string);
    let id = wanted
        .or_else(|| config.server.default_model.clone())
        .or_else(|| config.models.first().map(|m| m.id.clone()))
        .context(
            "no model to run here: name a config with models (--config FILE), pull one and pass it to a server \
             (`easel serve --model stabilityai/sd-turbo`), or send the request to a server with --server URL",
        )?;
    let known: Vec<String> = config.models.iter().map(|m| m.id.clone()).collect();
    anyhow::ensure!(
        known.contains(&id),
        "the config has no model '{id}' (it has: {}); pass --server URL to use a server's models",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    );
    config.models.retain(|m| m.id == id);
    config.server.default_model = Some(id.clone());
    let valid = config.validate()?;
    let service = crate::backends::build_service(&config, Vec::new(), valid.allow_image_hosts, valid.service).await?;

    let unknown = config.server.unknown_parameters;
    let parsed = match order.operation {
        Operation::Generate => request::parse_json(order.operation, &serde_json::to_vec(&order.fields)?, unknown),
        _ => request::parse_multipart(order.operation, order.parts(), unknown),
    };
    let job = async {
        let mut parsed = parsed?;
        parsed.model.get_or_insert(id.clone());
        let model = service.resolve(order.operation, parsed.model.as_deref())?;
        service.prepare(parsed, model).await
    }
    .await
    .map_err(shown)?;

    let bar = progress_bar(1, &format!("loading {id}"));
    bar.enable_steady_tick(Duration::from_millis(200));
    let steps = Steps::new({
        let bar = bar.clone();
        move |done, total| {
            bar.set_message("denoising");
            bar.set_length(u64::from(total));
            bar.set_position(u64::from(done));
        }
    });
    let output = loop {
        let context = JobContext { cancel: CancellationToken::new(), partials: None };
        match steps.clone().scope(service.run(&job, context)).await {
            Err(CoreError::Backend(BackendError::Unavailable { retry_after: Some(_), .. })) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    bar.finish_and_clear();
    let output = output.map_err(shown)?;
    output
        .images
        .into_iter()
        .map(|i| Ok(Made { bytes: i.bytes.raw()?, format: i.format.extension().to_string() }))
        .collect()
}

/// A refusal as the server would send it (message and `param`); an internal error in full, since
/// the person running the command is the operator.
fn shown(error: CoreError) -> anyhow::Error {
    let error = ApiError::from(error);
    let parts = error.parts();
    if parts.code.is_none() {
        return anyhow::Error::from(error);
    }
    let body = error.body().error;
    refusal(&body.message, body.param.as_deref(), body.code.as_deref())
}
