//! The warm/idle policy: warm sessions are started when a manager opens;
//! cold ones stop after their idle timeout (their own, else the
//! configured `idle_timeout`) with nothing active in them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::sessions::Slot;
use super::{Manager, lock, now_ms};

impl Manager {
    /// Start warm sessions and the idle reaper.
    pub(super) fn start_policy(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        // Its own handle: the task holds no manager while it waits.
        let idle_changed = self.idle_changed.clone();
        tokio::spawn(async move {
            if let Some(m) = weak.upgrade() {
                for name in m.warm_sessions() {
                    if let Err(e) = m.ensure_running(&name).await {
                        tracing::warn!(session = %name, error = %e, "starting warm session failed");
                    }
                }
            }
            loop {
                let Some(m) = weak.upgrade() else { break };
                let tick = (m.shortest_idle_timeout() / 4)
                    .clamp(Duration::from_millis(100), Duration::from_secs(5));
                m.reap_idle().await;
                m.forget_finished_spawns();
                drop(m);
                tokio::select! {
                    () = tokio::time::sleep(tick) => {}
                    () = idle_changed.notified() => {}
                }
            }
        });
    }

    fn warm_sessions(&self) -> Vec<String> {
        lock(&self.slots)
            .iter()
            .filter(|(_, s)| lock(&s.record).warm)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Stop every cold session that has been idle long enough (its own
    /// idle timeout, else the configured one). A session with anything
    /// active is never stopped.
    async fn reap_idle(&self) {
        let candidates: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in candidates {
            let (warm, box_id, name, idle) = {
                let r = lock(&slot.record);
                let idle = self.idle_timeout_of(&r).as_millis() as u64;
                (r.warm, r.box_id.clone(), r.name.clone(), idle)
            };
            if warm || !self.runtime.is_running(&box_id) {
                continue;
            }
            let idle_for = now_ms().saturating_sub(slot.last_used.load(Ordering::SeqCst));
            if slot.active.load(Ordering::SeqCst) > 0 || idle_for < idle {
                continue;
            }
            let _life = slot.lifecycle.lock().await;
            // Re-check under the lifecycle lock: something may have started.
            if slot.active.load(Ordering::SeqCst) == 0 {
                tracing::info!(session = %name, idle_for_ms = idle_for, "stopping idle session");
                match self.runtime.stop(&box_id).await {
                    Ok(()) => self.stopped.notify_one(),
                    Err(e) => {
                        tracing::warn!(session = %name, error = %e, "stopping idle session failed")
                    }
                }
            }
        }
    }
}
