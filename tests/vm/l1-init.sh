#!/bin/sh
# PID 1 of the L1 guest (tests/vm/boxlite-vm.sh): mounts, kvm_amd, the read-only share, then
# blink-server on the boxlite runtime in the foreground; powers off when it exits.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -o remount,rw /
hostname blink-l1
up() { cut -d' ' -f1 /proc/uptime; }
echo "[l1] userspace at ${uptime:-$(up)} s"
modprobe kvm_amd || echo "[l1] modprobe kvm_amd failed"
[ -e /dev/kvm ] || echo "[l1] no /dev/kvm"
modprobe 9pnet_virtio 2>/dev/null
mkdir -p /mnt/share
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro share /mnt/share ||
  echo "[l1] cannot mount the share"
ip link set lo up
# QEMU user networking: the guest is 10.0.2.15; nothing outside is reachable (restrict=on).
modprobe virtio_net 2>/dev/null
nic=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set "$nic" up && ip addr add 10.0.2.15/24 dev "$nic" || echo "[l1] no network interface"
echo "[l1] network: $(ip -br addr | tr '\n' ';')"
echo "[l1] ready at $(up) s: starting blink-server (runtime boxlite)"
mkdir -p /var/lib/blink
export BLINK_API_TOKEN="$(cat /mnt/share/token 2>/dev/null)"
export RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1
# A share may bring a script of its own to watch from inside L1 (development).
[ -f /mnt/share/l1-debug.sh ] && sh /mnt/share/l1-debug.sh &
/mnt/share/blink-server --data-dir /var/lib/blink --config /mnt/share/blink.toml \
  --runtime boxlite --ssh-listen 0.0.0.0:2222 --http-listen 0.0.0.0:8787 2>&1
echo "[l1] blink-server exited ($?) at $(up) s"
for f in /var/lib/blink/boxlite/home/boxes/*/shim.stderr /var/lib/blink/boxlite/home/boxes/*/logs/console.log; do
  [ -f "$f" ] && { echo "== $f"; tail -c 2000 "$f"; }
done
sync
echo o >/proc/sysrq-trigger
sleep 10
