//! Hosted image bytes in an object store, keyed `images/<unix day>/<image id>.<ext>`: a local
//! folder by default, or an S3 bucket (AWS, or S3-compatible stores such as Garage or MinIO) so
//! that several nodes serve the same images.
//!
//! S3 settings come from the standard `AWS_*` environment variables (object_store's
//! `AmazonS3Builder::from_env`), so credentials never sit in the config file. Requests are
//! path-style (`<endpoint>/<bucket>/<key>`), which every S3-compatible store accepts, unless
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`.

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// What a `storage.blobs` value names, read without touching the store (for `Config::validate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// `s3://bucket[/prefix]`.
    S3,
    /// `file:///dir` or a plain directory path.
    Dir(std::path::PathBuf),
}

impl Spec {
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        match spec.split_once("://") {
            Some(("s3", _)) => parse_s3(spec).map(|_| Self::S3),
            Some(("file", _)) => {
                let url = url::Url::parse(spec).map_err(|e| anyhow::anyhow!("storage.blobs '{spec}': {e}"))?;
                let dir =
                    url.to_file_path().map_err(|()| anyhow::anyhow!("storage.blobs '{spec}' is not a file path"))?;
                Ok(Self::Dir(dir))
            }
            Some((scheme, _)) => anyhow::bail!(
                "storage.blobs '{spec}': unsupported scheme '{scheme}://'; expected s3://BUCKET[/PREFIX], \
                 file:///DIR or a directory path"
            ),
            None => Ok(Self::Dir(spec.into())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Where the blobs live, for messages (`s3://bucket/prefix` or the folder).
    location: String,
    /// The folder, for a local store (see [`Blobs::remove_partial_writes`]).
    dir: Option<std::path::PathBuf>,
}

/// One stored object, as [`Blobs::list`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    /// When it was last written, in Unix seconds (the store's clock).
    pub modified: i64,
}

impl Blobs {
    /// The store named by `spec` (see [`Spec::parse`]).
    pub fn open(spec: &str) -> anyhow::Result<Self> {
        match Spec::parse(spec)? {
            Spec::S3 => Self::s3(spec),
            Spec::Dir(dir) => Self::local(&dir),
        }
    }

    /// A store rooted at `dir`, created if missing.
    pub fn local(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self { store: Arc::new(store), location: dir.display().to_string(), dir: Some(dir.to_path_buf()) })
    }

    /// A store in an S3 bucket, `s3://bucket[/prefix]`; every key is put under `prefix/`.
    ///
    /// The endpoint, region and credentials come from the environment: `AWS_ENDPOINT_URL` (or
    /// `AWS_ENDPOINT`; unset means AWS itself), `AWS_REGION` (Garage's default is `garage`),
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (both unset means instance or container
    /// credentials), and `AWS_ALLOW_HTTP=true` for a plain `http://` endpoint.
    pub fn s3(spec: &str) -> anyhow::Result<Self> {
        let (bucket, prefix) = parse_s3(spec)?;
        check_s3_env(spec, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))?;
        let builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        // Path-style unless the environment asks otherwise: S3-compatible stores rarely have
        // per-bucket DNS names.
        let virtual_hosted = std::env::var("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_ok_and(|v| v == "true");
        let s3 = builder
            .with_virtual_hosted_style_request(virtual_hosted)
            .build()
            .with_context(|| format!("storage.blobs '{spec}': invalid S3 settings"))?;
        let store: Arc<dyn ObjectStore> = match prefix {
            Some(prefix) => Arc::new(PrefixStore::new(s3, prefix)),
            None => Arc::new(s3),
        };
        Ok(Self { store, location: spec.trim_end_matches('/').to_string(), dir: None })
    }

    pub fn key_for(id: &uuid::Uuid, extension: &str, now: i64) -> String {
        format!("images/{}/{id}.{extension}", now.div_euclid(86_400))
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.store
            .put(&Path::from(key), PutPayload::from(bytes))
            .await
            .with_context(|| format!("cannot write {key} to {}", self.location))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        let read = async { self.store.get(&Path::from(key)).await?.bytes().await };
        match read.await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {key} from {}", self.location))),
        }
    }

    /// Deletes `key`; deleting what is not there succeeds.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot delete {key} from {}", self.location))),
        }
    }

    /// Every object whose key starts with `prefix/`, in no particular order.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, anyhow::Result<Stored>> {
        let location = self.location.clone();
        self.store
            .list(Some(&Path::from(prefix)))
            .map(move |listed| {
                let meta = listed.with_context(|| format!("cannot list {location}"))?;
                Ok(Stored { key: meta.location.to_string(), modified: meta.last_modified.timestamp() })
            })
            .boxed()
    }

    /// Removes the partial files that writes cut short left in a local folder, if last written
    /// before `before` (Unix seconds); returns how many. A local put writes `<key>#<n>` and
    /// renames it into place, so a process killed mid-write leaves that file, which
    /// [`Blobs::list`] never shows and no key names. An S3 put of one part is atomic: nothing to
    /// do there.
    pub async fn remove_partial_writes(&self, before: i64) -> anyhow::Result<usize> {
        let Some(dir) = self.dir.clone() else { return Ok(0) };
        tokio::task::spawn_blocking(move || remove_partial_files(&dir, before)).await?
    }

    /// Writes, reads back and removes a probe object, for `/readyz` and startup.
    pub async fn check(&self) -> anyhow::Result<()> {
        let key = "readyz/probe";
        self.put(key, Bytes::from_static(b"ok")).await?;
        anyhow::ensure!(
            self.get(key).await?.as_deref() == Some(b"ok".as_slice()),
            "the blob store at {} did not return the probe it was given",
            self.location
        );
        self.delete(key).await
    }
}

/// Walks `dir` for files named `<name>#<digits>` written before `before` and removes them.
fn remove_partial_files(dir: &std::path::Path, before: i64) -> anyhow::Result<usize> {
    let mut removed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            let partial = name
                .to_str()
                .and_then(|n| n.rsplit_once('#'))
                .is_some_and(|(_, counter)| !counter.is_empty() && counter.bytes().all(|b| b.is_ascii_digit()));
            let written = entry.metadata()?.modified()?;
            let written = written.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            if kind.is_file() && partial && written < before {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!("cannot remove {}", entry.path().display())));
                    }
                }
            }
        }
    }
    Ok(removed)
}

/// `s3://bucket[/prefix]` into the bucket and the prefix (without slashes at either end).
fn parse_s3(spec: &str) -> anyhow::Result<(String, Option<String>)> {
    let rest = spec.strip_prefix("s3://").with_context(|| format!("storage.blobs '{spec}' is not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(!bucket.is_empty(), "storage.blobs '{spec}' names no bucket; expected s3://BUCKET[/PREFIX]");
    anyhow::ensure!(
        !bucket.contains(['?', '#', '@', ':']),
        "storage.blobs '{spec}': '{bucket}' is not a bucket name; expected s3://BUCKET[/PREFIX] with the endpoint \
         and credentials in AWS_* environment variables"
    );
    let prefix = prefix.trim_matches('/');
    Ok((bucket.to_string(), (!prefix.is_empty()).then(|| prefix.to_string())))
}

/// Catches the S3 settings that would otherwise fail only at the first request, naming the
/// missing environment variable.
fn check_s3_env(spec: &str, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(_), None) => {
            anyhow::bail!("storage.blobs '{spec}': AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
        }
        (None, Some(_)) => {
            anyhow::bail!("storage.blobs '{spec}': AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not")
        }
        _ => {}
    }
    let endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
    if let Some(endpoint) = endpoint.filter(|e| e.starts_with("http://")) {
        anyhow::ensure!(
            var("AWS_ALLOW_HTTP").is_some_and(|v| v == "true"),
            "storage.blobs '{spec}': the S3 endpoint {endpoint} is plain http; set AWS_ALLOW_HTTP=true to allow it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        assert_eq!(parse_s3("s3://images").unwrap(), ("images".into(), None));
        assert_eq!(parse_s3("s3://images/").unwrap(), ("images".into(), None));
        assert_eq!(parse_s3("s3://images/easel/prod/").unwrap(), ("images".into(), Some("easel/prod".into())));
        assert!(parse_s3("s3:///prefix").unwrap_err().to_string().contains("names no bucket"));
        assert!(parse_s3("s3://key:secret@bucket").unwrap_err().to_string().contains("AWS_*"));
    }

    #[test]
    fn s3_environment_is_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let spec = "s3://b";
        assert!(check_s3_env(spec, env(&[])).is_ok());
        let err = check_s3_env(spec, env(&[("AWS_ACCESS_KEY_ID", "GK1")])).unwrap_err().to_string();
        assert!(err.contains("AWS_SECRET_ACCESS_KEY is not"), "{err}");
        let err = check_s3_env(spec, env(&[("AWS_SECRET_ACCESS_KEY", "s")])).unwrap_err().to_string();
        assert!(err.contains("AWS_ACCESS_KEY_ID is not"), "{err}");
        let err = check_s3_env(spec, env(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:3900")])).unwrap_err().to_string();
        assert!(err.contains("AWS_ALLOW_HTTP=true"), "{err}");
        let local = env(&[("AWS_ENDPOINT", "http://127.0.0.1:3900"), ("AWS_ALLOW_HTTP", "true")]);
        assert!(check_s3_env(spec, local).is_ok());
        assert!(check_s3_env(spec, env(&[("AWS_ENDPOINT_URL", "https://s3.example")])).is_ok());
    }

    #[test]
    fn open_rejects_unknown_schemes() {
        let err = Blobs::open("gs://bucket").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme 'gs://'"), "{err}");
    }

    #[tokio::test]
    async fn lists_keys_and_removes_only_old_partial_writes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path()).unwrap();
        blobs.put("images/1/a.png", Bytes::from_static(b"png")).await.unwrap();
        blobs.put("other/b.png", Bytes::from_static(b"png")).await.unwrap();
        let partial = dir.path().join("images/1/c.png#3");
        std::fs::write(&partial, b"half a png").unwrap();
        let listed: Vec<Stored> = blobs.list("images").map(Result::unwrap).collect().await;
        let now = crate::storage::now();
        assert_eq!(listed.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["images/1/a.png"]);
        assert!((now - 60..=now + 1).contains(&listed[0].modified), "{listed:?}");
        assert_eq!(blobs.remove_partial_writes(now - 60).await.unwrap(), 0, "a recent partial write is kept");
        assert_eq!(blobs.remove_partial_writes(now + 1).await.unwrap(), 1);
        assert!(!partial.exists());
        assert!(blobs.get("images/1/a.png").await.unwrap().is_some(), "whole blobs are never touched");
    }

    #[tokio::test]
    async fn open_takes_folders_and_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Blobs::open(dir.path().join("a").to_str().unwrap()).unwrap();
        plain.put("k", Bytes::from_static(b"1")).await.unwrap();
        assert!(dir.path().join("a/k").is_file());
        let url = url::Url::from_directory_path(dir.path().join("b")).unwrap();
        let file = Blobs::open(url.as_str()).unwrap();
        file.put("k", Bytes::from_static(b"2")).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("b/k")).unwrap(), b"2");
    }
}
