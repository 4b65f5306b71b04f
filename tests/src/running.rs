//! A program left running while the test talks to it: the counterpart of
//! [`crate::run`] for input sent, and output read, as the test goes.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running program (an `ssh`, an `sftp`), stdin piped, its stdout and
/// stderr collected as they come; killed when dropped.
pub struct Running {
    program: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = crate::spawn_piped(cmd);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let stdin = child.stdin.take();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Self {
            program,
            child,
            stdin,
            stdout,
            stderr,
            readers,
        }
    }

    /// Write to its stdin.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).expect("write to the program");
        stdin.flush().expect("flush");
    }

    /// Its stdin, to feed from another thread (or drop: EOF).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Wait up to 20 s for `needle` on stdout.
    pub fn wait_stdout(&self, needle: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if self.stdout().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// The first line of stdout, newline included, once it is whole (20 s
    /// at most).
    pub fn first_line(&self) -> Option<String> {
        self.wait_stdout("\n")
            .then(|| {
                self.stdout()
                    .split_inclusive('\n')
                    .next()
                    .map(str::to_owned)
            })
            .flatten()
    }

    /// Whether it has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Wait up to `limit` for it to exit; its status, or None if it still
    /// runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        crate::wait_exit(&mut self.child, limit)
    }

    /// Wait up to `limit` for it to exit (else fail, quoting its output):
    /// its status, stdout and stderr.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let Some(status) = self.wait_exit(limit) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "{} still running after {limit:?}\nstdout: {}\nstderr: {}",
                self.program,
                self.stdout(),
                String::from_utf8_lossy(&self.stderr.lock().unwrap())
            );
        };
        drop(self.stdin.take());
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        (status, self.stdout(), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}
