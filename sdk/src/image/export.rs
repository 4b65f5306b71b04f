//! Writing one image of the store as an OCI image archive (a tar of an OCI
//! layout: `oci-layout`, `index.json` naming it, and its blobs), the form
//! [`ImageStore::import_archive`] reads back: how session archives carry
//! their image.

use std::collections::BTreeMap;
use std::io::Write;

use super::oci::{self, Descriptor};
use super::store::ImageStore;
use crate::error::{Error, Result};

impl ImageStore {
    /// Write image `reference` to `out` as an OCI archive.
    pub fn export_archive<W: Write>(&self, reference: &str, out: W) -> Result<W> {
        let image = self.resolve(reference)?;
        let io = |e: std::io::Error| Error::io("writing the image archive", e);
        let mut tar = tar::Builder::new(out);
        let add = |tar: &mut tar::Builder<W>, path: &str, data: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, path, data).map_err(io)
        };
        add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let manifest_path = self.blob_path(&image.digest)?;
        let manifest_size = std::fs::metadata(&manifest_path)
            .map_err(|e| Error::io("reading the image manifest", e))?
            .len();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [Descriptor {
                media_type: image.manifest_media_type.clone(),
                digest: image.digest.clone(),
                size: manifest_size,
                annotations: BTreeMap::from([(
                    "org.opencontainers.image.ref.name".to_owned(),
                    image.reference.clone(),
                )]),
                platform: None,
            }],
        });
        add(&mut tar, "index.json", index.to_string().as_bytes())?;
        let digests = [image.digest.clone(), image.config_digest.clone()]
            .into_iter()
            .chain(image.layers.iter().map(|l| l.digest.clone()));
        for digest in digests {
            let path = self.blob_path(&digest)?;
            let hex = oci::digest_hex("blob", &digest)?;
            let mut file = std::fs::File::open(&path)
                .map_err(|e| Error::io(format!("reading blob {digest}"), e))?;
            tar.append_file(format!("blobs/sha256/{hex}"), &mut file)
                .map_err(io)?;
        }
        tar.into_inner().map_err(io)
    }
}
