//! The boxlite runtime: sessions in BoxLite micro-VMs (docs/BOXLITE.md).
//!
//! `layout.rs` images of Blink's store as the single-image OCI layouts
//! BoxLite boots from; with the `boxlite` feature, `options.rs` a
//! sandbox's spec as box options, `exec.rs` BoxLite executions as exec-wire
//! processes, `vhub.rs` a box's V-Hub endpoint (relayed over an execution),
//! `vm.rs` the `Runtime` itself and the preflight's test boot; `boot.rs`
//! bounds a box's boot in time.

pub mod boot;
pub mod layout;

#[cfg(feature = "boxlite")]
mod exec;
#[cfg(feature = "boxlite")]
pub mod options;
#[cfg(feature = "boxlite")]
mod vhub;
#[cfg(feature = "boxlite")]
mod vm;

#[cfg(feature = "boxlite")]
pub use vm::{BoxliteRuntime, test_boot};
