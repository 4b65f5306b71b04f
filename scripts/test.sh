#!/usr/bin/env bash
# Run every test: unit, SDK integration and end-to-end (real blink-cli,
# real bubblewrap sandboxes). Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --workspace --locked
cargo test --workspace --locked --no-fail-fast -- --test-threads 4
