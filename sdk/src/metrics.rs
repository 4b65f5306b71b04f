//! What the SDK records with the `metrics` facade (a no-op unless the
//! process installs a recorder, as blink-server does for `/metrics`).

use std::time::Duration;

/// Time to start a sandbox, by `kind`: `session` (a session's sandbox
/// starting) or `ephemeral` (made and started for one run).
pub const SANDBOX_START_SECONDS: &str = "blink_sandbox_start_seconds";
/// Egress connections decided, by `via` (`proxy`, `ssh-forward`) and
/// `result` (`allowed`, `denied`, `unreachable`).
pub const EGRESS_CONNECTIONS_TOTAL: &str = "blink_egress_connections_total";

/// Image pulls, by `result` (`ok`, `not_found`, `refused`: the image is
/// broken or over a limit, `registry`: unreachable or refusing,
/// `not_permitted`, `error`).
pub const IMAGE_PULLS_TOTAL: &str = "blink_image_pulls_total";
/// Bytes of blobs downloaded by pulls.
pub const IMAGE_PULL_BYTES_TOTAL: &str = "blink_image_pull_bytes_total";

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
    metrics::describe_counter!(IMAGE_PULLS_TOTAL, "Image pulls from registries, by result.");
    metrics::describe_counter!(
        IMAGE_PULL_BYTES_TOTAL,
        metrics::Unit::Bytes,
        "Bytes of blobs downloaded from registries."
    );
}

pub(crate) fn sandbox_started(kind: &'static str, took: Duration) {
    metrics::histogram!(SANDBOX_START_SECONDS, "kind" => kind).record(took.as_secs_f64());
}

pub(crate) fn egress(via: &'static str, result: &'static str) {
    metrics::counter!(EGRESS_CONNECTIONS_TOTAL, "via" => via, "result" => result).increment(1);
}

pub(crate) fn image_pull(result: &'static str, fetched_bytes: u64) {
    metrics::counter!(IMAGE_PULLS_TOTAL, "result" => result).increment(1);
    if fetched_bytes > 0 {
        metrics::counter!(IMAGE_PULL_BYTES_TOTAL).increment(fetched_bytes);
    }
}
