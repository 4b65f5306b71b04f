#!/bin/bash
# boxlite-vm.sh - Blink's own binaries on the boxlite runtime, inside an L1 guest that QEMU emulates
# with AMD SVM and nested paging (TCG), on hosts whose /dev/kvm cannot boot a micro-VM (kvm_pvm).
#
#   host (no usable KVM)
#    └─ L1: qemu-system-x86_64 -accel tcg -cpu qemu64,+svm,+npt, Debian bookworm, kvm_amd -> /dev/kvm
#        └─ blink-server --runtime boxlite  (the host's release build, from a read-only 9p share)
#            └─ each session: a BoxLite micro-VM (libkrun, its own kernel)
#
# Commands:
#   prepare   build what L1 needs, once, into $BLINK_VM_CACHE (default /var/cache/blink-vm): QEMU
#             extracted from Debian's packages, a debootstrap'd bookworm root (kernel, kmod,
#             bubblewrap, e2fsprogs, busybox-static) as a raw disk image, its kernel and initrd.
#             First run ~2-4 min (debootstrap), later runs nothing. Needs root.
#   serve     boot L1 with the share $VM_SHARE mounted read-only at /mnt/share; its init starts
#             /mnt/share/blink-server with /mnt/share/blink.toml, BLINK_API_TOKEN from
#             /mnt/share/token, SSH on 2222 and HTTP on 8787, forwarded from 127.0.0.1:$VM_SSH_PORT
#             and 127.0.0.1:$VM_HTTP_PORT. Prints blink-server's "ssh/http listening on" lines with
#             the host's addresses on stdout; everything else of the console goes to stderr.
#             Runs until L1 powers off or this script is killed (QEMU dies with it); at most
#             $VM_TIMEOUT seconds (default 1800).
# The L1 guest's own network is QEMU user networking with restrict=on: it reaches nothing
# outside; only the two forwarded ports on the host's loopback reach it.
set -euo pipefail

CACHE=${BLINK_VM_CACHE:-/var/cache/blink-vm}
SUITE=bookworm
# The prepared image is rebuilt when its init changes.
STAMP=v1-$(sha256sum "$(dirname "$0")/l1-init.sh" | cut -c1-12)
log() { echo "[boxlite-vm $(date +%T)] $*" >&2; }

qemu_cmd() {
  if command -v qemu-system-x86_64 >/dev/null; then
    QEMU=(qemu-system-x86_64)
  else
    QEMU=("$CACHE/qemu/usr/bin/qemu-system-x86_64" -L "$CACHE/qemu/usr/share/qemu"
      -L /usr/share/seabios -L /usr/lib/ipxe/qemu)
  fi
}

prepare() {
  [[ $(id -u) -eq 0 ]] || { log "prepare needs root (debootstrap, mkfs)"; exit 1; }
  mkdir -p "$CACHE"
  if [ -e "$CACHE/.ready-$STAMP" ]; then return 0; fi
  export DEBIAN_FRONTEND=noninteractive
  local need=()
  for pkg in debootstrap e2fsprogs perl qemu-utils seabios ipxe-qemu libaio1 libbpf1 libcapstone4 \
    libfdt1 libfuse3-3 libglib2.0-0 libgnutls30 libibverbs1 libjpeg62-turbo libnuma1 libpixman-1-0 \
    libpmem1 libpng16-16 librdmacm1 libsasl2-2 libseccomp2 libslirp0 liburing2 libvdeplug2 libzstd1; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # Debian's QEMU 7.2 is extracted rather than installed: a backported qemu-utils (10.x) on a
  # machine "Breaks: qemu-system-common (<8.0)". A system-wide QEMU is used when there is one.
  if ! command -v qemu-system-x86_64 >/dev/null && [ ! -x "$CACHE/qemu/usr/bin/qemu-system-x86_64" ]; then
    log "extract qemu-system-x86 from Debian's packages"
    rm -rf "$CACHE/debs" "$CACHE/qemu.tmp"
    mkdir -p "$CACHE/debs" "$CACHE/qemu.tmp"
    chmod 777 "$CACHE/debs"
    (cd "$CACHE/debs" && apt-get download qemu-system-x86 qemu-system-common qemu-system-data >/dev/null)
    for d in "$CACHE"/debs/*.deb; do dpkg-deb -x "$d" "$CACHE/qemu.tmp"; done
    rm -rf "$CACHE/qemu" "$CACHE/debs"
    mv "$CACHE/qemu.tmp" "$CACHE/qemu"
  fi
  if [ ! -e "$CACHE/rootfs/.debootstrap-ok" ]; then
    log "debootstrap $SUITE (kernel, bubblewrap, busybox-static), ~2 min"
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase \
      --include=linux-image-amd64,kmod,udev,iproute2,bubblewrap,e2fsprogs,busybox-static,util-linux,procps \
      "$SUITE" "$CACHE/rootfs" >"$CACHE/debootstrap.log" 2>&1 || {
      tail -20 "$CACHE/debootstrap.log" >&2
      exit 1
    }
    touch "$CACHE/rootfs/.debootstrap-ok"
  fi
  install -m 0755 "$(dirname "$0")/l1-init.sh" "$CACHE/rootfs/sbin/blink-l1-init"
  local kver
  kver=$(ls "$CACHE/rootfs/lib/modules" | head -1)
  cp "$CACHE/rootfs/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
  cp "$CACHE/rootfs/boot/initrd.img-$kver" "$CACHE/initrd.img"
  log "root disk image"
  rm -f "$CACHE/l1.img.tmp"
  truncate -s 8G "$CACHE/l1.img.tmp"
  mkfs.ext4 -q -F -L l1root -d "$CACHE/rootfs" "$CACHE/l1.img.tmp"
  mv "$CACHE/l1.img.tmp" "$CACHE/l1.img"
  touch "$CACHE/.ready-$STAMP"
}

serve() {
  : "${VM_SHARE:?the share directory}" "${VM_SSH_PORT:?}" "${VM_HTTP_PORT:?}"
  [ -e "$CACHE/.ready-$STAMP" ] || { log "not prepared: run $0 prepare"; exit 1; }
  qemu_cmd
  # A run killed with SIGKILL (a test's server dropped) skips its EXIT
  # trap: its overlay is removed here, by the next run, once its owner
  # is gone.
  for old in "${TMPDIR:-/var/tmp}"/blink-vm-run.*; do
    [ -d "$old" ] || continue
    owner=$(cat "$old/pid" 2>/dev/null || true)
    if [ -z "$owner" ] || ! kill -0 "$owner" 2>/dev/null; then rm -rf "$old"; fi
  done
  # (global: the EXIT trap reads it)
  run=$(mktemp -d "${TMPDIR:-/var/tmp}/blink-vm-run.XXXXXX")
  echo $$ >"$run/pid"
  trap 'rm -rf "$run"' EXIT
  # Each boot writes to its own overlay: the prepared image stays as it was.
  qemu-img create -q -f qcow2 -b "$CACHE/l1.img" -F raw "$run/disk.qcow2"
  log "boot L1 (TCG, -cpu qemu64,+svm,+npt); ssh 127.0.0.1:$VM_SSH_PORT, http 127.0.0.1:$VM_HTTP_PORT"
  # QEMU dies with this script (pdeathsig), and with the time limit.
  setpriv --pdeathsig KILL -- timeout -s KILL "${VM_TIMEOUT:-1800}" \
    setpriv --pdeathsig KILL -- "${QEMU[@]}" \
    -accel tcg,thread=multi -cpu qemu64,+svm,+npt -m "${VM_MEM:-4G}" -smp "${VM_SMP:-2}" \
    -display none -monitor none -serial stdio -no-reboot \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$VM_SSH_PORT-:2222,hostfwd=tcp:127.0.0.1:$VM_HTTP_PORT-:8787" \
    -device virtio-net-pci,netdev=n0 \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw init=/sbin/blink-l1-init panic=-1 mitigations=off quiet" \
    -drive "file=$run/disk.qcow2,format=qcow2,if=virtio,cache=unsafe" \
    -virtfs "local,path=$VM_SHARE,mount_tag=share,security_model=none,readonly=on,id=share" \
    </dev/null 2>&1 |
    VM_SSH_PORT=$VM_SSH_PORT VM_HTTP_PORT=$VM_HTTP_PORT perl -ne '
      BEGIN { $| = 1; select((select(STDERR), $| = 1)[0]); }
      s/\r//g;
      if (/^(ssh|http) listening on \S+/) {
        my $port = $1 eq "ssh" ? $ENV{VM_SSH_PORT} : $ENV{VM_HTTP_PORT};
        print "$1 listening on 127.0.0.1:$port\n"; print STDERR "[L1] $_"; next;
      }
      if (/^ssh host key /) { print; }
      print STDERR "[L1] $_";'
}

case "${1:-}" in
  prepare) prepare ;;
  serve) serve ;;
  *)
    echo "usage: $0 prepare | serve" >&2
    exit 2
    ;;
esac
