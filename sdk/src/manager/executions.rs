//! Running something. A target (a named session or a fresh sandbox) is
//! resolved once into a `Sandbox`: the session's name checked, its
//! activity held, its sandbox running. Every execution, whatever surface
//! asked for it, then starts through `Manager::launch`.

use std::sync::Arc;

use super::program::{Program, RunOptions};
use super::sessions::ActivityGuard;
use super::{Manager, collect, lock};
use crate::error::Result;
use crate::runtime::{ExecSpec, Execution, PtySize, Runtime, SandboxSpec};
use crate::types::RunResult;

/// Keeps what an execution depends on alive: the session's activity guard,
/// or the whole sandbox of an ephemeral run.
#[derive(Debug)]
pub enum Lease {
    Session(ActivityGuard),
    Ephemeral(EphemeralBox),
}

/// An ephemeral sandbox, destroyed when released (or, as a fallback, when
/// dropped).
#[derive(Debug)]
pub struct EphemeralBox {
    id: String,
    runtime: Arc<dyn Runtime>,
    released: bool,
}

impl EphemeralBox {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.runtime.remove(&self.id).await
    }
}

impl Drop for EphemeralBox {
    fn drop(&mut self) {
        if !self.released {
            let runtime = self.runtime.clone();
            let id = std::mem::take(&mut self.id);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = runtime.remove(&id).await {
                        tracing::warn!(sandbox = %id, error = %e, "removing ephemeral sandbox failed");
                    }
                });
            }
        }
    }
}

/// Where a program runs.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A fresh sandbox, destroyed afterwards.
    Ephemeral,
    /// A named session.
    Session(&'a str),
}

/// A started execution and what keeps it alive. Hand it back to
/// `Manager::finish` when done.
#[derive(Debug)]
pub struct Started {
    pub execution: Execution,
    pub lease: Lease,
    pub box_id: String,
    /// A script copied in for this execution, deleted at finish.
    cleanup: Option<String>,
}

/// A sandbox resolved for use, ready for executions: a session's (its
/// activity held, so the idle policy leaves it running) or a fresh one.
#[derive(Debug)]
pub struct Sandbox {
    lease: Lease,
    box_id: String,
    image: String,
    /// Blink's variables for this sandbox (its egress proxy's), before
    /// the caller's.
    env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn box_id(&self) -> &str {
        &self.box_id
    }
}

impl Manager {
    /// Resolve a target once: a session's name is checked, its activity
    /// held and its sandbox started if needed; or a fresh sandbox of
    /// `image` (the default image when `None`) is made.
    pub async fn acquire(&self, target: Target<'_>, image: Option<&str>) -> Result<Sandbox> {
        match target {
            Target::Session(name) => {
                let (guard, _, record) = self.hold_running(name).await?;
                Ok(Sandbox {
                    lease: Lease::Session(guard),
                    env: Self::proxy_env(&record),
                    box_id: record.box_id,
                    image: record.image,
                })
            }
            Target::Ephemeral => {
                let image = self.resolve_image(image).await?;
                let ephemeral = match self.take_pooled(&image).await {
                    Some(ready) => ready,
                    None => self.new_ephemeral(&image).await?,
                };
                Ok(Sandbox {
                    box_id: ephemeral.id.clone(),
                    lease: Lease::Ephemeral(ephemeral),
                    image,
                    env: Vec::new(),
                })
            }
        }
    }

    /// Start a program in an acquired sandbox: the one way every execution
    /// starts. A script is copied in first; `Started::finish` cleans up.
    pub async fn launch(
        &self,
        sandbox: Sandbox,
        program: &Program,
        options: &RunOptions,
        tty: Option<PtySize>,
    ) -> Result<Started> {
        let (argv, copied) = self
            .materialize(&sandbox.box_id, program, &options.args)
            .await?;
        let mut env = sandbox.env.clone();
        env.extend(options.env.iter().cloned());
        let mut spec = ExecSpec {
            argv,
            env,
            cwd: options.cwd.clone(),
            tty,
        };
        self.complete_spec(&sandbox.image, &mut spec);
        match self.runtime.exec(&sandbox.box_id, spec).await {
            Ok(execution) => Ok(Started {
                execution,
                lease: sandbox.lease,
                box_id: sandbox.box_id,
                cleanup: copied,
            }),
            Err(e) => {
                if let Some(path) = copied {
                    let _ = self.runtime.remove_file(&sandbox.box_id, &path).await;
                }
                Err(e)
            }
        }
    }

    /// Start a program (a host script or a command) in a session or in a
    /// fresh ephemeral sandbox, with streams for the caller to drive. The
    /// program is checked before anything is made for it.
    pub async fn start(
        &self,
        target: Target<'_>,
        program: &Program,
        options: &RunOptions,
        tty: Option<PtySize>,
    ) -> Result<Started> {
        self.check_request(program, options)?;
        let sandbox = self.acquire(target, options.image.as_deref()).await?;
        self.launch(sandbox, program, options, tty).await
    }

    /// Start a command line in a session (SSH exec, shell, sftp; spawns).
    pub async fn exec(&self, name: &str, spec: ExecSpec) -> Result<Started> {
        let options = RunOptions {
            env: spec.env,
            cwd: spec.cwd,
            ..RunOptions::default()
        };
        self.start(
            Target::Session(name),
            &Program::Command(spec.argv),
            &options,
            spec.tty,
        )
        .await
    }

    /// Create and start a fresh sandbox that is removed when released.
    pub(super) async fn new_ephemeral(&self, image: &str) -> Result<EphemeralBox> {
        let id = format!("run-{}", uuid::Uuid::new_v4().simple());
        let sandbox = SandboxSpec {
            id: id.clone(),
            image: image.to_owned(),
            hostname: "blink-run".into(),
            limits: self.config.limits.clone(),
        };
        let started = std::time::Instant::now();
        self.runtime.create(&sandbox).await?;
        let b = EphemeralBox {
            id,
            runtime: self.runtime.clone(),
            released: false,
        };
        self.runtime.start(&sandbox).await?;
        crate::metrics::sandbox_started("ephemeral", started.elapsed());
        Ok(b)
    }

    /// Pipe-mode run: structured result, stdout and stderr apart.
    pub async fn run(
        &self,
        target: Target<'_>,
        program: &Program,
        options: RunOptions,
    ) -> Result<RunResult> {
        let session = match target {
            Target::Session(n) => Some(n.to_owned()),
            Target::Ephemeral => None,
        };
        let mut started = self.start(target, program, &options, None).await?;
        let timeout = match (options.timeout, target) {
            (Some(asked), _) => asked,
            (None, Target::Session(name)) => self.slot(name).map_or(self.config.run_timeout, |s| {
                self.run_timeout_of(&lock(&s.record))
            }),
            (None, Target::Ephemeral) => self.config.run_timeout,
        };
        let cap = options.output_limit.unwrap_or(self.config.output_limit);
        let collected =
            collect::collect(&mut started.execution, options.stdin.clone(), timeout, cap).await;
        let box_id = started.box_id.clone();
        let finished = self.finish(started).await;
        let collected = collected?;
        finished?;
        Ok(RunResult {
            exit_code: collected.status.code,
            signal: collected.status.signal,
            timed_out: collected.timed_out,
            stdout: collected.stdout,
            stderr: collected.stderr,
            duration_ms: collected.duration.as_millis() as u64,
            session,
            box_id,
            isolation: self.runtime.info().isolation,
        })
    }

    /// Release what a started execution held: delete a copied script,
    /// remove an ephemeral sandbox.
    pub async fn finish(&self, started: Started) -> Result<()> {
        let Started {
            lease,
            box_id,
            cleanup,
            ..
        } = started;
        match lease {
            Lease::Session(guard) => {
                if let Some(path) = cleanup {
                    let _ = self.runtime.remove_file(&box_id, &path).await;
                }
                drop(guard);
                Ok(())
            }
            // Removed off the caller's path (the result is already in
            // hand); `shutdown` waits for it.
            Lease::Ephemeral(b) => {
                let removal = tokio::spawn(async move {
                    let id = b.id().to_owned();
                    if let Err(e) = b.release().await {
                        tracing::warn!(sandbox = %id, error = %e, "removing ephemeral sandbox failed");
                    }
                });
                let mut removals = lock(&self.removals);
                removals.retain(|r| !r.is_finished());
                removals.push(removal);
                Ok(())
            }
        }
    }

    /// Pipe-mode run in a named session.
    pub async fn run_in_session(
        &self,
        name: &str,
        program: &Program,
        options: RunOptions,
    ) -> Result<RunResult> {
        self.run(Target::Session(name), program, options).await
    }

    /// Pipe-mode run in a fresh sandbox that is destroyed afterwards.
    pub async fn run_ephemeral(&self, program: &Program, options: RunOptions) -> Result<RunResult> {
        self.run(Target::Ephemeral, program, options).await
    }
}
