//! An image of Blink's store as a single-image OCI layout, the form
//! BoxLite takes a local rootfs in (`RootfsSpec::RootfsPath`): `oci-layout`,
//! an `index.json` naming one manifest, and that image's blobs, hard-linked
//! from the store (copied across filesystems). Made once per manifest
//! digest, by a rename, so a half-made layout is never used.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::ImageStore;

/// The layout of image `reference` under `dir`, made if missing.
pub fn ensure(store: &ImageStore, reference: &str, dir: &Path) -> Result<PathBuf> {
    let image = store.resolve(reference)?;
    let hex = image
        .digest
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::InvalidImage {
            what: reference.into(),
            reason: format!("manifest digest {} is not sha256", image.digest),
        })?;
    let layout = dir.join(hex);
    if layout.join("index.json").exists() {
        return Ok(layout);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(dir)
        .map_err(|e| Error::io(format!("staging a layout in {}", dir.display()), e))?;
    let blobs = staging.path().join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io("creating layout blobs", e))?;
    let mut digests = vec![image.digest.clone(), image.config_digest.clone()];
    digests.extend(image.layers.iter().map(|l| l.digest.clone()));
    for digest in &digests {
        let from = store.blob_path(digest)?;
        let name = digest.strip_prefix("sha256:").unwrap_or(digest);
        let to = blobs.join(name);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .map_err(|e| Error::io(format!("copying blob {}", from.display()), e))?;
        }
    }
    let manifest_size = std::fs::metadata(store.blob_path(&image.digest)?)
        .map_err(|e| Error::io("reading the manifest's size", e))?
        .len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": image.manifest_media_type,
            "digest": image.digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(
        staging.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(|e| Error::io("writing oci-layout", e))?;
    std::fs::write(
        staging.path().join("index.json"),
        serde_json::to_vec(&index).map_err(|e| Error::Runtime(e.to_string()))?,
    )
    .map_err(|e| Error::io("writing index.json", e))?;
    let staged = staging.keep();
    match std::fs::rename(&staged, &layout) {
        Ok(()) => Ok(layout),
        // Made meanwhile by another start of the same image.
        Err(_) if layout.join("index.json").exists() => {
            let _ = std::fs::remove_dir_all(&staged);
            Ok(layout)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staged);
            Err(Error::io(format!("placing layout {}", layout.display()), e))
        }
    }
}

/// A layout of one empty layer, for the preflight's test boot: the box's
/// only program is the guest helper Blink mounts in.
pub fn empty(dir: &Path) -> Result<PathBuf> {
    use sha2::Digest;
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io("creating layout blobs", e))?;
    let put = |bytes: &[u8]| -> Result<(String, u64)> {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).map_err(|e| Error::io("writing a blob", e))?;
        Ok((format!("sha256:{hex}"), bytes.len() as u64))
    };
    // An empty tar: two zero blocks, gzip-compressed.
    let layer_tar = vec![0u8; 1024];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer_tar).map_err(|e| Error::io("gzip", e))?;
    let layer = gz.finish().map_err(|e| Error::io("gzip", e))?;
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer_tar)));
    let (layer_digest, layer_size) = put(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| Error::io("writing oci-layout", e))?;
    std::fs::write(dir.join("index.json"), index.to_string())
        .map_err(|e| Error::io("writing index.json", e))?;
    Ok(dir.to_path_buf())
}
