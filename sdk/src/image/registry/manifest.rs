//! Finding an image's manifest at a source: by tag or digest, through an
//! index to this host's platform, every byte counted against the limit
//! and checked against the digest that names it.

use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

use super::PullConfig;
use super::source::{Asking, Source};
use crate::error::{Error, Result};
use crate::image::oci::{self, Descriptor, ImageConfig, Index, Manifest};
use crate::image::reference::RemoteReference;

/// What a registry is asked to send for a manifest.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Indexes inside indexes followed at most this deep.
const MAX_INDEX_DEPTH: usize = 3;

/// A manifest as sent, with its digest.
pub(super) struct RawManifest {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

/// The image manifest chosen for this host.
pub(super) struct Chosen {
    pub raw: RawManifest,
    pub manifest: Manifest,
    /// The digest the reference resolved to first (an index's, for a
    /// multi-platform image).
    pub top_digest: String,
}

fn invalid(what: String, reason: impl Into<String>) -> Error {
    Error::InvalidImage {
        what,
        reason: reason.into(),
    }
}

/// GET one manifest, at most `limit` bytes; by digest, its bytes must
/// have that digest.
async fn fetch(src: &Source, version: &str, limit: u64) -> Result<RawManifest> {
    let resp = src
        .get(
            Asking::Manifest,
            &format!("manifests/{version}"),
            Some(ACCEPT),
            None,
        )
        .await?;
    let what = || format!("manifest {version} from {}", src.label());
    let too_large = |size: u64| Error::TooLarge {
        what: what(),
        size,
        limit,
    };
    if let Some(n) = resp.content_length()
        && n > limit
    {
        return Err(too_large(n));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let said_digest = header("docker-content-digest");
    let mut bytes = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| src.request_error(&e))?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large((bytes.len() + chunk.len()) as u64));
        }
        bytes.extend_from_slice(&chunk);
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if version.starts_with("sha256:") && digest != version {
        return Err(invalid(
            what(),
            format!(
                "digest mismatch: expected {version}, the registry sent content with digest {digest}"
            ),
        ));
    }
    if let Some(said) = said_digest.filter(|d| d.starts_with("sha256:"))
        && said != digest
    {
        return Err(invalid(
            what(),
            format!("digest mismatch: the registry says {said}, its content has digest {digest}"),
        ));
    }
    // The JSON's own mediaType wins over the header.
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
    }
    let media_type = serde_json::from_slice::<Kind>(&bytes)
        .ok()
        .and_then(|k| k.media_type)
        .unwrap_or_else(|| {
            content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        });
    Ok(RawManifest {
        bytes,
        digest,
        media_type,
    })
}

/// Resolve `remote` at `src` to the image manifest for this host, and
/// check it against the limits.
pub(super) async fn choose(
    src: &Source,
    remote: &RemoteReference,
    config: &PullConfig,
) -> Result<Chosen> {
    let limit = config.max_manifest_bytes;
    let mut raw = fetch(src, remote.version(), limit).await?;
    let top_digest = raw.digest.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        let what = || format!("{} ({})", remote.canonical(), raw.digest);
        if oci::is_index(&raw.media_type) {
            let index: Index = serde_json::from_slice(&raw.bytes)
                .map_err(|e| invalid(format!("index {}", what()), e.to_string()))?;
            let chosen = oci::pick_platform(&index).ok_or_else(|| {
                let offered: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                invalid(
                    format!("index {}", what()),
                    format!(
                        "no image for linux/{} (it has: {})",
                        oci::host_architecture(),
                        if offered.is_empty() {
                            "none".into()
                        } else {
                            offered.join(", ")
                        }
                    ),
                )
            })?;
            oci::digest_hex("manifest", &chosen.digest)?;
            if chosen.size > limit {
                return Err(Error::TooLarge {
                    what: format!("manifest {} of {}", chosen.digest, remote.canonical()),
                    size: chosen.size,
                    limit,
                });
            }
            let next = chosen.digest.clone();
            raw = fetch(src, &next, limit).await?;
            continue;
        }
        if !oci::is_manifest(&raw.media_type) {
            return Err(invalid(
                format!("manifest {}", what()),
                format!(
                    "unsupported media type {:?} (an OCI or Docker v2 image manifest or index is needed)",
                    raw.media_type
                ),
            ));
        }
        let manifest: Manifest = serde_json::from_slice(&raw.bytes)
            .map_err(|e| invalid(format!("manifest {}", what()), e.to_string()))?;
        check(&manifest, &what(), config)?;
        return Ok(Chosen {
            raw,
            manifest,
            top_digest,
        });
    }
    Err(invalid(
        remote.canonical(),
        format!("indexes nested more than {MAX_INDEX_DEPTH} deep"),
    ))
}

/// An image manifest within the limits, with digests that can name files
/// and layers this store can unpack.
fn check(manifest: &Manifest, what: &str, config: &PullConfig) -> Result<()> {
    let mwhat = || format!("manifest {what}");
    if manifest.schema_version != 2 {
        return Err(invalid(
            mwhat(),
            format!("schema version {} (2 is needed)", manifest.schema_version),
        ));
    }
    let cfg = &manifest.config;
    if cfg.media_type != oci::MT_OCI_CONFIG && cfg.media_type != oci::MT_DOCKER_CONFIG {
        return Err(invalid(
            mwhat(),
            format!(
                "not a container image: its config has media type {:?}",
                cfg.media_type
            ),
        ));
    }
    if manifest.layers.len() > config.max_layers {
        return Err(Error::TooLarge {
            what: format!("image {what} (layers)"),
            size: manifest.layers.len() as u64,
            limit: config.max_layers as u64,
        });
    }
    if cfg.size > config.max_config_bytes {
        return Err(Error::TooLarge {
            what: format!("config of {what}"),
            size: cfg.size,
            limit: config.max_config_bytes,
        });
    }
    let mut total = 0u64;
    for blob in std::iter::once(cfg).chain(&manifest.layers) {
        oci::digest_hex(&mwhat(), &blob.digest)?;
        total = total.saturating_add(blob.size);
    }
    if total > config.max_image_bytes {
        return Err(Error::TooLarge {
            what: format!("image {what}"),
            size: total,
            limit: config.max_image_bytes,
        });
    }
    for layer in &manifest.layers {
        if oci::layer_compression(&layer.media_type).is_none() {
            return Err(invalid(
                mwhat(),
                format!(
                    "layer {} has media type {:?}, which this store cannot unpack",
                    layer.digest, layer.media_type
                ),
            ));
        }
    }
    Ok(())
}

/// Parse and check a config blob against its manifest.
pub(super) fn check_config(bytes: &[u8], manifest: &Manifest, what: &str) -> Result<ImageConfig> {
    let config: ImageConfig = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("config of {what}"), e.to_string()))?;
    if let Some(os) = config.os.as_deref()
        && os != "linux"
    {
        return Err(invalid(
            format!("config of {what}"),
            format!("it is a {os} image; only linux images run here"),
        ));
    }
    let ids = config.rootfs.diff_ids.len();
    if ids != 0 && ids != manifest.layers.len() {
        return Err(invalid(
            format!("config of {what}"),
            format!(
                "it lists {ids} layers (diff_ids), the manifest {}",
                manifest.layers.len()
            ),
        ));
    }
    Ok(config)
}

/// The descriptor naming a manifest in the store's index.
pub(super) fn descriptor(raw: &RawManifest) -> Descriptor {
    Descriptor::new(&raw.media_type, raw.digest.clone(), raw.bytes.len() as u64)
}
