//! Logs and metrics.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or as JSON lines
//! (`[server] log_format`). Every request runs in a span carrying its `x-request-id` (taken from
//! the client or made here, and sent back), and the tasks a request spawns inherit it, so every
//! line a request causes names it.
//!
//! Metrics: the `metrics` facade everywhere (the local worker and the upstream router record
//! their own), one Prometheus recorder installed here, rendered by `GET /metrics`. The names:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `easel_http_requests_total` | counter | `route`, `method`, `status`, `model` |
//! | `easel_http_request_duration_seconds` | histogram | `route`, `method` |
//! | `easel_images_total` | counter | `model`, `operation` (images delivered) |
//! | `easel_image_requests_total` | counter | `model`, `operation`, `outcome` (`ok` or the error code) |
//! | `easel_image_request_duration_seconds` | histogram | `model`, `operation` |
//! | `easel_http_in_flight` | gauge | — |
//! | `easel_local_queue_depth`, `easel_local_in_flight` | gauge | `model` |
//! | `easel_upstream_retries_total`, `easel_upstream_fallbacks_total` | counter | `provider` / `model` |
//! | `easel_upstream_circuit_open` | gauge | `provider`, `target` (1 while open) |
//! | `easel_limit_rejections_total` | counter | `limit` (`requests/minute`, `images/day`, ...) |
//! | `easel_local_panics_total` | counter | `model` (a job that panicked; the worker goes on) |
//! | `easel_ledger_commits_total`, `easel_ledger_records_total` | counter | — (their ratio is the group size) |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

/// Latency buckets, in seconds: a relayed request takes milliseconds, a CPU generation minutes.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The process's recorder, installed on first use (one per process: tests run many servers in
/// one process, and they share it).
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        handle
    })
}

/// The text `GET /metrics` answers.
pub fn render() -> String {
    let handle = metrics();
    handle.run_upkeep();
    handle.render()
}
