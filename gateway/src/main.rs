//! `blink-server`: the Blink gateway, SSH and REST over one session
//! manager. This is the binary's edge (flags, config file, signals, exit
//! status); the servers are in the library (`lib.rs`).
//!
//! On SIGTERM or SIGINT both servers drain together (`[ssh]` and `[rest]`
//! `shutdown_grace_secs`), then the manager stops the sandboxes and the
//! process exits 0.

use std::path::PathBuf;

use anyhow::Context as _;
use blink_sdk::manager::{Manager, ManagerConfig, default_data_dir};
use blink_server::config::FileConfig;
use blink_server::recording::Recordings;
use blink_server::{audit, hostkey, rest, ssh};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "blink-server",
    version,
    about = "Blink gateway: SSH into sessions"
)]
struct Args {
    /// TOML config file (see config/blink.example.toml).
    #[arg(long, env = "BLINK_CONFIG")]
    config: Option<PathBuf>,
    /// Data dir (overrides the config's `data_dir`).
    #[arg(long, env = "BLINK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// SSH listen address, e.g. 127.0.0.1:2222.
    #[arg(long)]
    ssh_listen: Option<std::net::SocketAddr>,
    /// SSH host key file (ed25519, created 0600 if missing).
    #[arg(long)]
    host_key: Option<PathBuf>,
    /// Admin authorized_keys file: these keys reach every session.
    #[arg(long)]
    admin_keys: Option<PathBuf>,
    /// Let admin keys create missing sessions on first login.
    #[arg(long)]
    admin_create_sessions: bool,
    /// Stop a cold session after this many seconds with nothing running
    /// in it (no execution, no SSH channel). Default 300.
    #[arg(long)]
    session_idle_timeout: Option<u64>,
    /// Print the host key fingerprint and exit.
    #[arg(long)]
    fingerprint: bool,
    /// HTTP API listen address: IP:PORT, or an IP (port 8787).
    #[arg(long, env = "BLINK_BIND", value_parser = rest::config::parse_listen)]
    http_listen: Option<std::net::SocketAddr>,
    /// Sandbox runtime: auto (boxlite when its preflight passes, else
    /// local), boxlite or local. Overrides the config's `runtime`.
    #[arg(long, env = "BLINK_RUNTIME")]
    runtime: Option<blink_sdk::runtime::selection::RuntimeChoice>,
    /// Host directory whose scripts REST runs may name (repeatable).
    #[arg(long)]
    script_dir: Vec<PathBuf>,
    /// `node` (default: sessions on this host; with `[cluster]`, one node
    /// of a cluster) or `router` (the cluster's stateless front door,
    /// docs/SCALE.md).
    #[arg(long, value_enum, default_value = "node")]
    role: Role,
    /// Check the config (with the options above) for `--role` and exit:
    /// what is wrong, or `config ok`. Nothing is bound, opened or created
    /// (as `sshd -t`).
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Node,
    Router,
}

/// How long recordings still being written at shutdown may take to end.
const RECORDINGS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let (file, data_dir) = match configure(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("blink-server: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if args.check_config {
        return match check_role(&file, args.role) {
            Ok(()) => {
                let role = match args.role {
                    Role::Node => "node",
                    Role::Router => "router",
                };
                println!("config ok (role {role})");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("blink-server: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // Flushes the audit log's queue when main returns.
    let _audit = match init_logging(&file, &data_dir, !args.fingerprint) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("blink-server: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blink-server: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, file, data_dir)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blink-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs on stderr (`RUST_LOG`, default info) and, when enabled, the audit
/// log (audit.rs).
fn init_logging(
    file: &FileConfig,
    data_dir: &std::path::Path,
    with_audit: bool,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (audit, guard) = if with_audit && file.audit.enabled {
        let (layer, guard) = audit::layer(&file.audit, data_dir).with_context(|| {
            format!(
                "opening the audit log {}",
                file.audit.path_in(data_dir).display()
            )
        })?;
        (Some(layer), Some(guard))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(audit)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                ),
        )
        .init();
    Ok(guard)
}

/// What a role needs of a config beyond what `FileConfig::load` checks.
fn check_role(file: &FileConfig, role: Role) -> Result<(), String> {
    match (role, &file.cluster) {
        (Role::Router, None) => {
            Err("--role router needs a [cluster] table naming etcd_endpoints".into())
        }
        (Role::Router, Some(c)) if c.export_on_stop => {
            Err("[cluster] export_on_stop is a node's setting, not a router's".into())
        }
        (Role::Node, Some(c)) if c.router_key.is_some() => {
            Err("[cluster] router_key is a router's setting; a node lists router_keys".into())
        }
        _ => Ok(()),
    }
}

/// The config file with the command line's overrides, and the data dir.
fn configure(args: &Args) -> anyhow::Result<(FileConfig, PathBuf)> {
    let mut file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    if let Some(listen) = args.ssh_listen {
        file.ssh.listen = listen;
    }
    if let Some(listen) = args.http_listen {
        file.rest.listen = listen;
    }
    if let Some(runtime) = args.runtime {
        // The flag replaces whatever the file says, in either place.
        file.runtime = Some(runtime);
        file.sandbox.runtime = None;
    }
    file.rest
        .script_dirs
        .extend(args.script_dir.iter().cloned());
    if let Some(token) = std::env::var("BLINK_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        file.rest.token = Some(token);
    }
    if let Some(cluster) = &mut file.cluster {
        // A node's address as its orchestrator knows it (a pod's host IP).
        if let Some(host) = std::env::var("BLINK_CLUSTER_ADVERTISE_HOST")
            .ok()
            .filter(|h| !h.is_empty())
        {
            cluster.advertise_host = host;
        }
        // Routers call a node by the address it advertises.
        file.rest.allowed_hosts.push(cluster.advertise_host.clone());
    }
    if let Some(path) = &args.host_key {
        file.ssh.host_key = Some(path.clone());
    }
    if let Some(path) = &args.admin_keys {
        file.ssh.admin_authorized_keys = Some(path.clone());
    }
    if args.admin_create_sessions {
        file.ssh.admin_create_sessions = true;
    }
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    Ok((file, data_dir))
}

async fn serve(args: Args, file: FileConfig, data_dir: PathBuf) -> anyhow::Result<()> {
    check_role(&file, args.role).map_err(anyhow::Error::msg)?;
    if args.role == Role::Router {
        return serve_router(file, &data_dir).await;
    }
    let key_path = file
        .ssh
        .host_key
        .clone()
        .unwrap_or_else(|| hostkey::default_path(&data_dir));
    let host_key = hostkey::load(&key_path)?;
    let fingerprint = hostkey::fingerprint(&host_key);
    if args.fingerprint {
        println!("{fingerprint}");
        return Ok(());
    }
    println!("ssh host key {fingerprint} (ED25519)");
    tracing::info!(fingerprint = %fingerprint, path = %key_path.display(), "ssh host key");

    let mut manager_config = ManagerConfig::new(&data_dir);
    manager_config.runtime = file.runtime()?;
    manager_config.seccomp = file.sandbox.seccomp;
    manager_config.boxlite_vhub_relay = file.sandbox.boxlite_vhub_relay;
    manager_config.boxlite_boot_timeout =
        std::time::Duration::from_millis(file.sandbox.boxlite_boot_timeout_ms);
    manager_config.id_base = Some(file.sandbox.id_base);
    manager_config.limits = blink_sdk::runtime::Limits {
        cpus: file.sandbox.cpus,
        memory_mib: Some(file.sandbox.memory_mib),
        pids: Some(file.sandbox.pids),
        disk_mib: Some(file.sandbox.disk_size_mib),
    };
    manager_config.maxima = file.sandbox.maxima(file.rest.max_run_timeout_secs);
    manager_config.run_timeout = std::time::Duration::from_secs(file.sandbox.run_timeout_secs);
    manager_config.network = file.network.policy();
    manager_config.ephemeral_pool = file.sandbox.ephemeral_pool;
    manager_config.resolve = file.network.resolve.clone();
    manager_config.pull = file.images.clone();
    manager_config.forwarding = file.network.forwarding;
    if file.sandbox.seccomp == blink_sdk::runtime::local::SeccompProfile::Unconfined {
        tracing::warn!(
            "[sandbox] seccomp = \"unconfined\": sandboxes run without a seccomp filter"
        );
    }
    if let Some(secs) = args.session_idle_timeout.or(file.session_idle_timeout_secs) {
        let secs = secs.max(1);
        manager_config
            .maxima
            .check(&blink_sdk::manager::ResourceRequest {
                idle_timeout_secs: Some(secs),
                ..Default::default()
            })
            .context("--session-idle-timeout")?;
        manager_config.idle_timeout = std::time::Duration::from_secs(secs);
    }
    let manager = Manager::open(manager_config)
        .await
        .with_context(|| format!("opening data dir {}", data_dir.display()))?;
    let ssh_grace = file.ssh.shutdown_grace();
    // One set of recordings for SSH and REST alike.
    let recordings = Recordings::new(file.recording, &data_dir);
    recordings.start_retention();
    // Listen before the servers say they are up, so no signal is missed.
    let signalled = shutdown_signal()?;
    // The V-Hub: its host socket and every session's endpoint.
    let vhub = if file.vhub.enabled {
        let running = blink_sdk::vhub::RunningHub::start(manager.clone(), &file.vhub, &data_dir)
            .await
            .context("starting the V-Hub")?;
        println!("vhub listening on {}", running.socket.display());
        Some(running)
    } else {
        None
    };
    let http = rest::start(
        manager.clone(),
        file.rest,
        recordings.clone(),
        vhub.as_ref().map(|v| v.hub.clone()),
    )
    .await?;
    let mut ssh_config = file.ssh.clone();
    ssh_config.router_keys = file.cluster.as_ref().and_then(|c| c.router_keys.clone());
    let ssh = match ssh::start(manager.clone(), ssh_config, host_key, recordings.clone()).await {
        Ok(ssh) => ssh,
        Err(e) => {
            http.shutdown().await;
            manager.shutdown().await;
            recordings.shutdown(RECORDINGS_GRACE).await;
            return Err(e);
        }
    };
    let registration = match &file.cluster {
        Some(cluster) => Some(
            blink_server::cluster::join(
                cluster,
                http.local_addr,
                ssh.local_addr(),
                &fingerprint,
                &manager.runtime_selection().runtime,
            )
            .await
            .context("joining the cluster")?,
        ),
        None => None,
    };
    let exporter = match &file.cluster {
        Some(cluster) if cluster.export_on_stop => Some((
            start_exporter(cluster, manager.clone(), &data_dir).await?,
            std::time::Duration::from_secs(cluster.shutdown_export_secs),
        )),
        _ => None,
    };
    signalled.await;
    tracing::info!("shutting down");
    // Draining first: routers place no new session here, while the lease
    // still holds this node's sessions, so none is restored elsewhere
    // before its last export below.
    if let Some(registration) = &registration {
        registration.drain().await;
    }
    // Connections and runs drain together; the sandboxes stop after them;
    // then the recordings of what ran (REST spawns end with their
    // sandboxes) are finished.
    tokio::join!(ssh.shutdown(ssh_grace), http.shutdown());
    if let Some((exporter, within)) = exporter {
        let finished = exporter.finish(within).await;
        tracing::info!(
            stopped = finished.stopped,
            written = finished.written,
            not_written = finished.not_written,
            "automatic exports at shutdown done"
        );
    }
    // Out of the cluster: the routers may restore its sessions elsewhere.
    if let Some(registration) = registration {
        registration.leave().await;
    }
    drop(vhub);
    manager.shutdown().await;
    recordings.shutdown(RECORDINGS_GRACE).await;
    tracing::info!("blink-server shut down");
    Ok(())
}

/// A node's automatic exports on stop, into the shared export store.
async fn start_exporter(
    cluster: &blink_server::cluster::ClusterConfig,
    manager: std::sync::Arc<Manager>,
    data_dir: &std::path::Path,
) -> anyhow::Result<blink_server::cluster::exports::Exporter> {
    let exports = cluster
        .export_store()
        .map_err(anyhow::Error::msg)?
        .context("[cluster] export_on_stop needs export_dir or [cluster.export_s3]")?;
    let staging = data_dir.join("cluster-exports");
    blink_sdk::runtime::local::private_dir(&staging)
        .with_context(|| format!("making {}", staging.display()))?;
    let store = blink_server::cluster::Store::connect(&cluster.etcd_endpoints, &cluster.prefix)
        .await
        .context("connecting to etcd for automatic exports")?;
    tracing::info!(store = %exports.describe(), "cluster: exporting cold sessions when they stop");
    Ok(blink_server::cluster::exports::start(
        manager,
        store,
        cluster.node_name(),
        blink_server::cluster::exports::Target { exports, staging },
    ))
}

/// `--role router`: the cluster's front door, no sessions of its own.
async fn serve_router(file: FileConfig, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let cluster = file
        .cluster
        .as_ref()
        .context("--role router needs a [cluster] table naming etcd_endpoints")?;
    let store = blink_server::cluster::Store::connect(&cluster.etcd_endpoints, &cluster.prefix)
        .await
        .context("connecting to etcd")?;
    // SSH needs the router key the nodes trust; without it, REST only.
    let ssh_keys = match &cluster.router_key {
        Some(path) => {
            let key_path = file
                .ssh
                .host_key
                .clone()
                .unwrap_or_else(|| hostkey::default_path(data_dir));
            let host_key = hostkey::load(&key_path)?;
            println!("ssh host key {} (ED25519)", hostkey::fingerprint(&host_key));
            let router_key = russh::keys::load_secret_key(path, None)
                .with_context(|| format!("[cluster] router_key {}", path.display()))?;
            Some((host_key, router_key))
        }
        None => {
            tracing::warn!("[cluster] router_key is not set: this router serves REST only");
            None
        }
    };
    let signalled = shutdown_signal()?;
    let router = blink_server::router::start(
        store.clone(),
        file.rest.listen,
        file.rest.token.clone(),
        cluster,
    )
    .await?;
    let ssh = match ssh_keys {
        Some((host_key, router_key)) => Some(
            blink_server::router::ssh::start(
                store,
                file.ssh.listen,
                host_key,
                router_key,
                file.ssh.limits.clone(),
            )
            .await?,
        ),
        None => None,
    };
    // After every "... listening on" line: supervisors and tests read it.
    println!("router ready");
    signalled.await;
    tracing::info!("router shutting down");
    if let Some(ssh) = ssh {
        ssh.shutdown().await;
    }
    router.shutdown().await;
    Ok(())
}

/// A future that ends at the first SIGTERM or SIGINT received from now on.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
