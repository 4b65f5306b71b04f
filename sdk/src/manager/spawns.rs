//! The spawn registry: executions a client can attach to, detach from and
//! come back to, kept per session within a cap and forgotten a while after
//! they end.

use super::spawn::{Attachment, Observer, SpawnInfo, Spawned};
use super::{Lease, Manager, Program, RunOptions, Target, lock, now};
use crate::error::{Error, Result};
use crate::runtime::PtySize;

impl Manager {
    /// Start a process that can be attached and detached.
    pub async fn spawn(
        &self,
        name: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        tty: Option<PtySize>,
    ) -> Result<SpawnInfo> {
        let program = Program::Command(argv.clone());
        let options = RunOptions {
            env,
            ..RunOptions::default()
        };
        self.check_request(&program, &options)?;
        let sandbox = self.acquire(Target::Session(name), None).await?;
        self.make_room_for_spawn(name)?;
        let started = self.launch(sandbox, &program, &options, tty).await?;
        let Lease::Session(guard) = started.lease else {
            return Err(Error::Runtime("spawn needs a session".into()));
        };
        let id = format!("x-{}", uuid::Uuid::new_v4().simple());
        let spawned = Spawned::start(
            id.clone(),
            name.into(),
            argv,
            started.execution,
            self.config.replay_limit,
            guard,
        );
        let info = spawned.info();
        lock(&self.spawns).insert(id, spawned);
        Ok(info)
    }

    /// Keep a session's spawns within `max_spawns_per_session`: forget the
    /// oldest finished one, or refuse when all are still running.
    fn make_room_for_spawn(&self, name: &str) -> Result<()> {
        let mut spawns = lock(&self.spawns);
        let in_session = spawns.values().filter(|s| s.session == name).count();
        if in_session < self.config.max_spawns_per_session {
            return Ok(());
        }
        let oldest_finished = spawns
            .values()
            .filter(|s| s.session == name)
            .filter_map(|s| s.finished_at().map(|t| (t, s.id.clone())))
            .min();
        match oldest_finished {
            Some((_, old)) => {
                spawns.remove(&old);
                Ok(())
            }
            None => Err(Error::SessionBusy {
                name: name.into(),
                reason: format!(
                    "{in_session} spawned processes are running (the limit is {})",
                    self.config.max_spawns_per_session
                ),
            }),
        }
    }

    /// Attach to a spawned execution of a session.
    pub fn attach(&self, name: &str, id: &str) -> Result<Attachment> {
        self.slot(name)?;
        let spawns = lock(&self.spawns);
        let s = spawns
            .get(id)
            .filter(|s| s.session == name)
            .ok_or_else(|| Error::ExecutionNotFound(id.into()))?;
        Ok(s.attach())
    }

    /// Watch a spawn's output without attaching (it does not count in
    /// `attached`): what the gateway records.
    pub fn observe_spawn(&self, name: &str, id: &str) -> Result<Observer> {
        self.slot(name)?;
        let spawns = lock(&self.spawns);
        let s = spawns
            .get(id)
            .filter(|s| s.session == name)
            .ok_or_else(|| Error::ExecutionNotFound(id.into()))?;
        Ok(s.observe())
    }

    pub fn spawn_info(&self, name: &str, id: &str) -> Result<SpawnInfo> {
        self.slot(name)?;
        lock(&self.spawns)
            .get(id)
            .filter(|s| s.session == name)
            .map(|s| s.info())
            .ok_or_else(|| Error::ExecutionNotFound(id.into()))
    }

    pub fn list_spawns(&self, name: &str) -> Result<Vec<SpawnInfo>> {
        self.slot(name)?;
        Ok(lock(&self.spawns)
            .values()
            .filter(|s| s.session == name)
            .map(|s| s.info())
            .collect())
    }

    /// Forget spawns that ended longer ago than the retention period, with
    /// their replay buffers.
    pub(super) fn forget_finished_spawns(&self) {
        let horizon = now().saturating_sub(self.config.spawn_retention.as_secs());
        lock(&self.spawns).retain(|_, s| s.finished_at().is_none_or(|t| t > horizon));
    }
}
