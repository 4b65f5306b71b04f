//! Property-based fuzzing of everything in the SDK that parses untrusted
//! bytes: OCI JSON and image references, layer and image archives, SSH
//! public keys, session names, and paths given to the confined filesystem.
//!
//! Why property-based (proptest) and not coverage-guided: these tests must
//! run inside the ordinary `cargo test --workspace` on the stable toolchain,
//! in CI, in about a minute. Coverage-guided fuzzing was tried on this
//! machine (rustc 1.95 stable, LLVM 22, Debian 12, no nightly toolchain):
//! - afl.rs needs an LLVM plugin matching rustc's LLVM 22; Debian 12's
//!   `afl++` (4.04c) is built against LLVM 14, so `cargo afl` cannot
//!   instrument this toolchain's output.
//! - cargo-fuzz (libFuzzer) does work with `RUSTC_BOOTSTRAP=1` on stable
//!   (stable's rust-std ships the ASan runtime), but it is a separate,
//!   open-ended process with its own build, not a `cargo test` case; it is
//!   kept for long sessions in the top-level `fuzz/` directory over the
//!   same entry points (see docs/TESTING.md).
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
