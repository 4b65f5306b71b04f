#!/usr/bin/env bash
# Set up whatever is missing on a fresh Debian machine and start Blink:
# system packages, a release build, the default image, the session
# "my-agent" with your SSH key authorized, then blink-server in the
# foreground (SSH on 127.0.0.1:2222, REST on 127.0.0.1:8787). From another
# terminal:  ssh -p 2222 my-agent@127.0.0.1, or blink-cli session ls (it
# goes through the server while it runs)
# With --check it stops after one SSH login to my-agent instead of serving.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# The release build has the boxlite micro-VM runtime (its files from the PyPI wheel,
# docs/BOXLITE.md); `auto` uses it where hardware KVM boots a box, else local.
eval "$(bash scripts/boxlite-runtime.sh)"
cargo build --release --workspace --locked --features blink-server/boxlite,blink-cli/boxlite
bin=target/release
"$bin/blink-cli" doctor
"$bin/blink-cli" image build
"$bin/blink-cli" session open --name my-agent

# Your key: the first of the usual ones, or a new ed25519 key.
key=""
for k in ~/.ssh/id_ed25519 ~/.ssh/id_ecdsa ~/.ssh/id_rsa; do
  [[ -f $k.pub ]] && { key=$k; break; }
done
if [[ -z $key ]]; then
  key=~/.ssh/id_ed25519
  mkdir -p ~/.ssh && chmod 700 ~/.ssh
  ssh-keygen -q -t ed25519 -N '' -f "$key"
  echo "made a new SSH key: $key"
fi
"$bin/blink-cli" session keys add --name my-agent "$key.pub" >/dev/null

if [[ ${1:-} == --check ]]; then
  "$bin/blink-server" &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/2222) 2>/dev/null && break; sleep 0.1; done
  ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -i "$key" -p 2222 \
    my-agent@127.0.0.1 'echo "logged in to $(hostname)"'
  exit 0
fi
echo "serving: ssh -p 2222 my-agent@127.0.0.1  |  curl http://127.0.0.1:8787/api/health"
exec "$bin/blink-server"
