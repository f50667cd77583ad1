//! Building and running the application.
//!
//! [`Application::build`] opens the stores, builds the model registry and binds the listener
//! (port 0 works, which is how tests run many servers at once); [`Application::run_until_stopped`]
//! serves until SIGINT/SIGTERM and then drains in-flight requests. `main` and the tests share
//! this path.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::response::IntoResponse;
use easel_core::registry::Model;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use url::Url;

use crate::backends;
use crate::config::Config;
use crate::drain::Drain;
use crate::error::ApiError;
use crate::state::{AppState, Shared};
use crate::storage::blobs::Blobs;
use crate::storage::keys::ApiKeys;
use crate::storage::limits::Limiter;
use crate::storage::signing::{self, UrlSigner};
use crate::storage::writer::Writer;
use crate::storage::{db, sweep};
use crate::{body_timeout, lanes, observe, routes, telemetry};

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    address: SocketAddr,
    stop: CancellationToken,
    sweep_interval: Duration,
    /// `/metrics` on a listener of its own (`[metrics] bind`).
    metrics_listener: Option<TcpListener>,
    grace: Duration,
    /// Async task workers, when this node's role runs them.
    tasks: Option<crate::tasks::Settings>,
    /// Threads serving HTTP connections (`[server] http_threads`).
    http_threads: usize,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, Vec::new()).await
    }

    /// Like [`Application::build`], with models built in code added to the configured ones.
    pub async fn build_with(config: Config, extra_models: Vec<Model>) -> anyhow::Result<Self> {
        let valid = config.validate()?;
        // Before any backend is built: their workers take their metric handles when they start.
        if config.metrics.enabled {
            telemetry::metrics();
        }
        let data_dir = &config.storage.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", data_dir.display()))?;
        let db = db::connect(&valid.database_url).await?;
        let writer = Writer::spawn(db::connect_writer(&db).await?);
        let blobs = Blobs::open(&valid.blobs)?;
        let keys = ApiKeys::new(db.clone());
        let limiter = Limiter::new(db.clone(), Duration::from_secs(config.limits.reservation_ttl_secs.max(1)));
        let signer = UrlSigner::new(signing::load_key(config.auth.url_signing_key_env.as_deref(), data_dir)?)?;

        let bind = valid.bind;
        let open_allowed = bind.ip().is_loopback() || config.server.insecure_no_auth;
        let has_keys = keys.any_ever().await?;
        anyhow::ensure!(
            open_allowed || has_keys,
            "refusing to serve {bind} without API keys: create one with `easel keys create --name NAME`, \
             bind a loopback address, or pass --insecure-no-auth"
        );
        if !has_keys {
            if config.server.insecure_no_auth && !bind.ip().is_loopback() {
                tracing::warn!(%bind, "serving WITHOUT authentication on a non-loopback address (--insecure-no-auth)");
            } else {
                tracing::warn!("no API keys exist: serving without authentication on loopback until one is created");
            }
        }

        let service = backends::build_service(&config, extra_models, valid.allow_image_hosts, valid.service).await?;

        let listener = TcpListener::bind(bind).await.map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
        let address = listener.local_addr()?;
        // `Config::validate` refused a wildcard bind without `public_url`.
        let public_url = match &config.server.public_url {
            Some(url) => url.clone(),
            None => Url::parse(&format!("http://{address}"))?,
        };
        let state = AppState::new(Shared {
            service,
            db,
            writer,
            blobs,
            keys,
            signer,
            public_url,
            url_ttl_secs: config.storage.url_ttl_secs as i64,
            unknown_params: config.server.unknown_parameters,
            keep_alive: Duration::from_secs(config.server.keep_alive_secs.max(1)),
            open_when_keyless: open_allowed,
            max_body_bytes: config.server.max_body_bytes,
            drain: Drain::default(),
            limiter,
            tasks: crate::tasks::LocalTasks::default(),
        });
        let metrics_listener = match valid.metrics_bind {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?)
            }
            None => None,
        };
        let role = config.server.role;
        let mut router = if role.serves_api() { routes::routes() } else { routes::health() };
        if role.serves_api() && config.server.playground_on(bind) {
            router = router.merge(routes::playground());
        }
        if config.metrics.enabled && metrics_listener.is_none() {
            router = router.merge(routes::metrics());
        }
        let router = router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(config.server.max_body_bytes))
            .layer(body_timeout::layer(Duration::from_secs(config.server.body_timeout_secs)))
            .layer(axum::middleware::from_fn_with_state(state.clone(), observe::observe))
            // Inside the observer: a panicking handler becomes a 500 envelope that is counted.
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
            )
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .with_state(state.clone());
        Ok(Self {
            listener,
            router,
            state,
            address,
            stop: CancellationToken::new(),
            sweep_interval: Duration::from_secs(config.storage.sweep_interval_secs.max(1)),
            metrics_listener,
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
            tasks: role.runs_tasks().then(|| config.tasks.settings()),
            http_threads: lanes::count(config.server.http_threads),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// A token that stops the server when cancelled (tests use it instead of a signal).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The address of the private metrics listener, when there is one.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until SIGINT/SIGTERM (or the stop token), then drains: new requests get a 503
    /// envelope and `/readyz` says not ready, while the work in flight gets up to
    /// `[server] shutdown_grace_secs` to finish; then the listeners close.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(address = %self.address, public_url = %self.state.public_url, "easel is listening");
        let sweeper = tokio::spawn(sweep::run(
            self.state.db.clone(),
            self.state.blobs.clone(),
            self.state.limiter.clone(),
            self.sweep_interval,
            self.stop.clone(),
        ));
        let tasks =
            self.tasks.map(|settings| crate::tasks::runner::spawn(self.state.clone(), settings, self.stop.clone()));
        let closed = CancellationToken::new();
        let drainer = tokio::spawn({
            let (stop, drain, grace, closed) =
                (self.stop.clone(), self.state.drain.clone(), self.grace, closed.clone());
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = shutdown_signal() => {}
                }
                tracing::info!(
                    in_flight = drain.in_flight(),
                    grace_secs = grace.as_secs(),
                    "draining: new requests get 503"
                );
                match drain.drain(grace).await {
                    0 => tracing::info!("drained: every request finished"),
                    left => tracing::warn!(left, "the grace period is over: stopping with work still running"),
                }
                closed.cancel();
            }
        });
        if let Some(listener) = self.metrics_listener {
            let router = routes::private_metrics();
            tokio::spawn(
                axum::serve(listener, router).with_graceful_shutdown(closed.clone().cancelled_owned()).into_future(),
            );
        }
        // Once drained, connections still open (a client that keeps a finished stream open) get a
        // moment to close, then are dropped.
        let served = lanes::serve(self.listener, self.router, self.http_threads, closed).await;
        self.stop.cancel();
        let _ = drainer.await;
        // Tasks still running past the grace are dropped: their leases run out and another node
        // (or this one, restarted) takes them over.
        if let Some(tasks) = tasks {
            tasks.abort();
        }
        // Requests are drained: commit the ledger rows they queued before the process exits,
        // while the HTTP threads' runtimes (where the ledger's committer may be running, and
        // where PostgreSQL sockets opened by requests are driven) still run.
        self.state.writer.close().await;
        let _ = sweeper.await;
        served.release().await
    }
}

/// A handler panicked: log it and answer with the one internal-error body; the server goes on.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::Internal(anyhow::anyhow!("a handler panicked: {detail}")).into_response()
}

/// Each request's span, named by its `x-request-id`, so every log line it causes carries it.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

async fn not_found(uri: Uri) -> impl IntoResponse {
    ApiError::UnknownUrl(uri.path().to_string())
}

async fn method_not_allowed(method: Method, uri: Uri) -> impl IntoResponse {
    ApiError::MethodNotAllowed { method, path: uri.path().to_string() }
}
