#!/usr/bin/env python3
"""Blink's gateway side by side with OpenSSH on the same machine.

Starts blink-server (local runtime) and a throwaway OpenSSH sshd on loopback
ports, runs the same work against both, and writes bench/results.json,
bench/RESULTS.md and bench/ratios.png. Every figure is reported with the
reference measured in the same run and the ratio between them: these
machines are noisy, absolute numbers travel badly.

Run through bench/run.sh, which builds the release binaries first.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import pty
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tty
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Target:
    """One SSH server under test: how to reach it."""

    def __init__(self, name: str, port: int, user: str, key: Path, known: Path):
        self.name = name
        self.port = port
        self.user = user
        self.key = key
        self.known = known

    def opts(self) -> list[str]:
        return [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={self.known}",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-i", str(self.key),
        ]

    def ssh(self, *command: str, tty: bool = False) -> list[str]:
        args = ["ssh", *self.opts(), "-p", str(self.port)]
        if tty:
            args.append("-tt")
        return [*args, f"{self.user}@127.0.0.1", *command]

    def sftp(self, batch: Path) -> list[str]:
        return ["sftp", *self.opts(), "-P", str(self.port), "-b", str(batch),
                f"{self.user}@127.0.0.1"]


def timed(argv: list[str], **kw) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, **kw)
    return time.perf_counter() - start


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def connect_exec(t: Target, runs: int) -> dict:
    times = [timed(t.ssh("true"), stdout=subprocess.DEVNULL) for _ in range(runs)]
    return {"median_ms": statistics.median(times) * 1000,
            "p95_ms": percentile(times, 95) * 1000, "runs": runs}


# The remote programs differ: OpenSSH runs the host's coreutils, Blink the
# sandbox image's busybox, whose `head` and `cat` move data in small
# chunks. `dd bs=1M` is fast in both, so those rows measure the gateways.
STDOUT_PRODUCERS = {
    "head": lambda size: f"head -c {size} /dev/zero",
    "dd": lambda size: f"dd if=/dev/zero bs=1M count={size >> 20} 2>/dev/null",
}
STDIN_CONSUMERS = {"cat": "cat > /dev/null", "dd": "dd of=/dev/null bs=1M 2>/dev/null"}


def exec_stdout(t: Target, size: int, producer: str) -> dict:
    secs = timed(t.ssh(STDOUT_PRODUCERS[producer](size)), stdout=subprocess.DEVNULL)
    return {"bytes": size, "seconds": secs, "mib_s": size / secs / 2**20}


def exec_stdin(t: Target, size: int, consumer: str) -> dict:
    start = time.perf_counter()
    producer = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    subprocess.run(t.ssh(STDIN_CONSUMERS[consumer]), stdin=producer.stdout, check=True)
    producer.wait()
    secs = time.perf_counter() - start
    return {"bytes": size, "seconds": secs, "mib_s": size / secs / 2**20}


# Listeners on the server's side for `ssh -L`: a sink that reads and a
# source that writes 1 MiB at a time. The same program on both servers:
# busybox (the host has busybox-static; Blink's default image is busybox)
# or perl (perl-base, in the host and in a Debian image).
FORWARD_LISTENERS = {
    "busybox": {
        "up": "busybox nc -l -p PORT -e dd of=/dev/null bs=1M",
        "down": "busybox nc -l -p PORT -e dd if=/dev/zero bs=1M count=MIB",
    },
    "perl": {
        "up": "perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalAddr=>\"127.0.0.1\","
              "LocalPort=>PORT,Listen=>1,ReuseAddr=>1) or die; $c=$s->accept; 1 while sysread($c,$b,1<<20)'",
        "down": "perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalAddr=>\"127.0.0.1\","
                "LocalPort=>PORT,Listen=>1,ReuseAddr=>1) or die; $c=$s->accept; $b=\"\\0\"x(1<<20); "
                "for(1..MIB){$o=0; $o+=syswrite($c,$b,length($b)-$o,$o) while $o<length $b}'",
    },
}


def forward_local(t: Target, size: int, direction: str, listeners: str) -> dict:
    """`ssh -L` to a listener on the server's side (the session's own
    loopback for Blink, the host's for OpenSSH): `up` sends `size` bytes
    from here to a sink there, `down` reads them from a source there. Timed
    from connect to the far end's close."""
    lport, rport = free_port(), free_port()
    listen = FORWARD_LISTENERS[listeners][direction].replace("PORT", str(rport)).replace("MIB", str(size >> 20))
    ready = (f"for i in $(seq 200); do cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | "
             f"grep -Eq ':{rport:04X} [0-9A-F]+:0000 0A' && break; sleep 0.05; done; echo ready")
    ssh = subprocess.Popen(["ssh", *t.opts(), "-o", "ExitOnForwardFailure=yes", "-p", str(t.port),
                            "-L", f"{lport}:127.0.0.1:{rport}", f"{t.user}@127.0.0.1",
                            f"{listen} & {ready}; wait"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        if ssh.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{t.name}: the listener for ssh -L did not come up")
        start = time.perf_counter()
        got = 0
        with socket.create_connection(("127.0.0.1", lport)) as s:
            if direction == "up":
                chunk = memoryview(bytes(1 << 20))
                left = size
                while left:
                    n = min(left, len(chunk))
                    s.sendall(chunk[:n])
                    left -= n
                s.shutdown(socket.SHUT_WR)
                while s.recv(1 << 16):
                    pass
                got = size
            else:
                buf = bytearray(1 << 20)
                while n := s.recv_into(buf):
                    got += n
        secs = time.perf_counter() - start
        ssh.wait(timeout=60)
    finally:
        if ssh.poll() is None:
            ssh.kill()
            ssh.wait()
    if got != size:
        raise RuntimeError(f"{t.name}: ssh -L {direction} carried {got} of {size} bytes")
    return {"bytes": size, "seconds": secs, "mib_s": size / secs / 2**20}


def forwarding_rows(compare, size: int, image: str | None) -> None:
    """The `ssh -L` rows, both ways."""
    listeners = "busybox" if image is None else "perl"
    compare("ssh -L, client to a listener on the server's side", "MiB/s",
            lambda t: forward_local(t, size, "up", listeners), "mib_s", "higher")
    compare("ssh -L, a listener on the server's side to the client", "MiB/s",
            lambda t: forward_local(t, size, "down", listeners), "mib_s", "higher")


def sftp_rows(compare, rows: list[dict], work: Path, size: int) -> None:
    """The sftp rows: one upload and one download of `size` bytes."""
    compare("sftp upload", "MiB/s", lambda t: sftp_transfer(t, work, size), "upload_mib_s", "higher")
    rows.append({**rows[-1], "figure": "sftp download", "blink": rows[-1]["blink_raw"]["download_mib_s"],
                 "openssh": rows[-1]["openssh_raw"]["download_mib_s"],
                 "ratio": ratio(rows[-1]["blink_raw"]["download_mib_s"], rows[-1]["openssh_raw"]["download_mib_s"])})


def tree_rss_kib(root: int) -> int:
    """Resident memory of a process and all its descendants."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    total = 0
    for pid in parents:
        p = pid
        while p and p != root and p in parents:
            p = parents[p]
        if p == root:
            try:
                total += rss_kib(pid)
            except OSError:
                pass
    return total


def late_reader(t: Target, size: int, server_pid: int) -> dict:
    """`size` bytes into a program that starts reading after 5 s: the data
    must arrive whole, and the server must not buffer it (peak RSS of the
    server's process tree above its level before the transfer)."""
    baseline = tree_rss_kib(server_pid)
    peak = baseline
    start = time.perf_counter()
    producer = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    client = subprocess.Popen(t.ssh("sleep 5; wc -c"), stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()
    while client.poll() is None:
        peak = max(peak, tree_rss_kib(server_pid))
        time.sleep(0.05)
    out = client.stdout.read().decode().strip()
    producer.wait()
    secs = time.perf_counter() - start
    return {"bytes_received": int(out or 0), "complete": int(out or 0) == size, "seconds": secs,
            "peak_rss_above_idle_mib": (peak - baseline) / 1024}


def sftp_transfer(t: Target, work: Path, size: int) -> dict:
    src = work / f"sftp-src-{t.name}"
    back = work / f"sftp-back-{t.name}"
    if not src.exists():
        with open(src, "wb") as f:
            f.write(os.urandom(size))
    up = work / f"up-{t.name}.batch"
    up.write_text(f"put {src} bench-upload\n")
    down = work / f"down-{t.name}.batch"
    down.write_text(f"get bench-upload {back}\nrm bench-upload\n")
    up_s = timed(t.sftp(up), stdout=subprocess.DEVNULL)
    down_s = timed(t.sftp(down), stdout=subprocess.DEVNULL)
    same = src.read_bytes() == back.read_bytes()
    back.unlink(missing_ok=True)
    return {"bytes": size, "upload_mib_s": size / up_s / 2**20,
            "download_mib_s": size / down_s / 2**20, "intact": same}


def concurrent_true(t: Target, count: int) -> dict:
    def one(_: int) -> bool:
        return subprocess.run(t.ssh("true"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=120).returncode == 0
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        ok = sum(pool.map(one, range(count)))
    return {"count": count, "succeeded": ok, "seconds": time.perf_counter() - start}


def pty_echo(t: Target, keystrokes: int) -> dict:
    """Keystroke to echo through `ssh -tt host cat` on a local terminal."""
    pid, fd = pty.fork()
    if pid == 0:
        # No local echo: every echo measured comes from the far end.
        tty.setraw(0)
        os.execvp("ssh", t.ssh("stty -icanon; cat", tty=True))
    try:
        def read_until(needle: bytes, timeout: float = 30.0) -> None:
            buf = b""
            deadline = time.monotonic() + timeout
            while needle not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no echo of {needle!r}; got {buf[-80:]!r}")
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    buf += os.read(fd, 4096)
        def drain() -> None:
            while select.select([fd], [], [], 0.05)[0]:
                os.read(fd, 4096)
        os.write(fd, b"S")
        read_until(b"S")
        times = []
        for i in range(keystrokes):
            ch = bytes([ord("a") + i % 26])
            drain()  # the previous key's second copy (from cat) and anything else
            start = time.perf_counter()
            os.write(fd, ch)
            read_until(ch)
            times.append(time.perf_counter() - start)
        return {"median_ms": statistics.median(times) * 1000,
                "p95_ms": percentile(times, 95) * 1000, "keystrokes": keystrokes}
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


def http(port: int, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=120) as resp:
        text = resp.read()
    return json.loads(text) if text else {}


def rest_latency(port: int, path: str, body: dict, runs: int) -> dict:
    """POST a run with ?wait=true: request to finished run, end to end."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        answer = http(port, "POST", f"{path}?wait=true", body)
        times.append(time.perf_counter() - start)
        if answer.get("state") != "succeeded":
            raise RuntimeError(f"run failed: {answer}")
    return {"median_ms": statistics.median(times) * 1000, "p95_ms": percentile(times, 95) * 1000, "runs": runs}


def cold_start(port: int, runs: int) -> dict:
    """A new session (disk unpacked from the image) and its first command."""
    times = []
    for i in range(runs):
        start = time.perf_counter()
        http(port, "POST", "/api/sessions", {"name": f"cold-{i}"})
        http(port, "POST", f"/api/sessions/cold-{i}/runs?wait=true", {"command": ["true"]})
        times.append(time.perf_counter() - start)
    return {"median_ms": statistics.median(times) * 1000, "runs": runs}


def negotiated(t: Target) -> dict:
    """Key exchange and cipher the client and this server agree on: they
    explain much of any difference in connect time and throughput."""
    out = subprocess.run(t.ssh("true")[:1] + ["-v"] + t.ssh("true")[1:], capture_output=True, text=True).stderr
    found = {}
    for line in out.splitlines():
        if "kex: algorithm:" in line:
            found["kex"] = line.split("kex: algorithm:", 1)[1].strip()
        if "kex: server->client cipher:" in line:
            found["cipher"] = line.split("cipher:", 1)[1].split()[0]
        if "host key algorithm:" in line:
            found["host_key"] = line.split("host key algorithm:", 1)[1].strip()
    return found


# The reference sshd's admission in the comparison: MaxStartups 200.
SSHD_BENCH_ADMISSION = "MaxStartups 200\nMaxSessions 200\n"
# Blink given the same admission as the reference sshd (MaxStartups 200, and
# 9.2 has no per-source limits or penalties): all clients come from
# 127.0.0.1, and the default of 32 connections per session would refuse the
# concurrency row by policy, not by capacity.
BLINK_BENCH_LIMITS = (
    "max_connections = 512\nmax_connections_per_session = 200\n"
    'max_startups = "200:30:200"\nper_source_max_startups = 0\nper_source_penalties = false\n'
)


# Sandboxes run as host ids of their own ranges (sdk/src/runtime/local/ids.rs).
SANDBOX_IDS = range(0x7000_0000, 0x8000_0000)


def sandbox_rss_kib() -> int:
    """Resident memory of every process running as a sandbox's host id."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        uid = fields.get("Uid", "").split()[:1]
        if uid and int(uid[0]) in SANDBOX_IDS and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0])
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_sshd(work: Path, user_key: Path, admission: str | None = SSHD_BENCH_ADMISSION,
               log: Path | None = None) -> tuple[subprocess.Popen, Target]:
    """A throwaway sshd on loopback. `admission` is appended to its config
    (None: sshd's own defaults, MaxStartups 10:30:100); `work` must be a
    directory of its own for each sshd."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host_key = work / "sshd_host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    auth = work / "sshd_authorized_keys"
    shutil.copy(f"{user_key}.pub", auth)
    os.chmod(auth, 0o600)
    config = work / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {auth}\nPidFile {work}/sshd.pid\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\n"
        f"Subsystem sftp {SFTP_SERVER}\n{admission or ''}"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    stderr = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=stderr)
    if log:
        stderr.close()
    wait_port(port)
    user = os.environ.get("USER") or "root"
    return proc, Target("openssh", port, user, user_key, work / "known_sshd")


def start_blink(work: Path, user_key: Path, bin_dir: Path, image: str | None = None,
                limits: str | None = BLINK_BENCH_LIMITS, sandbox: str = "",
                log: Path | None = None, bench_session: bool = True) -> tuple[subprocess.Popen, Target, int]:
    """blink-server on loopback with the session `bench` warm (unless
    `bench_session` is false). `limits` is its `[ssh.limits]` table (None:
    Blink's defaults), `sandbox` its `[sandbox]` table; `log` takes its
    stderr (info level, or $RUST_LOG)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    http_port = free_port()
    if image and image.startswith("blink/debian:"):
        # A Debian image gives the sandbox the same coreutils as the host,
        # so both servers run the same remote programs.
        subprocess.run([str(bin_dir / "blink-cli"), "--data-dir", str(work / "blink-data"), "image", "build",
                        "--debootstrap", image.split(":", 1)[1]], check=True, stdout=subprocess.DEVNULL)
    admin = work / "blink_admin_keys"
    shutil.copy(f"{user_key}.pub", admin)
    data = work / "blink-data"
    config = work / "blink.toml"
    config.write_text((f"[sandbox]\n{sandbox}\n" if sandbox else "") + (f"[ssh.limits]\n{limits}" if limits else ""))
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(bin_dir / "blink-server"), "--config", str(config), "--data-dir", str(data), "--ssh-listen",
         f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{http_port}",
         "--admin-keys", str(admin), "--admin-create-sessions"],
        stdout=out, stderr=out)
    if log:
        out.close()
    wait_port(port)
    wait_port(http_port)
    if bench_session:
        http(http_port, "POST", "/api/sessions", {"name": "bench", "warm": True, **({"image": image} if image else {})})
    return proc, Target("blink", port, "bench", user_key, work / "known_blink"), http_port


def total_time_row(concurrency: dict) -> dict:
    """The wall time of the concurrency row, as a row of its own."""
    b, r = concurrency["blink_raw"]["seconds"], concurrency["openssh_raw"]["seconds"]
    return {**concurrency, "figure": concurrency["figure"].replace("(successes)", "(total time)"),
            "unit": "s", "blink": b, "openssh": r, "ratio": ratio(b, r), "better": "lower"}


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()}


def ratio(blink: float, ref: float) -> float:
    return blink / ref if ref else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    parser.add_argument("--image", default="bookworm",
                        help="Debian suite for the session's image (same coreutils as the host), or 'default'")
    parser.add_argument("--only-forwarding", action="store_true",
                        help="only the ssh -L rows (write them with --out elsewhere)")
    parser.add_argument("--only-sftp", action="store_true",
                        help="only the sftp upload/download rows (write them with --out elsewhere)")
    args = parser.parse_args()
    sizes = {
        "runs": 10 if args.quick else 50,
        "stream": (16 if args.quick else 1024) * 2**20,
        "sftp": (8 if args.quick else 256) * 2**20,
        "concurrent": 20 if args.quick else 100,
        "keys": 40 if args.quick else 200,
        "warm_sessions": 10 if args.quick else 50,
    }
    work = Path(tempfile.mkdtemp(prefix="blink-bench-"))
    # Sandboxes run as an unprivileged uid that must reach the data dir.
    work.chmod(0o711)
    key = work / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sshd, ref = start_sshd(work, key)
    image = None if args.image == "default" else f"blink/debian:{args.image}"
    if image and not shutil.which("debootstrap"):
        print("debootstrap missing: benchmarking the default busybox image", file=sys.stderr)
        image = None
    server, blink, http_port = start_blink(work, key, Path(args.bin_dir), image)
    rows: list[dict] = []
    results: dict = {"machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                     "sizes": sizes, "figures": rows, "blink_image": image or "blink/default:latest"}
    try:
        idle_rss = rss_kib(server.pid)
        subprocess.run(blink.ssh("true"), check=True)
        results["negotiated"] = {"blink": negotiated(blink), "openssh": negotiated(ref)}
        print(f"negotiated: {results['negotiated']}", flush=True)

        def compare(name: str, unit: str, fn, key_: str, better: str) -> None:
            b, r = fn(blink), fn(ref)
            rows.append({"figure": name, "unit": unit, "blink": b[key_], "openssh": r[key_],
                         "ratio": ratio(b[key_], r[key_]), "better": better,
                         "blink_raw": b, "openssh_raw": r})
            print(f"{name}: blink {b[key_]:.2f} {unit}, openssh {r[key_]:.2f} {unit}", flush=True)

        if args.only_forwarding:
            forwarding_rows(compare, sizes["stream"], image)
            return finish(args, results, rows, server, sshd, work)
        if args.only_sftp:
            sftp_rows(compare, rows, work, sizes["sftp"])
            return finish(args, results, rows, server, sshd, work)
        compare("connect+auth+exec true (median)", "ms", lambda t: connect_exec(t, sizes["runs"]), "median_ms", "lower")
        rows.append({**rows[-1], "figure": "connect+auth+exec true (p95)", "blink": rows[-1]["blink_raw"]["p95_ms"],
                     "openssh": rows[-1]["openssh_raw"]["p95_ms"],
                     "ratio": ratio(rows[-1]["blink_raw"]["p95_ms"], rows[-1]["openssh_raw"]["p95_ms"])})
        compare("exec stdout, `head -c` (as specified)", "MiB/s",
                lambda t: exec_stdout(t, sizes["stream"], "head"), "mib_s", "higher")
        compare("exec stdout, `dd bs=1M` (gateway alone)", "MiB/s",
                lambda t: exec_stdout(t, sizes["stream"], "dd"), "mib_s", "higher")
        compare("exec stdin, `cat > /dev/null`", "MiB/s",
                lambda t: exec_stdin(t, sizes["stream"], "cat"), "mib_s", "higher")
        compare("exec stdin, `dd bs=1M` (gateway alone)", "MiB/s",
                lambda t: exec_stdin(t, sizes["stream"], "dd"), "mib_s", "higher")
        compare("stdin to a reader starting after 5 s: peak server RSS above idle", "MiB",
                lambda t: late_reader(t, sizes["stream"], server.pid if t is blink else sshd.pid),
                "peak_rss_above_idle_mib", "lower")
        rows.append({**rows[-1], "figure": "stdin to a reader starting after 5 s: bytes arrived whole (1 = yes)",
                     "unit": "ok", "blink": float(rows[-1]["blink_raw"]["complete"]),
                     "openssh": float(rows[-1]["openssh_raw"]["complete"]),
                     "ratio": ratio(float(rows[-1]["blink_raw"]["complete"]),
                                    float(rows[-1]["openssh_raw"]["complete"])), "better": "higher"})
        sftp_rows(compare, rows, work, sizes["sftp"])
        forwarding_rows(compare, sizes["stream"], image)
        compare(f"{sizes['concurrent']} concurrent ssh true (successes)", "ok",
                lambda t: concurrent_true(t, sizes["concurrent"]), "succeeded", "higher")
        rows.append(total_time_row(rows[-1]))
        compare("PTY keystroke to echo (median)", "ms", lambda t: pty_echo(t, sizes["keys"]), "median_ms", "lower")
        alone = results["blink_only"] = {}
        alone["ephemeral_run_true_rest"] = rest_latency(http_port, "/api/runs", {"command": ["true"]}, sizes["runs"] // 2)
        alone["warm_session_exec_true_rest"] = rest_latency(
            http_port, "/api/sessions/bench/runs", {"command": ["true"]}, sizes["runs"])
        alone["cold_session_start"] = cold_start(http_port, 5)
        alone["server_rss_idle_kib"] = idle_rss
        before, sandboxes_before = rss_kib(server.pid), sandbox_rss_kib()
        warm = sizes["warm_sessions"]
        for i in range(warm):
            http(http_port, "POST", "/api/sessions", {"name": f"warm-{i}", "warm": True})
        after, sandboxes_after = rss_kib(server.pid), sandbox_rss_kib()
        alone["server_rss_with_warm_sessions_kib"] = {"sessions": warm, "before_kib": before, "after_kib": after,
                                                      "per_session_kib": (after - before) / warm}
        alone["sandbox_processes_rss_per_idle_session_kib"] = (sandboxes_after - sandboxes_before) / warm
        for name, value in alone.items():
            print(f"{name}: {value}", flush=True)
    except BaseException:
        stop(server, sshd, work)
        raise
    return finish(args, results, rows, server, sshd, work)


def stop(server: subprocess.Popen, sshd: subprocess.Popen, work: Path) -> None:
    for proc in (server, sshd):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    shutil.rmtree(work, ignore_errors=True)


def finish(args, results: dict, rows: list[dict], server: subprocess.Popen, sshd: subprocess.Popen,
           work: Path) -> int:
    """Stop both servers, then write the results."""
    stop(server, sshd, work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(out / "RESULTS.md", results)
    draw_chart(out / "ratios.png", rows)
    print(f"wrote {out / 'results.json'}, {out / 'RESULTS.md'}")
    return 0


def write_markdown(path: Path, results: dict) -> None:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {results['date']} on {m['cpu']} ({m['cores']} cores, Linux {m['kernel']}), "
        f"reference {m['openssh']} on the same machine in the same run; Blink's session runs "
        f"the image `{results['blink_image']}`. "
        "Ratio = Blink / OpenSSH; see `better` for which direction wins.",
        "",
        "| figure | unit | Blink | OpenSSH | ratio | better |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in results["figures"]:
        lines.append(f"| {r['figure']} | {r['unit']} | {r['blink']:.2f} | {r['openssh']:.2f} | "
                     f"{r['ratio']:.2f} | {r['better']} |")
    if "negotiated" in results:
        lines += ["", "Negotiated with the same OpenSSH client:", ""]
        for who, what in results["negotiated"].items():
            lines.append(f"- {who}: " + ", ".join(f"{k} {v}" for k, v in what.items()))
    if "blink_only" in results:
        lines += ["", "Blink alone:", ""]
        for k, v in results["blink_only"].items():
            lines.append(f"- {k}: {v}")
    lines += ["", "Sizes: " + ", ".join(f"{k}={v}" for k, v in results["sizes"].items()), ""]
    lines += ["![ratios](ratios.png)", ""]
    path.write_text("\n".join(lines + results_tail(*kept_sections(path))))


# Sections other scripts write into RESULTS.md (with `write_section`
# below), in this order after bench.py's tables: bench/soak.py's,
# bench/disks.py's, bench/network.py's, bench/archives.py's,
# bench/resources.py's, bench/recording.py's, bench/pull.py's. Each script
# rewrites its own and keeps the others; bench.py keeps them all.
SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"
DISKS_BEGIN, DISKS_END = "<!-- disks:begin -->", "<!-- disks:end -->"
SECTIONS = ((SOAK_BEGIN, SOAK_END), (DISKS_BEGIN, DISKS_END),
            ("<!-- network:begin -->", "<!-- network:end -->"),
            ("<!-- archives:begin -->", "<!-- archives:end -->"),
            ("<!-- resources:begin -->", "<!-- resources:end -->"),
            ("<!-- recording:begin -->", "<!-- recording:end -->"),
            ("<!-- pull:begin -->", "<!-- pull:end -->"),
            ("<!-- boxlite:begin -->", "<!-- boxlite:end -->"),
            ("<!-- router:begin -->", "<!-- router:end -->"),
            ("<!-- vhub:begin -->", "<!-- vhub:end -->"))
NOTES_BEGIN = "<!-- bench/NOTES.md follows -->"


def section(path: Path, begin: str, end: str) -> str | None:
    """The section between `begin` and `end` in `path`, markers included."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text.split(begin, 1)[1]:
        return begin + text.split(begin, 1)[1].split(end, 1)[0] + end
    return None


def soak_section(path: Path) -> str | None:
    return section(path, SOAK_BEGIN, SOAK_END)


def kept_sections(path: Path, replace: dict[str, str] | None = None) -> list[str]:
    """The sections of RESULTS.md, in order; `replace` maps a begin
    marker to a new block for it."""
    found = []
    for begin, end in SECTIONS:
        block = (replace or {}).get(begin) or section(path, begin, end)
        if block:
            found.append(block)
    return found


def results_tail(*sections: str | None) -> list[str]:
    """The end of RESULTS.md: the other scripts' sections, then the
    hand-written findings (what was profiled, what each change bought)."""
    lines = []
    for block in sections:
        if block:
            lines += [block, ""]
    notes = BENCH / "NOTES.md"
    if notes.exists():
        lines += [NOTES_BEGIN, "", notes.read_text()]
    return lines


def write_section(path: Path, begin: str, block: str) -> None:
    """Put one script's section into RESULTS.md (written by bench.py):
    bench.py's tables stay first, the other sections are kept, and the
    findings after them are refreshed from NOTES.md."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    sections = kept_sections(path, {begin: block})
    notes = BENCH / "NOTES.md"
    first_notes_line = notes.read_text().splitlines()[0] if notes.exists() else None
    head = text
    for marker in (*(b for b, _ in SECTIONS), NOTES_BEGIN, f"\n{first_notes_line}\n" if first_notes_line else None):
        if marker and marker in head:
            head = head.split(marker, 1)[0]
    path.write_text(head.rstrip("\n") + "\n\n" + "\n".join(results_tail(*sections)))


def draw_chart(path: Path, rows: list[dict]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (bench/run.sh installs it)", file=sys.stderr)
        return
    names = [r["figure"] for r in rows]
    # Normalize so that > 1 is always "Blink better".
    values = [(1 / r["ratio"] if r["better"] == "lower" else r["ratio"]) if r["ratio"] else 0 for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    ax.barh(names, values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("Blink relative to OpenSSH (>1: Blink better)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
