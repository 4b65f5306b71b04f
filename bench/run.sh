#!/usr/bin/env bash
# Benchmark Blink's gateway against OpenSSH on this machine (run by hand;
# results are committed). Builds release binaries, installs sshd and
# matplotlib if missing, then runs bench/bench.py. Pass --quick to check the
# harness with small sizes.
#
# `bash bench/run.sh --soak [soak.py's options]` runs bench/soak.py instead:
# a 10-minute soak of 100 clients (--duration, --clients) and logins under
# 200 silent pre-auth connections, against sshd's defaults (--only soak or
# --only preauth for one; --quick: 30 s, 10 clients).
#
# `bash bench/run.sh --disks [disks.py's options]` runs bench/disks.py
# instead (as root): session disks' creation, ephemeral runs, host disk per
# session, snapshot/restore/clone of a session that wrote 1 GiB or 10,000
# files, each beside its alternative (--quick: small sizes, no Debian image).
#
# `bash bench/run.sh --resources [--quick]` runs bench/resources.py instead
# (as root): a session's exec latency while its neighbour misbehaves within
# its limits (fork bomb, memory hog, CPU spinner), idle, and beside a
# neighbour spinning with no CPU quota.
#
# `bash bench/run.sh --recording [--quick]` runs bench/recording.py instead:
# PTY output and keystroke echo in a recorded session beside one that is
# not, and sshd for reference; whether the recordings kept up.
# `bash bench/run.sh --pull [pull.py's options]` runs bench/pull.py instead:
# `blink-cli image pull` beside `skopeo copy` from a registry on loopback,
# and a second pull of an image sharing layers (--quick: small layers).
# `bash bench/run.sh --vhub [--quick]` runs bench/vhub.py instead (as root):
# V-Hub calls each way (beside a REST run), a 1 GiB stream out of a sandbox
# with the server's memory meanwhile, events fanned out to 10 subscribers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
dpkg-query -W -f='${Status}' openssh-server 2>/dev/null | grep -q "install ok installed" || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server
}
# Our throwaway sshd is started by the harness; the distribution's own
# service is not needed.
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
cargo build --release --locked -p blink-server -p blink-cli
if [[ ${1:-} == --soak ]]; then
  shift
  exec python3 bench/soak.py "$@"
fi
if [[ ${1:-} == --disks ]]; then
  shift
  exec python3 bench/disks.py "$@"
fi
if [[ ${1:-} == --resources ]]; then
  shift
  exec python3 bench/resources.py "$@"
fi
if [[ ${1:-} == --recording ]]; then
  shift
  exec python3 bench/recording.py "$@"
fi
if [[ ${1:-} == --pull ]]; then
  shift
  exec python3 bench/pull.py "$@"
fi
if [[ ${1:-} == --vhub ]]; then
  shift
  exec python3 bench/vhub.py "$@"
fi
venv=bench/.venv
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import matplotlib' 2>/dev/null || "$venv/bin/pip" install -q matplotlib
exec "$venv/bin/python" bench/bench.py "$@"
