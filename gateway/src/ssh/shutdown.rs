//! The SSH server's shutdown signal, after mini-redis's `shutdown.rs`: the
//! server holds the [`Trigger`]; the accept loop, every connection task and
//! every connection's handler hold a [`Shutdown`]. A shutdown carries its
//! deadline, the end of the grace period running channels get.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Starts the shutdown. Dropping it starts one with no grace.
pub(super) struct Trigger(watch::Sender<Option<Instant>>);

impl Trigger {
    pub(super) fn new() -> Self {
        Self(watch::channel(None).0)
    }

    pub(super) fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }

    /// Begin the shutdown: running work may go on for `grace`. Returns the
    /// deadline (the first one, if the shutdown had begun already).
    pub(super) fn begin(&self, grace: Duration) -> Instant {
        let deadline = Instant::now() + grace;
        self.0.send_if_modified(|d| {
            if d.is_some() {
                return false;
            }
            *d = Some(deadline);
            true
        });
        self.0.borrow().unwrap_or(deadline)
    }
}

/// One task's view of the shutdown.
#[derive(Clone)]
pub(super) struct Shutdown(watch::Receiver<Option<Instant>>);

impl Shutdown {
    /// Whether the shutdown has begun.
    pub(super) fn is_shutdown(&self) -> bool {
        self.0.borrow().is_some() || self.0.has_changed().is_err()
    }

    /// Wait until the shutdown begins; returns its deadline.
    pub(super) async fn recv(&mut self) -> Instant {
        match self.0.wait_for(Option::is_some).await {
            Ok(deadline) => deadline.unwrap_or_else(Instant::now),
            // The trigger is gone: shut down with no grace.
            Err(_) => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadline_reaches_every_subscriber_once() {
        let trigger = Trigger::new();
        let mut early = trigger.subscribe();
        assert!(!early.is_shutdown());
        let first = trigger.begin(Duration::from_secs(10));
        let again = trigger.begin(Duration::from_secs(1));
        assert_eq!(first, again, "a second begin keeps the first deadline");
        let mut late = trigger.subscribe();
        assert!(early.is_shutdown() && late.is_shutdown());
        assert_eq!(early.recv().await, first);
        assert_eq!(late.recv().await, first);
    }

    #[tokio::test]
    async fn dropped_trigger_means_shutdown_now() {
        let trigger = Trigger::new();
        let mut shutdown = trigger.subscribe();
        drop(trigger);
        assert!(shutdown.is_shutdown());
        assert!(shutdown.recv().await <= Instant::now());
    }
}
