//! `blink-cli session keys add|ls|rm`: the SSH public keys that may log in
//! to one session. Through the server when one runs (its REST keys routes,
//! so it sees the change at once), else the key file directly
//! (atomically), without taking the data-dir lock.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use blink_sdk::manager::keys;
use clap::Subcommand;

use crate::backend::Need;
use crate::output::{self, Context};
use crate::session::NameArg;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Authorize an OpenSSH public key (a .pub file, or `-` for stdin).
    Add {
        #[command(flatten)]
        name: NameArg,
        /// Public key file, e.g. ~/.ssh/id_ed25519.pub; `-` reads stdin.
        key_file: PathBuf,
    },
    /// List the session's keys by fingerprint.
    Ls {
        #[command(flatten)]
        name: NameArg,
    },
    /// Remove a key by its SHA256 fingerprint.
    Rm {
        #[command(flatten)]
        name: NameArg,
        /// `SHA256:...` as printed by `keys ls` or `ssh-keygen -l`.
        fingerprint: String,
    },
}

pub async fn dispatch(ctx: &Context, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let backend = ctx.backend(Need::Files).await?;
    let dir = &ctx.data_dir;
    match cmd {
        KeysCommand::Add { name, key_file } => {
            let text = if key_file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&key_file)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", key_file.display()))?
            };
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .ok_or_else(|| anyhow::anyhow!("no public key found"))?;
            let (key, change) = backend.add_key(dir, &name.name, line).await?;
            let added = change == keys::KeyChange::Added;
            if ctx.json {
                output::print_json(&serde_json::json!({
                    "key": key,
                    "added": added,
                    "options_changed": change == keys::KeyChange::OptionsChanged,
                }))?;
            } else {
                let (fp, session) = (&key.fingerprint, &name.name);
                let note = options_note(&key.options);
                match change {
                    keys::KeyChange::Added => {
                        println!("added {fp} {} to session {session}{note}", key.kind)
                    }
                    keys::KeyChange::OptionsChanged => {
                        println!("updated the options of {fp} in session {session}{note}")
                    }
                    keys::KeyChange::Unchanged => {
                        println!("{fp} is already authorized for session {session}{note}")
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Ls { name } => {
            let list = backend.keys(dir, &name.name).await?;
            if ctx.json {
                output::print_json(&list)?;
            } else {
                for k in &list {
                    println!(
                        "{} {} {}{}",
                        k.fingerprint,
                        k.kind,
                        k.comment,
                        options_note(&k.options)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rm { name, fingerprint } => {
            match backend.remove_key(dir, &name.name, &fingerprint).await? {
                Some(key) => {
                    if ctx.json {
                        output::print_json(&serde_json::json!({ "removed": key }))?;
                    } else {
                        println!("removed {} from session {}", key.fingerprint, name.name);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(blink_sdk::Error::InvalidArgument(format!(
                    "no key {fingerprint} in session {}",
                    name.name
                ))
                .into()),
            }
        }
    }
}

/// `  [options]` after a key, when it has any.
fn options_note(options: &keys::KeyOptions) -> String {
    if options.is_empty() {
        String::new()
    } else {
        format!("  [{options}]")
    }
}
