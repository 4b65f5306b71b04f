//! The Blink gateway as a library: SSH and REST servers over one session
//! manager, each started with `start` and stopped with `shutdown`. The
//! `blink-server` binary (`main.rs`) is the thin edge around it: flags,
//! config file, signals. Tests start the servers in-process through here.
//! `recording` is shared by both: PTY sessions recorded as asciicast
//! files, listed and downloaded over REST.

pub mod audit;
pub mod cluster;
pub mod config;
pub mod hostkey;
pub mod metrics;
pub mod recording;
pub mod rest;
pub mod router;
pub mod ssh;
