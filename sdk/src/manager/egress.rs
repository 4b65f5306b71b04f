//! A session's egress proxy (crate::network): started with its sandbox when
//! its policy is `proxy`, listening on the sandbox's own loopback
//! ([`PROXY_PORT`]), stopped when the sandbox stops or the policy becomes
//! `none`; a policy change applies to the next connection at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::sessions::Slot;
use super::store::SessionRecord;
use super::{Manager, lock};
use crate::error::Result;
use crate::network::{Compiled, Egress, Mode, NetworkPolicy, PROXY_PORT};

/// Environment every execution of a session with a proxy gets (programs
/// that ignore it still cannot get out: the sandbox has no route).
const PROXY_ENV: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// A running proxy: its policy feed and its stop switch (dropping it
/// stops the proxy).
#[derive(Debug)]
pub(crate) struct RunningEgress {
    policy: watch::Sender<Arc<Compiled>>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl Drop for RunningEgress {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl Manager {
    /// Start the session's proxy if its policy wants one and it is not
    /// running; stop it if the policy is `none`.
    pub(super) async fn ensure_egress(&self, slot: &Slot, record: &SessionRecord) -> Result<()> {
        if record.network.mode == Mode::None {
            lock(&slot.egress).take();
            return Ok(());
        }
        let alive = lock(&slot.egress)
            .as_ref()
            .is_some_and(|e| !*e.done.borrow());
        if alive {
            return Ok(());
        }
        let compiled = Arc::new(Compiled::new(&record.network)?);
        let listener = self
            .runtime
            .listen_loopback(&record.box_id, PROXY_PORT)
            .await?;
        let (policy, policy_rx) = watch::channel(compiled);
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let egress = Egress {
            session: record.name.clone(),
            policy: policy_rx,
            resolver: self.resolver.clone(),
            stats: slot.egress_stats.clone(),
        };
        // The proxy ends with its sandbox: the listener's socket would
        // otherwise keep the sandbox's network namespace alive.
        let (runtime, box_id) = (self.runtime.clone(), record.box_id.clone());
        let watch_stop = stop.clone();
        tokio::spawn(async move {
            let serve = crate::network::proxy::serve(listener, egress, stop_rx);
            let watchdog = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if !runtime.is_running(&box_id) {
                        watch_stop.send_replace(true);
                        return;
                    }
                }
            };
            tokio::select! {
                () = serve => {}
                () = watchdog => {}
            }
            done_tx.send_replace(true);
        });
        tracing::info!(session = %record.name, port = PROXY_PORT, "egress proxy started");
        *lock(&slot.egress) = Some(RunningEgress { policy, stop, done });
        Ok(())
    }

    /// Change a session's egress policy; on a running session it applies
    /// to the next connection (and starts or stops its proxy).
    pub async fn set_network(&self, name: &str, policy: NetworkPolicy) -> Result<()> {
        crate::network::validate(&policy)?;
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        let mut record = lock(&slot.record).clone();
        record.network = policy;
        self.store.save(&record)?;
        *lock(&slot.record) = record.clone();
        let compiled = Arc::new(Compiled::new(&record.network)?);
        if let Some(running) = lock(&slot.egress).as_ref() {
            running.policy.send_replace(compiled);
        }
        tracing::info!(session = %name, mode = ?record.network.mode, allow = record.network.allow.len(), deny = record.network.deny.len(), "network policy changed");
        if self.runtime.is_running(&record.box_id) {
            self.ensure_egress(&slot, &record).await?;
        }
        Ok(())
    }

    /// Proxy variables for a session's executions (none without a proxy).
    pub(super) fn proxy_env(record: &SessionRecord) -> Vec<(String, String)> {
        if record.network.mode == Mode::None {
            return Vec::new();
        }
        let url = format!("http://127.0.0.1:{PROXY_PORT}");
        let socks = format!("socks5h://127.0.0.1:{PROXY_PORT}");
        let mut env: Vec<(String, String)> = PROXY_ENV
            .iter()
            .map(|k| {
                let v = if k.eq_ignore_ascii_case("all_proxy") {
                    &socks
                } else {
                    &url
                };
                ((*k).to_owned(), v.clone())
            })
            .collect();
        for k in ["NO_PROXY", "no_proxy"] {
            env.push((k.to_owned(), "localhost,127.0.0.1,::1".to_owned()));
        }
        env
    }
}
