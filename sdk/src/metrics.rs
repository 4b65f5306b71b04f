//! What the SDK records with the `metrics` facade (a no-op unless the
//! process installs a recorder, as blink-server does for `/metrics`).

use std::time::Duration;

/// Time to start a sandbox, by `kind`: `session` (a session's sandbox
/// starting) or `ephemeral` (made and started for one run).
pub const SANDBOX_START_SECONDS: &str = "blink_sandbox_start_seconds";
/// Egress connections decided, by `via` (`proxy`, `ssh-forward`) and
/// `result` (`allowed`, `denied`, `unreachable`).
pub const EGRESS_CONNECTIONS_TOTAL: &str = "blink_egress_connections_total";

/// Help texts, for the process's recorder.
pub fn describe() {
    metrics::describe_histogram!(
        SANDBOX_START_SECONDS,
        metrics::Unit::Seconds,
        "Time to start a sandbox, by kind (session, ephemeral)."
    );
    metrics::describe_counter!(
        EGRESS_CONNECTIONS_TOTAL,
        "Egress connections, by door (proxy, ssh-forward) and result."
    );
}

pub(crate) fn sandbox_started(kind: &'static str, took: Duration) {
    metrics::histogram!(SANDBOX_START_SECONDS, "kind" => kind).record(took.as_secs_f64());
}

pub(crate) fn egress(via: &'static str, result: &'static str) {
    metrics::counter!(EGRESS_CONNECTIONS_TOTAL, "via" => via, "result" => result).increment(1);
}
