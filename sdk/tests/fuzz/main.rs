//! Property-based fuzzing of everything in the SDK that parses untrusted
//! bytes: OCI JSON and image references, layer and image archives, SSH
//! public keys, session names, and paths given to the confined filesystem.
//!
//! Why property-based (proptest) here rather than coverage-guided: these
//! tests must run inside the ordinary `cargo test --workspace`, on the
//! stable toolchain, in CI, in a bounded time. Coverage-guided fuzzing was
//! tried on this machine (rustc 1.95 stable with LLVM 22, Debian 12, no
//! nightly toolchain), and in fact both tools work, but only as separate,
//! open-ended processes with their own instrumented builds:
//! - cargo-fuzz (libFuzzer) builds and runs with `RUSTC_BOOTSTRAP=1`
//!   (stable's rust-std ships the ASan runtime it links).
//! - afl.rs (`cargo install cargo-afl`, which builds AFL++ from the crate's
//!   source) builds and fuzzes on stable with rustc's own coverage passes;
//!   only its optional LLVM plugins (CMPLOG and the like) need LLVM 22
//!   tools, which Debian 12 does not have (its llvm-config and afl++ 4.04c
//!   are LLVM 14).
//!
//! Neither is a `cargo test` case, so CI runs these properties, and the
//! top-level `fuzz/` directory keeps cargo-fuzz targets over the same entry
//! points for long sessions (docs/TESTING.md).
//!
//! So CI runs these properties with a small, fixed number of cases per
//! property (`cases(n)` below). A long session raises it for every property
//! at once: `PROPTEST_CASES=100000 cargo test -p blinkvm-sdk --test fuzz`.
//! Failures proptest finds are saved under `proptest-regressions/` and
//! replayed first on every later run; commit them with the fix.

mod fs;
mod image_archives;
mod keys;
mod layers;
mod names;
mod oci;
mod reference;
mod util;
