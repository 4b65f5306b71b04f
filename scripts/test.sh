#!/usr/bin/env bash
# Run every test: unit, SDK integration and end-to-end (real blink-cli,
# real bubblewrap sandboxes). Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --workspace --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads 4 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "all tests: %d passed, %d failed, %d skipped\n", p, f, s }' \
  "$log" | sed 's/^all tests: /tests: /'
exit "$status"
