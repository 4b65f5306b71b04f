//! `blink-cli session ...`: named sessions with a persistent disk.

use std::path::PathBuf;
use std::process::ExitCode;

use blink_sdk::Program;
use blink_sdk::manager::{ResourceRequest, Stream, Target};
use blink_sdk::types::{ResourceUsage, Resources, SessionInfo};
use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{Backend, Need};
use crate::output::{self, Context, Progress};
use crate::run::{self, ExecOpts};
use crate::terminal;

#[derive(Debug, Args)]
pub struct NameArg {
    /// Session name: [a-z0-9][a-z0-9._-]{0,62}.
    #[arg(long, short = 'n')]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Open a session, creating it (and its disk) if missing.
    Open {
        #[command(flatten)]
        name: NameArg,
        /// Keep the session running between runs.
        #[arg(long)]
        warm: bool,
        /// Image for a new session (default: the built-in default image).
        #[arg(long)]
        image: Option<String>,
        /// A new session's size (an existing one keeps its own: `session
        /// resources` changes it).
        #[command(flatten)]
        resources: ResourceFlags,
        /// Make the new session a copy of session A as it is now, or of
        /// its snapshot S (`A@S`); the image is shared, not copied.
        #[arg(long, value_name = "A[@S]")]
        from: Option<String>,
    },
    /// Snapshot a session's disk (`checkpoint rm` removes a snapshot).
    Checkpoint(crate::checkpoint::CheckpointArgs),
    /// Write a session to a `.boxlite` archive (docs/ARCHIVE.md).
    Export {
        #[command(flatten)]
        name: NameArg,
        /// The archive (default: NAME.boxlite here).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Leave the image's layers out (the importing host must have it).
        #[arg(long)]
        no_image: bool,
        /// Put the session's snapshots in too.
        #[arg(long)]
        snapshots: bool,
    },
    /// Make a session from a `.boxlite` archive.
    Import {
        file: PathBuf,
        /// The new session's name (default: the archive's).
        #[arg(long, short = 'n')]
        name: Option<String>,
        /// Replace a session of that name.
        #[arg(long)]
        replace: bool,
    },
    /// Show or change a session's egress policy (docs/NETWORK.md):
    /// `--none`, or `--allow RULE` (repeatable) and `--deny RULE`; and
    /// which SSH forwards it takes (`--local-forwarding`,
    /// `--remote-forwarding`).
    Network {
        #[command(flatten)]
        name: NameArg,
        /// Loopback only.
        #[arg(long, conflicts_with_all = ["allow", "deny"])]
        none: bool,
        /// Allow a destination: NAME, *.SUFFIX, *, ADDRESS or CIDR, with
        /// an optional :PORT.
        #[arg(long, value_name = "RULE")]
        allow: Vec<String>,
        /// Deny a destination (wins over allow).
        #[arg(long, value_name = "RULE")]
        deny: Vec<String>,
        /// Whether `ssh -L`, `-D` and `-W` reach the session.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        local_forwarding: Option<bool>,
        /// Whether `ssh -R` may listen in the session.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        remote_forwarding: Option<bool>,
    },
    /// Show a session's size and usage, or change its size (docs/RESOURCES.md):
    /// CPU, memory and processes change on the running session where the
    /// machine allows it, else at its next start; the answer says which.
    Resources {
        #[command(flatten)]
        name: NameArg,
        #[command(flatten)]
        resources: ResourceFlags,
    },
    /// List a session's snapshots.
    List {
        #[command(flatten)]
        name: NameArg,
    },
    /// Put a session's disk back as a snapshot was (files made since are
    /// gone, removed ones back); the session is stopped for it and started
    /// again if it was running or is warm.
    Restore {
        #[command(flatten)]
        name: NameArg,
        #[arg(long, short = 's')]
        snapshot: String,
        /// Restore even while something runs in the session (it is stopped).
        #[arg(long)]
        force: bool,
    },
    /// Copy a host script or binary into the session and run it.
    Run {
        #[command(flatten)]
        name: NameArg,
        path: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        #[command(flatten)]
        opts: ExecOpts,
    },
    /// Run a command in the session (pipe mode).
    Exec {
        #[command(flatten)]
        name: NameArg,
        #[command(flatten)]
        opts: ExecOpts,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start a process you stay attached to; with --tty on a terminal.
    Spawn {
        #[command(flatten)]
        name: NameArg,
        /// Run on a terminal: the local terminal goes raw and follows
        /// window size changes.
        #[arg(long, short = 't')]
        tty: bool,
        #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = output::parse_env)]
        env: Vec<(String, String)>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List sessions.
    Ls,
    /// Show one session.
    Info {
        #[command(flatten)]
        name: NameArg,
    },
    /// Stop a session's sandbox; the disk is kept.
    Stop {
        #[command(flatten)]
        name: NameArg,
        /// Stop even if something runs in it.
        #[arg(long)]
        force: bool,
    },
    /// Remove a session and its disk.
    Rm {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        force: bool,
    },
    /// Move a session to another node of a cluster (through a router:
    /// `--server`/`BLINK_API_URL`; docs/SCALE.md). It is unavailable only
    /// while it moves.
    Move {
        #[command(flatten)]
        name: NameArg,
        /// The node to move it to.
        #[arg(long)]
        to: String,
    },
    /// Keep the session's export in the cluster's export store, where a
    /// restore takes it from if its node dies (through a router).
    Backup {
        #[command(flatten)]
        name: NameArg,
    },
    /// SSH public keys that may log in to the session.
    #[command(subcommand)]
    Keys(crate::keys::KeysCommand),
}

/// A session's size, as flags (checked by the SDK, which names the field
/// of a bad value).
#[derive(Debug, Args)]
pub struct ResourceFlags {
    /// CPU quota in cores (fractional: 0.5, 1.5).
    #[arg(long, value_name = "CORES", allow_negative_numbers = true)]
    cpus: Option<f64>,
    /// Memory limit (`512M`, `2G`; plain numbers are MiB).
    #[arg(long, value_name = "SIZE", value_parser = output::parse_mib)]
    memory: Option<u64>,
    /// Processes and threads at once.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Disk size, its quota (`512M`, `20G`; plain numbers are MiB).
    /// Default: the configured size (10G); an existing disk only grows (at
    /// its session's next start).
    #[arg(long, value_name = "SIZE", value_parser = output::parse_mib)]
    disk_size: Option<u64>,
    /// Default time limit of the session's runs (`90`, `90s`, `10m`, `2h`).
    #[arg(long, value_name = "TIME", value_parser = output::parse_secs)]
    run_timeout: Option<u64>,
    /// Stop the (cold) session after this long with nothing running.
    #[arg(long, value_name = "TIME", value_parser = output::parse_secs)]
    idle_timeout: Option<u64>,
}

impl ResourceFlags {
    pub fn request(&self) -> ResourceRequest {
        ResourceRequest {
            cpus: self.cpus,
            memory_mib: self.memory,
            pids: self.pids,
            disk_mib: self.disk_size,
            run_timeout_secs: self.run_timeout,
            idle_timeout_secs: self.idle_timeout,
        }
    }
}

pub async fn dispatch(ctx: &Context, cmd: SessionCommand) -> anyhow::Result<ExitCode> {
    // Key files need no manager (and no data-dir lock).
    let cmd = match cmd {
        SessionCommand::Keys(keys) => return crate::keys::dispatch(ctx, keys).await,
        other => other,
    };
    let backend = ctx.backend(Need::Manager).await?;
    match cmd {
        SessionCommand::Open {
            name,
            warm,
            image,
            resources,
            from,
        } => {
            let progress = Progress::start(ctx, "preparing session disk");
            let opened = backend
                .open_session(&name.name, image, warm, resources.request(), from)
                .await;
            progress.finish();
            let opened = opened?;
            if ctx.json {
                output::print_json(&opened)?;
            } else {
                let verb = if opened.created {
                    "created"
                } else {
                    "opened existing"
                };
                let s = &opened.session;
                println!(
                    "{verb} session {} (box {}, image {}, {} isolation, {})",
                    s.name,
                    s.box_id,
                    s.image,
                    s.isolation,
                    if s.warm { "warm" } else { "cold" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Run {
            name,
            path,
            args,
            opts,
        } => {
            let options = opts.options(args, None);
            run::execute(
                ctx,
                backend,
                Target::Session(&name.name),
                &Program::Script(path),
                options,
            )
            .await
        }
        SessionCommand::Exec {
            name,
            opts,
            command,
        } => {
            let options = opts.options(Vec::new(), None);
            run::execute(
                ctx,
                backend,
                Target::Session(&name.name),
                &Program::Command(command),
                options,
            )
            .await
        }
        SessionCommand::Spawn {
            name,
            tty,
            env,
            command,
        } => match backend {
            Backend::Server(client) => {
                crate::attach::spawn(ctx, client, &name.name, tty, env, command).await
            }
            _ => spawn(ctx, manager(backend)?, &name.name, tty, env, command).await,
        },
        SessionCommand::Checkpoint(args) => crate::checkpoint::checkpoint(ctx, backend, args).await,
        SessionCommand::Export {
            name,
            output,
            no_image,
            snapshots,
        } => crate::archive::export(ctx, backend, &name.name, output, no_image, snapshots).await,
        SessionCommand::Import {
            file,
            name,
            replace,
        } => crate::archive::import(ctx, backend, &file, name.as_deref(), replace).await,
        SessionCommand::Network {
            name,
            none,
            allow,
            deny,
            local_forwarding,
            remote_forwarding,
        } => {
            let policy = (none || !allow.is_empty() || !deny.is_empty()).then(|| {
                let mode = if none {
                    blink_sdk::network::Mode::None
                } else {
                    blink_sdk::network::Mode::Proxy
                };
                blink_sdk::network::NetworkPolicy { mode, allow, deny }
            });
            let info = backend
                .network(&name.name, local_forwarding, remote_forwarding, policy)
                .await?;
            if ctx.json {
                output::print_json(&info)?;
            } else {
                let p = &info.policy;
                println!("mode:  {:?}", p.mode);
                println!("allow: {}", p.allow.join(" "));
                println!("deny:  {}", p.deny.join(" "));
                let on = |b: bool| if b { "on" } else { "off" };
                println!(
                    "forwarding: local {}, remote {}",
                    on(info.forwarding.local),
                    on(info.forwarding.remote)
                );
                let e = &info.egress;
                println!(
                    "egress: {} allowed, {} denied, {} bytes sent, {} received",
                    e.allowed_connections, e.denied_connections, e.bytes_sent, e.bytes_received
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Resources { name, resources } => {
            let request = resources.request();
            if request == ResourceRequest::default() {
                let stats = backend.session_stats(&name.name).await?;
                if ctx.json {
                    output::print_json(&stats)?;
                } else {
                    print_resources(&stats.resources);
                    print_usage(&stats.usage);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let changed = backend.set_resources(&name.name, request).await?;
            if ctx.json {
                output::print_json(&changed)?;
            } else {
                for (field, how) in &changed.applied {
                    println!("{field}: applied {how}");
                }
                print_resources(&changed.resources);
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::List { name } => crate::checkpoint::list(ctx, backend, &name.name).await,
        SessionCommand::Restore {
            name,
            snapshot,
            force,
        } => crate::checkpoint::restore(ctx, backend, &name.name, &snapshot, force).await,
        SessionCommand::Ls => {
            let sessions = backend.list_sessions().await?;
            if ctx.json {
                output::print_json(&sessions)?;
            } else {
                print_table(&sessions);
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Info { name } => {
            let info = backend.session_info(&name.name).await?;
            if ctx.json {
                output::print_json(&info)?;
            } else {
                print_info(&info);
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Stop { name, force } => {
            let info = backend.stop_session(&name.name, force).await?;
            if ctx.json {
                output::print_json(&info)?;
            } else {
                println!("stopped session {}", info.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Move { name, to } => {
            let moved = backend.move_session(&name.name, &to).await?;
            if ctx.json {
                output::print_json(&moved)?;
            } else {
                println!(
                    "session {} is on node {}",
                    name.name,
                    moved["node"].as_str().unwrap_or(&to)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Backup { name } => {
            let kept = backend.backup_session(&name.name).await?;
            if ctx.json {
                output::print_json(&kept)?;
            } else {
                println!(
                    "session {} kept in the export store ({} bytes)",
                    name.name,
                    kept["size_bytes"].as_u64().unwrap_or(0)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Rm { name, force } => {
            backend.remove_session(&name.name, force).await?;
            if ctx.json {
                output::print_json(&serde_json::json!({ "removed": name.name }))?;
            } else {
                println!("removed session {}", name.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Keys(keys) => crate::keys::dispatch(ctx, keys).await,
    }
}

/// The manager of the direct path (spawns attach in this process).
fn manager(backend: &Backend) -> anyhow::Result<&blink_sdk::Manager> {
    backend
        .manager()
        .map(|m| m.as_ref())
        .ok_or_else(|| anyhow::anyhow!("no session manager here"))
}

fn print_table(sessions: &[SessionInfo]) {
    if sessions.is_empty() {
        println!("no sessions");
        return;
    }
    println!(
        "{:<24} {:<8} {:<5} {:<10} {:<24} BOX",
        "NAME", "STATE", "WARM", "ISOLATION", "IMAGE"
    );
    for s in sessions {
        println!(
            "{:<24} {:<8} {:<5} {:<10} {:<24} {}",
            s.name,
            s.state.to_string(),
            if s.warm { "yes" } else { "no" },
            s.isolation.to_string(),
            s.image,
            s.box_id
        );
    }
}

fn print_info(s: &SessionInfo) {
    println!("name:       {}", s.name);
    println!("box id:     {}", s.box_id);
    println!("state:      {}", s.state);
    println!("warm:       {}", s.warm);
    println!("image:      {}", s.image);
    println!("runtime:    {} ({} isolation)", s.runtime, s.isolation);
    println!("created at: {}", s.created_at);
    println!("last used:  {}", s.last_used_at);
    println!("running:    {} execution(s)", s.active_executions);
    if let Some(d) = &s.disk {
        println!(
            "disk:       {} MiB, {:.1} MiB used on the host",
            d.size_bytes >> 20,
            d.used_bytes as f64 / f64::from(1 << 20)
        );
        if d.layers > 0 {
            println!(
                "layers:     {} shared, {:.1} MiB on the host",
                d.layers,
                d.layers_bytes as f64 / f64::from(1 << 20)
            );
        }
    }
    print_resources(&s.resources);
    print_usage(&s.usage);
}

fn print_resources(r: &Resources) {
    let limit = |v: Option<u64>, unit: &str| v.map_or("unlimited".into(), |v| format!("{v}{unit}"));
    println!(
        "limits:     cpus {}, memory {}, pids {}, disk {}",
        r.cpus.map_or("unlimited".into(), |c| c.to_string()),
        limit(r.memory_mib, " MiB"),
        limit(r.pids, ""),
        limit(r.disk_mib, " MiB"),
    );
    println!(
        "timeouts:   run {} s, idle {} s",
        r.run_timeout_secs, r.idle_timeout_secs
    );
}

fn print_usage(u: &ResourceUsage) {
    let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
    let n = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    println!(
        "usage:      memory {} (peak {}), cpu {} s ({} periods throttled), pids {}, oom kills {} [{}]",
        mib(u.memory_bytes),
        mib(u.memory_peak_bytes),
        u.cpu_usec
            .map_or("-".into(), |c| format!("{:.2}", c as f64 / 1e6)),
        n(u.cpu_throttled_periods),
        n(u.pids),
        n(u.oom_kills),
        u.source
    );
    println!(
        "            disk {} used, egress {} bytes sent, {} received",
        mib(u.disk_used_bytes),
        u.egress_bytes_sent,
        u.egress_bytes_received
    );
}

/// Spawn and stay attached until the process ends.
async fn spawn(
    ctx: &Context,
    manager: &blink_sdk::Manager,
    name: &str,
    tty: bool,
    env: Vec<(String, String)>,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let size = if tty { Some(terminal::size()) } else { None };
    let info = manager.spawn(name, command, env, size).await?;
    if ctx.json && !tty {
        // Scripts get the id; the process keeps running only as long as
        // this process does, so stay attached below.
        eprintln!("{}", serde_json::to_string(&info)?);
    }
    let mut attachment = manager.attach(name, &info.id)?;
    let raw = if tty {
        terminal::RawMode::enter()
    } else {
        None
    };
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    for chunk in std::mem::take(&mut attachment.replay) {
        write_chunk(&mut stdout, &mut stderr, chunk.stream, &chunk.data).await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 8192];
    let mut stdin_open = true;
    let control = attachment.spawn.control.clone();
    let status = loop {
        tokio::select! {
            chunk = attachment.live.recv() => match chunk {
                Ok(c) => write_chunk(&mut stdout, &mut stderr, c.stream, &c.data).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "output came faster than the terminal took it");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    if !tty {
                        attachment.write(Vec::new()).await; // EOF
                    }
                }
                Ok(n) => {
                    attachment.write(buf[..n].to_vec()).await;
                }
            },
            _ = winch.recv(), if tty => {
                let _ = control.resize(terminal::size());
            }
            changed = attachment.exit.changed() => {
                let status = *attachment.exit.borrow();
                if let Some(status) = status {
                    // Output before exit was pumped first; drain the rest.
                    while let Ok(c) = attachment.live.try_recv() {
                        write_chunk(&mut stdout, &mut stderr, c.stream, &c.data).await;
                    }
                    break status;
                }
                if changed.is_err() {
                    break blink_sdk::types::ExitStatus { code: -1, signal: None };
                }
            }
        }
    };
    let _ = stdout.flush().await;
    drop(raw);
    Ok(output::exit_code(status.code))
}

pub async fn write_chunk(
    stdout: &mut tokio::io::Stdout,
    stderr: &mut tokio::io::Stderr,
    stream: Stream,
    data: &[u8],
) {
    match stream {
        Stream::Stdout => {
            let _ = stdout.write_all(data).await;
            let _ = stdout.flush().await;
        }
        Stream::Stderr => {
            // Flushed too: tokio hands writes to a thread, and this
            // process may end right after the last one.
            let _ = stderr.write_all(data).await;
            let _ = stderr.flush().await;
        }
    }
}

/// `on`/`off` (also `true`/`false`, `yes`/`no`).
fn on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{text:?} is not on or off")),
    }
}
