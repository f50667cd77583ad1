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
use easel_core::fetch::ImageFetcher;
use easel_core::registry::Model;
use easel_core::service::ImageService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use url::Url;

use crate::backends;
use crate::config::Config;
use crate::error::ApiError;
use crate::routes;
use crate::state::{AppState, Shared};
use crate::storage::blobs::Blobs;
use crate::storage::keys::ApiKeys;
use crate::storage::signing::{self, UrlSigner};
use crate::storage::{db, sweep};

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    address: SocketAddr,
    stop: CancellationToken,
    sweep_interval: Duration,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, Vec::new()).await
    }

    /// Like [`Application::build`], with models built in code added to the configured ones.
    pub async fn build_with(config: Config, extra_models: Vec<Model>) -> anyhow::Result<Self> {
        let valid = config.validate()?;
        let data_dir = &config.storage.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", data_dir.display()))?;
        let db = db::connect(&valid.database_url).await?;
        let blobs = Blobs::local(&valid.blobs_dir)?;
        let keys = ApiKeys::new(db.clone());
        let signer = UrlSigner::new(signing::load_key(config.auth.url_signing_key_env.as_deref(), data_dir)?)?;

        let bind = valid.bind;
        let open_allowed = bind.ip().is_loopback() || config.server.insecure_no_auth;
        let has_keys = keys.any_active().await?;
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

        let registry = backends::build_registry(&config, extra_models)?;
        let fetcher =
            ImageFetcher::new(valid.allow_image_hosts, config.server.max_download_bytes, Duration::from_secs(30))?;
        let service = ImageService::new(std::sync::Arc::new(registry), fetcher, valid.service);

        let listener = TcpListener::bind(bind).await.map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
        let address = listener.local_addr()?;
        let public_url = match &config.server.public_url {
            Some(url) => url.clone(),
            None => Url::parse(&format!("http://{address}"))?,
        };
        let state = AppState::new(Shared {
            service,
            db,
            blobs,
            keys,
            signer,
            public_url,
            url_ttl_secs: config.storage.url_ttl_secs as i64,
            unknown_params: config.server.unknown_parameters,
            keep_alive: Duration::from_secs(config.server.keep_alive_secs.max(1)),
            open_when_keyless: open_allowed,
            max_body_bytes: config.server.max_body_bytes,
        });
        let router = routes::routes()
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(config.server.max_body_bytes))
            .layer(TraceLayer::new_for_http())
            .with_state(state.clone());
        Ok(Self {
            listener,
            router,
            state,
            address,
            stop: CancellationToken::new(),
            sweep_interval: Duration::from_secs(config.storage.sweep_interval_secs.max(1)),
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

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(address = %self.address, public_url = %self.state.public_url, "easel is listening");
        let sweeper = tokio::spawn(sweep::run(
            self.state.db.clone(),
            self.state.blobs.clone(),
            self.sweep_interval,
            self.stop.clone(),
        ));
        let stop = self.stop.clone();
        let result = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = shutdown_signal() => tracing::info!("shutting down: finishing in-flight requests"),
                }
            })
            .await;
        self.stop.cancel();
        let _ = sweeper.await;
        result
    }
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
