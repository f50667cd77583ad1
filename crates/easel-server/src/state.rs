//! What every handler shares: the image service and the stores. Cheap to clone (one `Arc`).

use std::sync::Arc;
use std::time::Duration;

use easel_core::service::ImageService;
use easel_wire::request::UnknownParams;
use url::Url;

use crate::drain::Drain;
use crate::storage::blobs::Blobs;
use crate::storage::db::Db;
use crate::storage::keys::ApiKeys;
use crate::storage::limits::Limiter;
use crate::storage::signing::UrlSigner;
use crate::storage::writer::Writer;

#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub service: ImageService,
    pub db: Db,
    /// Commits the ledger (usage and image rows), several requests per transaction.
    pub writer: Writer,
    pub blobs: Blobs,
    pub keys: ApiKeys,
    pub signer: UrlSigner,
    /// The base of hosted image URLs.
    pub public_url: Url,
    /// Seconds a hosted image URL stays valid.
    pub url_ttl_secs: i64,
    pub unknown_params: UnknownParams,
    pub keep_alive: Duration,
    /// Whether requests without a key are served while no key exists (loopback or
    /// `--insecure-no-auth`).
    pub open_when_keyless: bool,
    pub max_body_bytes: usize,
    /// Work in flight, and whether the server is draining.
    pub drain: Drain,
    /// Per-key limits and quotas.
    pub limiter: Limiter,
    /// The async tasks this node runs, and the bell that wakes its workers.
    pub tasks: crate::tasks::LocalTasks,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
