//! A box's boot, bounded in time. BoxLite 0.10.8 bounds only some steps
//! of a start (its guest-ready wait, 30 s): nested under TCG a box whose
//! VM had started was seen never to answer, holding its start, and the
//! request that asked for it, for good. So a boot (BoxLite's start, then
//! Blink's readiness probe) gets `boot_timeout`; one past it is taken as
//! hung: the box is abandoned (stopped, its handle let go, which ends its
//! VM) and booted once more. A second hung boot is the sandbox's error,
//! said by name; an error from the boot itself is returned as it is.
//!
//! Generic over the boot and the abandoning so the policy is tested
//! without a VM (below); `vm.rs` gives it BoxLite's.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long a boot may take by default. A box boots in under a second
/// on hardware KVM and in 3-10 s nested under TCG, but a box's first boot
/// also builds its disk from its image's layers (BoxLite does it inside
/// the start), which for a large image takes minutes on a slow disk.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Boots tried before a hung box is the sandbox's error.
pub const BOOT_ATTEMPTS: u32 = 2;

/// Run `boot` for sandbox `id`, each try within `within`; after a try
/// that does not end in time, `abandon` before the next.
pub async fn bounded<B, BF, A, AF>(
    id: &str,
    within: Duration,
    mut boot: B,
    mut abandon: A,
) -> Result<()>
where
    B: FnMut() -> BF,
    BF: Future<Output = Result<()>>,
    A: FnMut() -> AF,
    AF: Future<Output = ()>,
{
    for attempt in 1..=BOOT_ATTEMPTS {
        match tokio::time::timeout(within, boot()).await {
            Ok(result) => return result,
            Err(_) => {
                tracing::warn!(
                    sandbox = id,
                    attempt,
                    within_ms = within.as_millis() as u64,
                    "the box did not boot in time: it is stopped{}",
                    if attempt < BOOT_ATTEMPTS {
                        " and booted once more"
                    } else {
                        ""
                    }
                );
                abandon().await;
            }
        }
    }
    Err(Error::SandboxDead {
        id: id.into(),
        reason: format!(
            "the micro-VM did not boot within {} ms, {BOOT_ATTEMPTS} times; it was stopped \
             ([sandbox] boxlite_boot_timeout_ms)",
            within.as_millis()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const WITHIN: Duration = Duration::from_millis(50);
    /// Longer than any test waits: a boot that takes it is hung.
    const HUNG: Duration = Duration::from_secs(3600);

    /// Drive [`bounded`] over boots that hang for the first `hung` tries
    /// and then end with `then`; returns the outcome, the boots started and
    /// the abandonings.
    async fn drive(hung: u32, then: Result<()>) -> (Result<()>, u32, u32) {
        let boots = AtomicU32::new(0);
        let abandoned = AtomicU32::new(0);
        let then = std::sync::Mutex::new(Some(then));
        let outcome = bounded(
            "s-1",
            WITHIN,
            || {
                let n = boots.fetch_add(1, Ordering::SeqCst);
                let result = if n < hung {
                    None
                } else {
                    then.lock().unwrap().take()
                };
                async move {
                    match result {
                        Some(result) => result,
                        None => {
                            tokio::time::sleep(HUNG).await;
                            Ok(())
                        }
                    }
                }
            },
            || {
                abandoned.fetch_add(1, Ordering::SeqCst);
                async {}
            },
        )
        .await;
        (
            outcome,
            boots.load(Ordering::SeqCst),
            abandoned.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn a_boot_in_time_is_tried_once() {
        let (outcome, boots, abandoned) = drive(0, Ok(())).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!((boots, abandoned), (1, 0));
    }

    #[tokio::test]
    async fn a_hung_boot_is_abandoned_and_tried_once_more() {
        let (outcome, boots, abandoned) = drive(1, Ok(())).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!((boots, abandoned), (2, 1));
    }

    #[tokio::test]
    async fn two_hung_boots_are_the_sandboxs_error_by_name() {
        let (outcome, boots, abandoned) = drive(5, Ok(())).await;
        assert_eq!((boots, abandoned), (2, 2));
        match outcome {
            Err(Error::SandboxDead { id, reason }) => {
                assert_eq!(id, "s-1");
                assert!(reason.contains("did not boot within 50 ms"), "{reason}");
                assert!(reason.contains("boxlite_boot_timeout_ms"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_boot_is_returned_as_it_is_and_not_retried() {
        let (outcome, boots, abandoned) =
            drive(0, Err(Error::Runtime("starting box s-1: no kernel".into()))).await;
        assert_eq!((boots, abandoned), (1, 0));
        assert!(
            matches!(&outcome, Err(Error::Runtime(m)) if m.contains("no kernel")),
            "{outcome:?}"
        );
    }
}
