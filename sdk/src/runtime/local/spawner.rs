//! A dedicated thread that spawns sandbox processes.
//!
//! bubblewrap's `--die-with-parent` ties a sandbox to the *thread* that
//! forked it (PR_SET_PDEATHSIG). Tokio's blocking threads come and go, so a
//! sandbox forked from one would be killed when that thread retires. Forking
//! from this one long-lived thread means a sandbox lives exactly as long as
//! its runtime, and dies with the process if it crashes.

use std::io;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Start the thread; it ends when the spawner is dropped.
    pub fn new() -> io::Result<Self> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("the local runtime must be created inside a tokio runtime")
        })?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("blink-spawner".into())
            .spawn(move || {
                let _runtime = handle.enter();
                while let Ok(job) = queue.recv() {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    /// Spawn `command` from the spawner thread.
    pub async fn spawn(&self, mut command: Command) -> io::Result<Child> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(command.spawn());
            }))
            .map_err(|_| io::Error::other("sandbox spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("sandbox spawner thread dropped the request"))?
    }
}
