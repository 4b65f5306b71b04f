#!/usr/bin/env bash
# Run every test: unit, SDK integration and end-to-end (real blink-cli,
# real bubblewrap sandboxes). Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# The boxlite runtime's files, from its PyPI wheel (docs/BOXLITE.md): BOXLITE_RUNTIME_URL.
eval "$(bash scripts/boxlite-runtime.sh)"
cargo build --workspace --locked
# The release binaries with the boxlite runtime: tests/tests/boxlite_vm.rs runs them on
# micro-VMs (nested under QEMU where this host's KVM cannot boot one, tests/vm/).
cargo build --release --locked --bin blink-server --bin blink-cli \
  --features blink-server/boxlite,blink-cli/boxlite
log=$(mktemp)
# Tests that cannot run here return early after naming themselves in this
# file (blink_sdk::testing::skip); they are counted as skipped, not passed.
export BLINK_SKIP_LOG
BLINK_SKIP_LOG=$(mktemp)
trap 'rm -f "$log" "$BLINK_SKIP_LOG"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads 4 2>&1 | tee "$log" || status=$?
# The boxlite runtime's own unit tests (option mapping) need the feature.
cargo test --locked -p blinkvm-sdk --features boxlite --lib runtime::boxlite 2>&1 | tee -a "$log" || status=$?
skipped=$(sort -u "$BLINK_SKIP_LOG" | wc -l)
if ((skipped)); then
  echo "skipped (could not run here):"
  sort -u "$BLINK_SKIP_LOG" | sed 's/^/  /'
fi
# Why each failing test failed, next to the closing line where a long log's
# tail shows it: its name, and the place and message of each panic it printed.
awk '/^---- .* stdout ----$/ { name = $0; shown = 0; next }
  /^failures:$/ { name = "" }
  name != "" && /panicked at/ { if (!shown) print name; shown = 1; print "  " $0; getline; print "    " $0 }' \
  "$log" | cut -c1-400 | head -80
# One closing line over every test binary.
awk -v skipped="$skipped" '/^test result:/ { p += $4; f += $6; s += $8 }
  END { printf "all tests: %d passed, %d failed, %d skipped\n", p - skipped, f, s + skipped }' \
  "$log" | sed 's/^all tests: /tests: /'
exit "$status"
