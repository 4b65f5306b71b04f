#!/usr/bin/env bash
# Set up whatever is missing on a fresh Debian machine and start Blink:
# system packages, release build, default image, then a shell in the
# session "my-agent" (on a terminal) or a one-shot demo run (otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --workspace --locked
cli=target/release/blink-cli
"$cli" doctor
"$cli" image build
"$cli" session open --name my-agent
if [[ -t 0 && -t 1 ]]; then
  echo "entering session my-agent (exit the shell to leave; the disk is kept)"
  exec "$cli" session spawn --name my-agent --tty -- sh -l
else
  demo=$(mktemp)
  printf '#!/bin/sh\necho "hello from $(hostname), a $(uname -s) sandbox"\n' >"$demo"
  chmod +x "$demo"
  exec "$cli" session run --name my-agent "$demo"
fi
