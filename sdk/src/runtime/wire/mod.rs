//! The exec wire: executions carried byte-exact, with flow control, over a
//! channel that passes only text out (docs/BOXLITE.md, "exec wire").
//!
//! BoxLite 0.10.8's execution API decodes output lossily into `String`s
//! and buffers without bound, so the boxlite runtime runs each program
//! under `blink-guest wire` (sdk/guest/wire.rs) and speaks this protocol
//! with it. Nothing here depends on BoxLite: the tests drive the real
//! guest binary as a host process.

mod client;
pub mod frames;

pub use client::{MAX_UNHANDLED_TEXT, STDIN_WINDOW, WireInput, WireProcess, start, wire_args};
