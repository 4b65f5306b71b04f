#!/usr/bin/env bash
# Long fuzzing sessions; CI runs the same properties with few cases inside
# `cargo test` (see docs/TESTING.md).
#
#   bash scripts/fuzz.sh props [CASES] [FILTER]
#       every property test (SDK and gateway) with CASES cases each
#       (default 20000), optionally only tests whose name contains FILTER
#   bash scripts/fuzz.sh libfuzzer [SECONDS] [TARGET...]
#       coverage-guided cargo-fuzz (libFuzzer) on the SDK's parsers, each
#       target for SECONDS (default 600); targets: fuzz/fuzz_targets/*.rs
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-props}
case "$mode" in
props)
  cases=${2:-20000}
  filter=${3:-}
  export PROPTEST_CASES=$cases
  cargo test --locked -p blinkvm-sdk --test fuzz -- --test-threads 2 ${filter:+"$filter"}
  cargo test --locked -p blinkvm-sdk --lib -- --test-threads 2 "${filter:-fuzz_tests}"
  cargo test --locked -p blink-server -- --test-threads 2 "${filter:-fuzz_tests}"
  ;;
libfuzzer)
  secs=${2:-600}
  shift $(( $# > 1 ? 2 : 1 ))
  command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
  targets=("$@")
  if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
  fi
  # Stable rustc with the unstable flags cargo-fuzz passes (sanitizer,
  # coverage instrumentation): RUSTC_BOOTSTRAP lets stable accept them.
  export RUSTC_BOOTSTRAP=1
  cd fuzz
  for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    echo "== $t: ${secs}s"
    cargo fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs"
  done
  ;;
*)
  echo "usage: $0 props [CASES] [FILTER] | libfuzzer [SECONDS] [TARGET...]" >&2
  exit 2
  ;;
esac
