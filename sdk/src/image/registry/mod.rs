//! Pulling images from registries (docs/IMAGES.md).
//!
//! A reference is read the way Docker reads it (`alpine:3.20` is
//! `docker.io/library/alpine:3.20`, the name it is stored under). Each
//! source in turn (the registry's mirrors, then the registry unless
//! `mirror_fallback = false`) is asked for the manifest; an index leads to
//! this host's platform; then the config and the layers the store lacks
//! are downloaded (a few at a time) into `ingest/`, each checked against
//! its digest, and the image is committed to the store at once, under its
//! lock, or not at all.
//!
//! - [`config`]: the `[images]` settings
//! - `auth`: credentials from Docker `config.json` files and the environment
//! - `source`: a registry or mirror, its authorization and bounded GETs
//! - `manifest`: tag or digest to this host's image manifest, with limits
//! - `blob`: one blob into `ingest/`, resumed, verified

mod auth;
mod blob;
pub mod config;
mod manifest;
mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use blink_shared::ImageInfo;
use futures_util::StreamExt as _;
use tracing::{info, warn};

pub use self::config::{PullConfig, PullPolicy};
use self::source::Source;
use super::ingest::Ingest;
use super::reference::{self, RemoteReference};
use super::store::INGEST_DIR;
use super::{DEFAULT_IMAGE, ImageStore};
use crate::error::{Error, Result};

/// What a pull reports as it goes, for progress bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest is known: what will be fetched.
    Resolved {
        reference: String,
        digest: String,
        /// `(digest, size)` of the config and the layers.
        blobs: Vec<(String, u64)>,
    },
    /// Bytes of a blob present so far (a resumed download starts above 0).
    Blob {
        digest: String,
        done: u64,
        total: u64,
    },
    /// A blob is ready; `cached` when it was not downloaded.
    BlobDone {
        digest: String,
        size: u64,
        cached: bool,
    },
}

/// A progress callback, called from the pull's tasks.
pub type PullProgress = Arc<dyn Fn(&PullEvent) + Send + Sync>;

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullReport {
    /// The image as stored.
    #[serde(flatten)]
    pub image: ImageInfo,
    /// The digest the reference resolved to at the registry (an index's
    /// for a multi-platform image; `digest` is this host's manifest).
    pub resolved_digest: String,
    /// Where it came from (`registry HOST` or `mirror HOST`).
    pub source: String,
    /// Blobs downloaded, and their bytes.
    pub fetched_blobs: usize,
    pub fetched_bytes: u64,
    /// Blobs the store already had.
    pub cached_blobs: usize,
}

/// Pulls into one store; shared by every surface of a process. Concurrent
/// pulls of one image wait for the first and use what it stored; pulls of
/// images sharing a blob download it once (also across processes).
pub struct Puller {
    store: Arc<ImageStore>,
    config: PullConfig,
    /// The HTTP clients, or why they could not be made (a host without CA
    /// certificates): a server starts either way, and pulls say why not.
    clients: std::result::Result<(reqwest::Client, oci_client::Client), String>,
    /// One gate per image name being pulled.
    gates: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store.dir())
            .finish_non_exhaustive()
    }
}

const USER_AGENT: &str = concat!("blink/", env!("CARGO_PKG_VERSION"));

impl Puller {
    /// A puller with checked settings.
    pub fn new(store: Arc<ImageStore>, config: PullConfig) -> Result<Self> {
        config.validate()?;
        let clients = Self::clients(&config);
        if let Err(e) = &clients {
            tracing::warn!(error = %e, "registry pulls are unavailable");
        }
        Ok(Self {
            store,
            clients,
            config,
            gates: Mutex::default(),
        })
    }

    fn clients(
        config: &PullConfig,
    ) -> std::result::Result<(reqwest::Client, oci_client::Client), String> {
        let why = |e: &dyn std::fmt::Display| {
            format!(
                "building the registry client failed (are the system's CA certificates installed? Debian: ca-certificates): {e}"
            )
        };
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.connect_timeout())
            .read_timeout(config.read_timeout())
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| why(&e))?;
        let oci = oci_client::Client::try_from(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(
                config.insecure_registries.clone(),
            ),
            platform_resolver: None,
            connect_timeout: Some(config.connect_timeout()),
            read_timeout: Some(config.read_timeout()),
            user_agent: USER_AGENT,
            ..Default::default()
        })
        .map_err(|e| why(&e))?;
        Ok((http, oci))
    }

    pub fn config(&self) -> &PullConfig {
        &self.config
    }

    fn gate(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.retain(|_, g| g.strong_count() > 0);
        if let Some(g) = gates.get(name).and_then(Weak::upgrade) {
            return g;
        }
        let g = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(name.to_owned(), Arc::downgrade(&g));
        g
    }

    /// Run a store call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ImageStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Runtime(format!("image store task failed: {e}")))?
    }

    /// Pull `reference` (a tag is looked up again even if the store has
    /// it; only what the store lacks is downloaded).
    pub async fn pull(
        &self,
        reference: &str,
        progress: Option<PullProgress>,
    ) -> Result<PullReport> {
        let remote = RemoteReference::parse(reference)?;
        let name = remote.canonical();
        if !self.config.allows(&remote.registry) {
            return Err(Error::NotPermitted(format!(
                "pulling from {} is not allowed here ([images] allowed_registries: {})",
                remote.registry,
                self.config.allowed_registries.join(", ")
            )));
        }
        let gate = self.gate(&name);
        let (_gate, waited) = match gate.clone().try_lock_owned() {
            Ok(g) => (g, false),
            Err(_) => (gate.lock_owned().await, true),
        };
        if waited {
            // Another pull of this name just finished: use what it stored.
            let lookup = name.clone();
            if let Ok(image) = self.blocking(move |s| s.resolve(&lookup)).await {
                let info = image.info();
                return Ok(PullReport {
                    resolved_digest: info.digest.clone(),
                    image: info,
                    source: "a concurrent pull".into(),
                    fetched_blobs: 0,
                    fetched_bytes: 0,
                    cached_blobs: image.layers.len() + 1,
                });
            }
        }
        let limit = self.config.pull_timeout();
        let result = match tokio::time::timeout(limit, self.pull_sources(&remote, progress)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Registry {
                registry: remote.registry.clone(),
                reason: format!(
                    "pulling {name} took longer than {} s ([images] pull_timeout_secs); pulling again resumes it",
                    limit.as_secs()
                ),
            }),
        };
        audit(&name, &result);
        result
    }

    /// Try each source in turn.
    async fn pull_sources(
        &self,
        remote: &RemoteReference,
        progress: Option<PullProgress>,
    ) -> Result<PullReport> {
        let creds = tokio::task::spawn_blocking({
            let config = self.config.clone();
            move || auth::CredentialStore::load(&config)
        })
        .await
        .map_err(|e| Error::Runtime(format!("reading credentials failed: {e}")))??;
        let (http, oci) = self.clients.clone().map_err(|reason| Error::Registry {
            registry: remote.registry.clone(),
            reason,
        })?;
        let hosts = source::hosts_for(&self.config, &remote.registry);
        let mut failures: Vec<(String, Error)> = Vec::new();
        for (host, mirror) in &hosts {
            let src = Source::new(
                host,
                *mirror,
                self.config.is_insecure(host),
                remote,
                creds.get(host).cloned(),
                http.clone(),
                oci.clone(),
            );
            match self.pull_from(&src, remote, progress.clone()).await {
                Ok(report) => return Ok(report),
                Err(e) => {
                    if hosts.len() > 1 {
                        warn!(image = %remote.canonical(), source = %src.label(), error = %e, "pull failed; trying the next source");
                    }
                    failures.push((src.label(), e));
                }
            }
        }
        if failures.len() == 1
            || failures
                .iter()
                .all(|(_, e)| matches!(e, Error::ImageNotFound { .. }))
        {
            // One source: its error as it is.
            if let Some((_, e)) = failures.pop() {
                return Err(e);
            }
        }
        Err(Error::Registry {
            registry: remote.registry.clone(),
            reason: format!(
                "every source failed: {}",
                failures
                    .iter()
                    .map(|(who, e)| format!("{who}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        })
    }

    async fn pull_from(
        &self,
        src: &Source,
        remote: &RemoteReference,
        progress: Option<PullProgress>,
    ) -> Result<PullReport> {
        let name = remote.canonical();
        src.authorize().await?;
        let chosen = manifest::choose(src, remote, &self.config).await?;
        let blobs: Vec<oci::Descriptor> = std::iter::once(chosen.manifest.config.clone())
            .chain(chosen.manifest.layers.iter().cloned())
            .collect();
        if let Some(p) = &progress {
            p(&PullEvent::Resolved {
                reference: name.clone(),
                digest: chosen.raw.digest.clone(),
                blobs: blobs.iter().map(|b| (b.digest.clone(), b.size)).collect(),
            });
        }
        let ingest = Ingest::new(self.store.dir().join(INGEST_DIR));
        let _running = ingest
            .pull_guard()
            .map_err(|e| Error::io("marking a pull as running", e))?;
        let mut fetched = Vec::new();
        if let Err(e) = self
            .fetch_blobs(src, &chosen, &name, &ingest, progress, &mut fetched)
            .await
        {
            // A refused image leaves nothing; a cut connection leaves its
            // downloads for the next pull to resume.
            if !matches!(e, Error::Registry { .. }) {
                discard(&ingest, &blobs, &fetched);
            }
            return Err(e);
        }
        let fetched_blobs = fetched.iter().filter(|f| !f.cached).count();
        let fetched_bytes = fetched.iter().map(|f| f.fetched).sum();
        let cached_blobs = fetched.len() - fetched_blobs;
        let raw_bytes = chosen.raw.bytes.clone();
        let desc = manifest::descriptor(&chosen.raw);
        let commit_name = name.clone();
        let infos = self
            .blocking(move |store| {
                let mut staging = store.staging()?;
                let digest = staging.add_bytes(&raw_bytes)?;
                if digest != desc.digest {
                    return Err(Error::Runtime(format!(
                        "manifest {} changed while staged (now {digest})",
                        desc.digest
                    )));
                }
                for f in fetched {
                    staging.add_file(f.digest, f.path);
                }
                store.commit(staging, vec![(commit_name, desc)])
            })
            .await?;
        let image = infos
            .into_iter()
            .next()
            .ok_or_else(|| Error::Runtime(format!("{name} was not committed")))?;
        Ok(PullReport {
            image,
            resolved_digest: chosen.top_digest,
            source: src.label(),
            fetched_blobs,
            fetched_bytes,
            cached_blobs,
        })
    }

    /// The config (it must parse before any layer is worth fetching), then
    /// the layers, a few at a time; each into `fetched` as it is ready.
    async fn fetch_blobs(
        &self,
        src: &Source,
        chosen: &manifest::Chosen,
        name: &str,
        ingest: &Ingest,
        progress: Option<PullProgress>,
        fetched: &mut Vec<blob::Fetched>,
    ) -> Result<()> {
        let done = |f: &blob::Fetched, size: u64| {
            if let Some(p) = &progress {
                p(&PullEvent::BlobDone {
                    digest: f.digest.clone(),
                    size,
                    cached: f.cached,
                });
            }
        };
        let config = blob::fetch(
            src,
            &self.store,
            ingest,
            &chosen.manifest.config,
            progress.as_ref(),
        )
        .await?;
        done(&config, chosen.manifest.config.size);
        let config_path = config.path.clone();
        fetched.push(config);
        let config_bytes = read_config(&config_path, self.config.max_config_bytes)?;
        manifest::check_config(&config_bytes, &chosen.manifest, name)?;
        let mut downloads = futures_util::stream::iter(chosen.manifest.layers.clone())
            .map(|layer: oci::Descriptor| {
                let progress = progress.clone();
                async move {
                    let f =
                        blob::fetch(src, &self.store, ingest, &layer, progress.as_ref()).await?;
                    Ok::<_, Error>((f, layer.size))
                }
            })
            .buffer_unordered(self.config.concurrent_downloads);
        while let Some(f) = downloads.next().await {
            let (f, size) = f?;
            done(&f, size);
            fetched.push(f);
        }
        Ok(())
    }

    /// Make sure `reference` is in the store, pulling it if the policy
    /// lets a session or run do that. Images under `blink/` are built
    /// here, never pulled.
    pub async fn ensure(&self, reference: &str) -> Result<()> {
        let lookup = reference.to_owned();
        if self.blocking(move |s| s.contains(&lookup)).await? {
            return Ok(());
        }
        let local = reference::normalize(reference)?;
        if local == DEFAULT_IMAGE || local.starts_with("blink/") {
            return Ok(());
        }
        if self.config.pull == PullPolicy::Never {
            return Err(Error::ImageNotFound {
                reference: local,
                hint: "this server does not pull on demand ([images] pull = \"never\"); pull it with 'blink-cli image pull REF' or import it with 'blink-cli image import FILE'".into(),
            });
        }
        self.pull(reference, None).await.map(|_| ())
    }
}

use super::oci;

/// A pull's audit line (`blink::image`) and metrics.
fn audit(name: &str, result: &Result<PullReport>) {
    match result {
        Ok(r) => {
            crate::metrics::image_pull("ok", r.fetched_bytes);
            info!(target: "blink::image", image = %name, digest = %r.image.digest, source = %r.source, fetched_blobs = r.fetched_blobs, fetched_bytes = r.fetched_bytes, cached_blobs = r.cached_blobs, "image pulled");
        }
        Err(e) => {
            let kind = match e {
                Error::ImageNotFound { .. } => "not_found",
                Error::InvalidImage { .. } | Error::TooLarge { .. } => "refused",
                Error::Registry { .. } => "registry",
                Error::NotPermitted(_) => "not_permitted",
                _ => "error",
            };
            crate::metrics::image_pull(kind, 0);
            warn!(target: "blink::image", image = %name, result = kind, error = %e, "image pull failed");
        }
    }
}

/// Remove what a refused pull downloaded: its verified blobs, and the
/// partial downloads of its blobs that no other pull is working on.
fn discard(ingest: &Ingest, blobs: &[oci::Descriptor], fetched: &[blob::Fetched]) {
    for f in fetched.iter().filter(|f| !f.cached) {
        let _ = std::fs::remove_file(&f.path);
    }
    for b in blobs {
        let Ok(hex) = oci::digest_hex("blob", &b.digest) else {
            continue;
        };
        if let Ok(Some(lock)) = ingest.try_lock(hex) {
            let _ = std::fs::remove_file(ingest.partial_path(hex));
            lock.release();
        }
    }
}

/// The config blob's bytes, at most `limit`.
fn read_config(path: &std::path::Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut data = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if data.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: "image config".into(),
            size: data.len() as u64,
            limit,
        });
    }
    Ok(data)
}
