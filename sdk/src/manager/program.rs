//! What runs in a sandbox: a host script copied in or a command line, and
//! how (environment, working directory, arguments). The environment starts
//! from the image's, then Blink's defaults, then the caller's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::SCRIPT_DIR;
use super::{MEMORY_DIR, Manager, policy};
use crate::error::{Error, Result};
use crate::image::{DEFAULT_IMAGE, ResolvedImage};
use crate::runtime::ExecSpec;

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// A host file, copied into the sandbox and executed.
    Script(PathBuf),
    /// A command line, run as is.
    Command(Vec<String>),
}

/// How to run it.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub timeout: Option<Duration>,
    pub output_limit: Option<u64>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub stdin: Option<Vec<u8>>,
    /// Image for ephemeral runs; the default image when `None`.
    pub image: Option<String>,
    /// Extra arguments after the program.
    pub args: Vec<String>,
}

impl Manager {
    /// Environment for an execution: image env, then Blink's defaults,
    /// then the caller's.
    pub(super) fn env_for(
        image: Option<&ResolvedImage>,
        tty: bool,
        extra: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| {
            env.retain(|(key, _)| key != k);
            env.push((k.to_owned(), v.to_owned()));
        };
        set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        for kv in image.map(|i| i.env.as_slice()).unwrap_or_default() {
            if let Some((k, v)) = kv.split_once('=') {
                set(k, v);
            }
        }
        set("HOME", "/root");
        set("USER", "root");
        set("BLINK_MEMORY_DIR", MEMORY_DIR);
        if tty {
            set("TERM", "xterm-256color");
        }
        for (k, v) in extra {
            set(k, v);
        }
        env
    }

    /// Fill in environment and working directory from the image.
    /// The image is read once per execution, for both.
    pub(super) fn complete_spec(&self, image: &str, spec: &mut ExecSpec) {
        let resolved = self.images.resolve(image).ok();
        spec.env = Self::env_for(resolved.as_ref(), spec.tty.is_some(), &spec.env);
        if spec.cwd.is_none() {
            let dir = resolved
                .and_then(|i| i.working_dir)
                .filter(|d| !d.is_empty());
            spec.cwd = Some(dir.unwrap_or_else(|| "/root".into()));
        }
    }

    /// Check what a caller asked to run before anything is made for it:
    /// the command line, arguments and environment by the rules in
    /// `policy.rs`; a host script exists, is a file and is not too large.
    pub(super) fn check_request(&self, program: &Program, options: &RunOptions) -> Result<()> {
        match program {
            Program::Command(argv) => policy::check_command(argv)?,
            Program::Script(path) => self.check_script(path)?,
        }
        policy::check_args(&options.args)?;
        policy::check_env(&options.env)
    }

    fn check_script(&self, path: &Path) -> Result<()> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ScriptNotFound(path.to_path_buf()),
            _ => Error::io(format!("reading script {}", path.display()), e),
        })?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!(
                "script {} is not a regular file",
                path.display()
            )));
        }
        if meta.len() > self.config.max_script_bytes {
            return Err(Error::TooLarge {
                what: format!("script {}", path.display()),
                size: meta.len(),
                limit: self.config.max_script_bytes,
            });
        }
        Ok(())
    }

    /// Turn a program into argv, copying a script into the sandbox.
    pub(super) async fn materialize(
        &self,
        box_id: &str,
        program: &Program,
        args: &[String],
    ) -> Result<(Vec<String>, Option<String>)> {
        match program {
            Program::Command(argv) => {
                let mut argv = argv.clone();
                argv.extend_from_slice(args);
                Ok((argv, None))
            }
            Program::Script(path) => {
                let base: String = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "script".into())
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let dest = format!("{SCRIPT_DIR}/{}-{base}", uuid::Uuid::new_v4().simple());
                self.runtime.copy_in(box_id, path, &dest, 0o755).await?;
                let mut argv = vec![dest.clone()];
                argv.extend_from_slice(args);
                Ok((argv, Some(dest)))
            }
        }
    }

    /// Resolve an image reference, pulling it if it is missing (as the
    /// `[images] pull` policy allows) and making the default image on
    /// first use (file work, off the async threads).
    pub(super) async fn resolve_image(&self, image: Option<&str>) -> Result<String> {
        self.pull_if_missing(image).await?;
        let reference = image.unwrap_or(&self.config.default_image).to_owned();
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || match images.resolve(&reference) {
            Ok(resolved) => Ok(resolved.reference.clone()),
            Err(Error::ImageNotFound { .. })
                if reference == "default" || reference == DEFAULT_IMAGE =>
            {
                images.ensure_default()?;
                Ok(images.resolve(&reference)?.reference.clone())
            }
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| Error::Runtime(format!("image task failed: {e}")))?
    }
}
