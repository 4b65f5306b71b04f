#!/usr/bin/env python3
"""The boxlite runtime beside the local one, in the same run: a session's
cold start (made, booted, first command done), exec latency (REST run of
`true`; ssh connect + `true`), and stream throughput over ssh (64 MiB out
of and into a session).

On a host whose KVM cannot boot a micro-VM (kvm_pvm) the boxlite server
runs nested: inside an L1 guest QEMU emulates with SVM under TCG
(tests/vm/boxlite-vm.sh), which is ~15-25x slower than hardware for
CPU-bound work and also carries the forwarded ports through QEMU's user
network. Its figures say what the nested setup costs, not what BoxLite
costs on a KVM host; run the same script there (BLINK_VM=direct) for
those. The local-runtime server runs on the host itself, here.

    python3 bench/boxlite.py [--quick] [--bin-dir target/release]

The binaries must be built with the boxlite feature (scripts/test.sh does).
Writes bench/boxlite.json and its section of bench/RESULTS.md. Loopback only.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, percentile, wait_port  # noqa: E402
from bench import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BEGIN, END = "<!-- boxlite:begin -->", "<!-- boxlite:end -->"
TOKEN = "bench-boxlite-token-0123456789"


def api(port: int, method: str, path: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if data:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read()
    return json.loads(text) if text else {}


def nested() -> bool:
    mode = os.environ.get("BLINK_VM")
    if mode in ("direct", "nested"):
        return mode == "nested"
    hardware = any(Path("/sys/module", m).exists() for m in ("kvm_intel", "kvm_amd"))
    return not (hardware and not Path("/sys/module/kvm_pvm").exists())


class Server:
    """A blink-server (local on the host, or boxlite nested or direct) and how to reach it."""

    def __init__(self, name: str, work: Path, bin_dir: Path, runtime: str):
        self.name = name
        self.work = work
        work.mkdir(parents=True)
        os.chmod(work, 0o711)
        (work / "blink.toml").write_text('[images]\npull = "never"\n')
        (work / "token").write_text(TOKEN)
        self.log = open(work / "server.log", "wb")
        env = {**os.environ, "BLINK_API_TOKEN": TOKEN, "RUST_LOG": "info", "NO_COLOR": "1"}
        if runtime == "boxlite" and nested():
            for b in ("blink-server", "blink-cli"):
                shutil.copy(bin_dir / b, work / b)
            self.ssh_port, self.http_port = free_port(), free_port()
            subprocess.run(["bash", str(ROOT / "tests/vm/boxlite-vm.sh"), "prepare"], check=True)
            self.proc = subprocess.Popen(
                ["bash", str(ROOT / "tests/vm/boxlite-vm.sh"), "serve"],
                env={**env, "VM_SHARE": str(work), "VM_SSH_PORT": str(self.ssh_port),
                     "VM_HTTP_PORT": str(self.http_port)},
                stdout=subprocess.PIPE, stderr=self.log)
            self.where = "nested: L1 under QEMU TCG (-cpu qemu64,+svm,+npt), box inside"
            # Ready when the server inside says it listens.
            for line in self.proc.stdout:
                if line.startswith(b"http listening"):
                    break
            else:
                raise RuntimeError(f"the VM did not come up: see {work / 'server.log'}")
        else:
            self.ssh_port, self.http_port = free_port(), free_port()
            self.proc = subprocess.Popen(
                [str(bin_dir / "blink-server"), "--data-dir", str(work / "data"), "--config",
                 str(work / "blink.toml"), "--runtime", runtime, "--ssh-listen", f"127.0.0.1:{self.ssh_port}",
                 "--http-listen", f"127.0.0.1:{self.http_port}"],
                env=env, stdout=subprocess.DEVNULL, stderr=self.log)
            self.where = "this host"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name}: the server exited: see {work / 'server.log'}")
            try:
                wait_port(self.http_port, 1)
                break
            except RuntimeError:
                pass
        else:
            raise RuntimeError(f"{name}: nothing listens on {self.http_port}")
        self.key = work / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)

    def session(self, name: str) -> None:
        api(self.http_port, "POST", "/api/sessions", {"name": name})
        api(self.http_port, "POST", f"/api/sessions/{name}/keys", {"key": (self.work / "id.pub").read_text().strip()})

    def ssh(self, login: str, command: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.work / 'known'}", "-o", "IdentitiesOnly=yes",
                "-o", "LogLevel=ERROR", "-i", str(self.key), "-p", str(self.ssh_port),
                f"{login}@127.0.0.1", command]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def run_true(s: Server, session: str) -> float:
    start = time.perf_counter()
    r = api(s.http_port, "POST", f"/api/sessions/{session}/runs?wait=true", {"command": ["true"]})
    if r.get("state") != "succeeded":
        raise RuntimeError(f"{s.name}: run failed: {r}")
    return time.perf_counter() - start


def measure(s: Server, runs: int, size_mib: int) -> dict:
    out = {"where": s.where}
    cold = []
    for i in range(max(2, runs // 4)):
        start = time.perf_counter()
        api(s.http_port, "POST", "/api/sessions", {"name": f"cold-{i}"})
        run_true(s, f"cold-{i}")
        cold.append(time.perf_counter() - start)
        api(s.http_port, "DELETE", f"/api/sessions/cold-{i}")
    out["cold_start_ms"] = {"median": statistics.median(cold) * 1000, "runs": len(cold)}
    s.session("lat")
    run_true(s, "lat")
    rest = [run_true(s, "lat") for _ in range(runs)]
    out["rest_true_ms"] = {"p50": percentile(rest, 50) * 1000, "p99": percentile(rest, 99) * 1000, "runs": runs}
    ssh = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(s.ssh("lat", "true"), check=True, stdin=subprocess.DEVNULL)
        ssh.append(time.perf_counter() - start)
    out["ssh_connect_true_ms"] = {"p50": percentile(ssh, 50) * 1000, "p99": percentile(ssh, 99) * 1000,
                                  "runs": runs}
    size = size_mib << 20
    start = time.perf_counter()
    got = subprocess.run(s.ssh("lat", f"head -c {size} /dev/zero"), check=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE).stdout
    took = time.perf_counter() - start
    assert len(got) == size, len(got)
    out["stream_out_mib_s"] = size_mib / took
    start = time.perf_counter()
    done = subprocess.run(s.ssh("lat", "wc -c"), check=True, input=bytes(size), stdout=subprocess.PIPE).stdout
    took = time.perf_counter() - start
    assert int(done.split()[0]) == size, done
    out["stream_in_mib_s"] = size_mib / took
    return out


def markdown(results: dict) -> str:
    b, l = results["boxlite"], results["local"]
    rows = [
        ("Cold start (session made, first `true` done), median", "cold_start_ms", "median", "ms"),
        ("REST run of `true`, p50", "rest_true_ms", "p50", "ms"),
        ("REST run of `true`, p99", "rest_true_ms", "p99", "ms"),
        ("ssh connect + `true`, p50", "ssh_connect_true_ms", "p50", "ms"),
    ]
    lines = [BEGIN, "## The boxlite runtime beside the local one (bench/boxlite.py)", "",
             f"Measured {results['date']} on {results['machine']}, same run. boxlite: {b['where']}; "
             f"local: {l['where']}. **Nested under TCG the boxlite figures are emulation's, ~15-25x slower "
             "than hardware for CPU-bound work**, plus QEMU's user network on every byte; on a KVM host "
             "run `BLINK_VM=direct python3 bench/boxlite.py`. Anchors: Firecracker boots a micro-VM in "
             "~125 ms on hardware; libkrun (BoxLite's VMM) is of the same class.", "",
             "| | boxlite | local | boxlite / local |", "|---|---|---|---|"]
    for label, key, field, unit in rows:
        bv, lv = b[key][field], l[key][field]
        lines.append(f"| {label} | {bv:.0f} {unit} | {lv:.0f} {unit} | {bv / lv:.1f}x |")
    for label, key in (("ssh stream out of a session", "stream_out_mib_s"),
                       ("ssh stream into a session", "stream_in_mib_s")):
        lines.append(f"| {label} ({results['size_mib']} MiB) | {b[key]:.1f} MiB/s | {l[key]:.1f} MiB/s | "
                     f"{b[key] / l[key]:.2f}x |")
    lines += ["", "On boxlite every byte of a program's output crosses the exec wire as base64 "
              "(docs/BOXLITE.md), 4/3 of its size, through BoxLite's gRPC channel.", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    bin_dir = Path(args.bin_dir)
    runs, size_mib = (8, 16) if args.quick else (20, 64)
    results = {"date": time.strftime("%Y-%m-%d"), "size_mib": size_mib,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}"}
    with tempfile.TemporaryDirectory(prefix="blink-bench-boxlite-", dir="/var/tmp") as tmp:
        # The local runtime's sandboxes run as unprivileged ids that must reach the data dir.
        os.chmod(tmp, 0o711)
        for name, runtime in (("local", "local"), ("boxlite", "boxlite")):
            server = Server(name, Path(tmp) / name, bin_dir, runtime)
            try:
                results[name] = measure(server, runs, size_mib)
            except Exception:
                # The server's own account of what went wrong.
                log = (server.work / "server.log").read_text(errors="replace").splitlines()
                print("\n".join(line for line in log if "ERROR" in line or "WARN" in line)[-6000:],
                      file=sys.stderr)
                raise
            finally:
                server.stop()
            print(json.dumps({name: results[name]}, indent=2), flush=True)
    (BENCH / "boxlite.json").write_text(json.dumps(results, indent=2) + "\n")
    write_section(BENCH / "RESULTS.md", BEGIN, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
