//! Prometheus metrics, served at `GET /metrics` (behind the API token when
//! one is set). Recorded with the `metrics` facade where things happen
//! (the SDK records sandbox starts and egress), rendered by
//! metrics-exporter-prometheus. Every name is here, with its help text, so
//! the set is read in one place; docs/OBSERVABILITY.md lists them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const SSH_CONNECTIONS_TOTAL: &str = "blink_ssh_connections_total";
pub const SSH_CONNECTIONS_OPEN: &str = "blink_ssh_connections_open";
pub const SSH_AUTH_TOTAL: &str = "blink_ssh_auth_total";
pub const SSH_CHANNELS_TOTAL: &str = "blink_ssh_channels_total";
pub const SSH_BYTES_TOTAL: &str = "blink_ssh_bytes_total";
pub const SFTP_OPERATIONS_TOTAL: &str = "blink_sftp_operations_total";
pub const SFTP_AUDIT_LOST_TOTAL: &str = "blink_sftp_audit_lost_total";
pub const SESSIONS: &str = "blink_sessions";
pub const RUNS_QUEUED: &str = "blink_runs_queued";
pub const RUNS_RUNNING: &str = "blink_runs_running";
pub const RUNS_TOTAL: &str = "blink_runs_total";
pub const RUN_QUEUE_SECONDS: &str = "blink_run_queue_seconds";
pub const RUN_SECONDS: &str = "blink_run_seconds";
pub const HTTP_REQUESTS_TOTAL: &str = "blink_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "blink_http_request_seconds";
pub const AUDIT_LINES_LOST_TOTAL: &str = "blink_audit_lines_lost_total";
pub const CLUSTER_EXPORTS_TOTAL: &str = "blink_cluster_exports_total";

/// Buckets for latencies, from a fast start (ms) to a long run (minutes).
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use; `None` if another
/// recorder was installed first (then `/metrics` answers 503).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SSH_CONNECTIONS_TOTAL, "SSH connections accepted.");
    describe_gauge!(SSH_CONNECTIONS_OPEN, "SSH connections open now.");
    describe_counter!(
        SSH_AUTH_TOTAL,
        "SSH authentication attempts, by method and result (reason for refusals)."
    );
    describe_counter!(
        SSH_CHANNELS_TOTAL,
        "SSH channels started, by kind (exec, shell, sftp, direct-tcpip, forwarded-tcpip)."
    );
    describe_counter!(
        SSH_BYTES_TOTAL,
        "Bytes of channel data through SSH, by direction (in: from clients)."
    );
    describe_counter!(SFTP_OPERATIONS_TOTAL, "SFTP requests, by operation.");
    describe_counter!(
        SFTP_AUDIT_LOST_TOTAL,
        "What the SFTP audit could not follow: requests and handles dropped from its full tables, streams it stopped reading (what: request, handle, stream)."
    );
    describe_gauge!(SESSIONS, "Sessions, by state.");
    describe_gauge!(RUNS_QUEUED, "REST runs waiting for a slot.");
    describe_gauge!(RUNS_RUNNING, "REST runs executing.");
    describe_counter!(RUNS_TOTAL, "REST runs finished, by state.");
    describe_histogram!(
        RUN_QUEUE_SECONDS,
        metrics::Unit::Seconds,
        "Time REST runs waited in the queue."
    );
    describe_histogram!(
        RUN_SECONDS,
        metrics::Unit::Seconds,
        "Time REST runs executed."
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP API requests, by route, method and status."
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "HTTP API request latency, by route and method (until the answer's head)."
    );
    describe_counter!(
        CLUSTER_EXPORTS_TOTAL,
        "A cluster node's automatic exports on stop, by result (written, not_owner, failed)."
    );
    describe_counter!(
        AUDIT_LINES_LOST_TOTAL,
        "Audit lines lost (the writer fell behind or could not write)."
    );
    blink_sdk::metrics::describe();
}
