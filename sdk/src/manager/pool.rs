//! Ephemeral sandboxes made ahead of time: a run on the default image takes
//! one that is already started instead of making its own, and the pool is
//! topped up in the background. Each is fresh (never used) and removed after
//! its one run, so no run ever sees another's files.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::executions::EphemeralBox;
use super::{Manager, lock};

#[derive(Default)]
pub(super) struct Pool {
    ready: std::sync::Mutex<VecDeque<EphemeralBox>>,
    /// The image the pool keeps (the default image, resolved).
    image: std::sync::Mutex<Option<String>>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Manager {
    /// A started, never-used sandbox of `image` from the pool, if the pool
    /// keeps that image and has one; the pool is topped up either way.
    pub(super) async fn take_pooled(&self, image: &str) -> Option<EphemeralBox> {
        if self.config.ephemeral_pool == 0 || lock(&self.pool.image).as_deref() != Some(image) {
            return None;
        }
        let taken = loop {
            let Some(b) = lock(&self.pool.ready).pop_front() else {
                break None;
            };
            // One that died meanwhile (asked of the runtime: a micro-VM's
            // init may end on its own) is dropped, and so removed.
            if self.runtime.is_alive(b.id()).await {
                break Some(b);
            }
            tracing::info!(sandbox = %b.id(), "a pooled sandbox died while it waited: dropped");
        };
        self.pool.wake.notify_one();
        taken
    }

    /// Take every pooled sandbox (at shutdown).
    pub(super) fn drain_pool(&self) -> Vec<EphemeralBox> {
        lock(&self.pool.ready).drain(..).collect()
    }

    /// The filler: keeps `ephemeral_pool` sandboxes of the default image
    /// ready, woken after each take. It holds the manager only while it
    /// works, so the manager can go.
    pub(super) fn start_pool(self: &Arc<Self>) {
        if self.config.ephemeral_pool == 0 {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let wake = self.pool.wake.clone();
        tokio::spawn(async move {
            loop {
                let Some(m) = weak.upgrade() else { break };
                if let Err(e) = m.fill_pool().await {
                    tracing::warn!(error = %e, "making a pooled sandbox failed");
                    drop(m);
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    continue;
                }
                drop(m);
                // A take stores a permit if nobody waits: none is missed.
                wake.notified().await;
            }
        });
    }

    async fn fill_pool(&self) -> crate::error::Result<()> {
        let image = self.resolve_image(None).await?;
        *lock(&self.pool.image) = Some(image.clone());
        while lock(&self.pool.ready).len() < self.config.ephemeral_pool {
            let b = self.new_ephemeral(&image).await?;
            lock(&self.pool.ready).push_back(b);
        }
        Ok(())
    }
}
