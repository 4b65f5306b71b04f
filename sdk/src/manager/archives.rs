//! Exporting a session to a `.boxlite` archive and importing one as a new
//! session (the format: crate::archive, docs/ARCHIVE.md). The runtime reads
//! and writes disks; this file decides names, settings and what goes in.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::store::SessionRecord;
use super::{Manager, lock, names, now};
use crate::archive::{FORMAT, Header, ImageRef, SessionSettings, SnapshotEntry, VERSION};
use crate::error::{Error, Result};
use crate::runtime::{ExportRequest, ImportRequest};
use crate::types::OpenedSession;

/// What an export carries besides the session's disk.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// The image's layers (without them, the importing host must have the
    /// image already).
    pub include_image: bool,
    /// Every snapshot of the session.
    pub include_snapshots: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            include_image: true,
            include_snapshots: false,
        }
    }
}

/// Progress callbacks get a byte count.
pub type ByteProgress = Arc<dyn Fn(u64) + Send + Sync>;

impl Manager {
    /// Write session `name` to `dest`; the archive's size. A running
    /// session is frozen only while its disk is copied.
    pub async fn export_session(
        &self,
        name: &str,
        dest: &Path,
        options: ExportOptions,
        progress: ByteProgress,
    ) -> Result<u64> {
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        let record = lock(&slot.record).clone();
        let image = self.images.resolve(&record.image)?;
        let snapshots = if options.include_snapshots {
            self.runtime
                .snapshots(&record.box_id)?
                .into_iter()
                .map(|s| SnapshotEntry {
                    name: s.name,
                    created_at: s.created_at,
                })
                .collect()
        } else {
            Vec::new()
        };
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            created_at: now(),
            writer: format!("blink {}", env!("CARGO_PKG_VERSION")),
            session: SessionSettings {
                name: record.name.clone(),
                warm: record.warm,
                limits: record.limits.clone(),
            },
            image: ImageRef {
                reference: image.reference.clone(),
                digest: image.digest.clone(),
                layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
            },
            snapshots,
            includes_image: options.include_image,
        };
        let image_archive = if options.include_image {
            let path = dest.with_extension(format!("image-{}.tar", uuid::Uuid::new_v4().simple()));
            let images = self.images.clone();
            let (reference, out) = (image.reference.clone(), path.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                let file = std::fs::File::create(&out)
                    .map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
                let file = images.export_archive(&reference, std::io::BufWriter::new(file))?;
                file.into_inner()
                    .map_err(|e| Error::io("writing the image archive", e.into_error()))?;
                Ok(())
            })
            .await
            .map_err(|e| Error::Runtime(format!("image export task failed: {e}")))??;
            Some(path)
        } else {
            None
        };
        let written = self
            .runtime
            .export(ExportRequest {
                id: record.box_id.clone(),
                header,
                image_archive: image_archive.clone(),
                dest: dest.to_path_buf(),
                progress,
            })
            .await;
        if let Some(path) = image_archive {
            let _ = std::fs::remove_file(path);
        }
        let size = written.map_err(|e| super::checkpoints::named(e, name))?;
        tracing::info!(session = %name, dest = %dest.display(), size, "session exported");
        Ok(size)
    }

    /// Make a session from an archive: named `name`, or as the archive
    /// says. An existing session of that name is refused unless
    /// `replace`, which removes it once the import has succeeded.
    pub async fn import_session(
        &self,
        archive: &Path,
        name: Option<&str>,
        replace: bool,
        progress: ByteProgress,
    ) -> Result<OpenedSession> {
        if let Some(n) = name {
            names::validate(n)?;
        }
        let chosen: Arc<Mutex<Option<String>>> = Arc::default();
        let taken: Vec<String> = lock(&self.slots).keys().cloned().collect();
        let (wanted, seen) = (name.map(str::to_owned), chosen.clone());
        let check = Box::new(move |h: &Header| -> Result<()> {
            let n = wanted.clone().unwrap_or_else(|| h.session.name.clone());
            names::validate(&n)?;
            if !replace && taken.contains(&n) {
                return Err(Error::SessionExists(n));
            }
            *lock(&seen) = Some(n);
            Ok(())
        });
        let box_id = format!("s-{}", uuid::Uuid::new_v4().simple());
        let spec = crate::runtime::SandboxSpec {
            id: box_id.clone(),
            image: String::new(),
            hostname: name.unwrap_or("imported").to_owned(),
            limits: self.config.limits.clone(),
        };
        let header = self
            .runtime
            .import(ImportRequest {
                spec,
                archive: archive.to_path_buf(),
                check,
                progress,
            })
            .await?;
        let name = lock(&chosen)
            .clone()
            .ok_or_else(|| Error::Runtime("the import chose no name".into()))?;
        let _catalog = self.catalog.lock().await;
        if let Ok(old) = self.slot(&name) {
            if !replace {
                let _ = self.runtime.remove(&box_id).await;
                return Err(Error::SessionExists(name));
            }
            drop(_catalog);
            super::sessions::refuse_if_busy(&old, &name, false).inspect_err(|_| {
                let runtime = self.runtime.clone();
                let id = box_id.clone();
                tokio::spawn(async move {
                    let _ = runtime.remove(&id).await;
                });
            })?;
            self.remove_session(&name, false).await?;
            return Box::pin(self.register_import(name, box_id, header)).await;
        }
        drop(_catalog);
        self.register_import(name, box_id, header).await
    }

    async fn register_import(
        &self,
        name: String,
        box_id: String,
        header: Header,
    ) -> Result<OpenedSession> {
        let _catalog = self.catalog.lock().await;
        let t = now();
        let reference = if self
            .images
            .resolve(&header.image.reference)
            .is_ok_and(|i| i.digest == header.image.digest)
        {
            header.image.reference.clone()
        } else {
            header.image.digest.clone()
        };
        let record = SessionRecord {
            name: name.clone(),
            box_id: box_id.clone(),
            image: reference,
            warm: header.session.warm,
            runtime: self.runtime.info().name,
            created_at: t,
            last_used_at: t,
            limits: self.limits_for_import(&name, &header.session.limits),
            network: self.config.network.clone(),
            run_timeout_secs: None,
            idle_timeout_secs: None,
            forwarding: self.config.forwarding,
        };
        if let Err(e) = self.store.save(&record) {
            let _ = self.runtime.remove(&box_id).await;
            let _ = self.store.delete(&name);
            return Err(e);
        }
        let slot = Arc::new(super::sessions::new_slot(
            record.clone(),
            t.saturating_mul(1000),
        ));
        lock(&self.slots).insert(name.clone(), slot.clone());
        drop(_catalog);
        tracing::info!(session = %name, box_id = %box_id, image = %record.image, "session imported");
        if record.warm {
            self.ensure_running(&name).await?;
        }
        Ok(OpenedSession {
            session: self.session_info(&name)?,
            created: true,
        })
    }
}
