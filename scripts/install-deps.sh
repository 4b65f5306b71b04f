#!/usr/bin/env bash
# Install what Blink needs on a Debian machine, skipping what is present.
#   bubblewrap      the local runtime's namespaces
#   busybox-static  the default image's userland
#   util-linux      nsenter (joining a running sandbox), script (PTY tests)
#   openssh-client  ssh/sftp/scp for the gateway's end-to-end tests
#   tmux            a real terminal for the PTY end-to-end tests
#   libseccomp-dev  building the sandboxes' seccomp filter (libseccomp)
#   pkg-config      finding libseccomp when building
#   gcc libc6-dev   the abuse tests compile their attacker programs (static)
#   rsync           rsync over ssh in the client tests (tests/tests/ssh_clients.rs)
#   e2fsprogs       mkfs.ext4: session disks are ext4 images (docs/DISKS.md)
#   curl            curl through ssh -D in the forwarding tests (tests/tests/ssh_forwarding.rs)
#   systemd         systemd-analyze verify of the unit (tests/tests/deploy.rs)
#   docker-registry a real registry (CNCF distribution) on loopback for the pull tests
#   skopeo          pushes the images those tests build (tests/tests/registry_pull.rs)
#   apache2-utils   htpasswd, for the registry behind Basic auth in those tests
#   openssl         signs the tokens of their bearer-token service (a test double)
#   etcd-server etcd-client  the cluster's store, a real 3-member cluster on
#                   loopback in tests/tests/cluster.rs (docs/SCALE.md)
#   protobuf-compiler  protoc, for building gRPC clients (etcd-client's and the boxlite runtime's)
#   python3-venv    scripts/boxlite-runtime.sh unpacks BoxLite's runtime files from its wheel
# (tests/vm/boxlite-vm.sh installs what the nested VM needs itself: QEMU, debootstrap.)
# and, with pip, paramiko and asyncssh for the same tests (tests/clients/),
#   prometheus_client  the reference parser of /metrics (tests/tests/metrics.rs)
#   kubernetes-validate  the cluster's manifests (tests/tests/deploy_cluster.rs)
#   s3s-fs          (crates.io) an S3-compatible server for the cluster's export store
#   pyte            (PyPI) a headless terminal replaying recordings (tests/tests/recording.rs)
#   asciinema       (PyPI) `asciinema cat` of the same recordings
#   ssh-audit       (PyPI) grades the SSH gateway's algorithms
set -euo pipefail

need=()
for pkg in bubblewrap busybox-static util-linux bsdutils openssh-client tmux \
  libseccomp-dev pkg-config gcc libc6-dev rsync e2fsprogs curl systemd \
  docker-registry skopeo apache2-utils openssl etcd-server etcd-client \
  protobuf-compiler python3-venv; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if command -v python3 >/dev/null && ! python3 -c 'import paramiko, asyncssh, prometheus_client, pyte' 2>/dev/null; then
  echo "installing: paramiko asyncssh prometheus_client pyte (pip)"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    'paramiko>=3.4' 'asyncssh>=2.14' 'prometheus_client>=0.20' 'pyte>=0.8'
fi
# asciinema 2.x (PyPI, pure Python) reads the recordings back
# (tests/tests/recording.rs: `asciinema cat`).
if ! command -v asciinema >/dev/null 2>&1; then
  echo "installing: asciinema (pip)"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'asciinema>=2.2,<3'
  hash -r
fi
# kubernetes-validate (PyPI, with the API's schemas) checks the cluster's
# Kubernetes manifests offline (tests/tests/deploy_cluster.rs).
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "installing: kubernetes-validate (pip)"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'kubernetes-validate>=1.30'
  hash -r
fi
# s3s-fs (crates.io, the s3s project's S3 server over a directory) is the
# S3-compatible store of the cluster's export tests (tests/src/s3.rs).
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "installing: s3s-fs (cargo install, a few minutes)"
  cargo install --quiet --locked s3s-fs@0.14.1 --features binary
  hash -r
fi
# ssh-audit (PyPI) grades the SSH gateway's algorithms
# (tests/tests/ssh_algorithms.rs). Without it the test installs it in a venv
# under target/ itself.
if ! command -v ssh-audit >/dev/null 2>&1; then
  echo "installing: ssh-audit (pip)"
  python3 -m pip install --quiet ssh-audit ||
    echo "install-deps: pip install ssh-audit failed; tests/tests/ssh_algorithms.rs will try a venv" >&2
  hash -r
fi
