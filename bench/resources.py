#!/usr/bin/env python3
"""Noisy neighbour benchmark: how long a command takes in session B (REST
run of `true`, request to finished run) and how long `/api/health` takes,
while session A is idle, while A misbehaves within its limits (a fork bomb
that never lets go, a memory hog OOM-killed again and again, a CPU
spinner; A has cpus 0.5, memory 64 MiB, pids 64), and, for reference,
while A spins two CPU-bound loops with no CPU quota (what a neighbour
without limits costs; the fork bomb and the hog are not run without
limits: they would take the host down). Loopback only.

    python3 bench/resources.py [--quick] [--bin-dir target/release]

Writes bench/resources.json and its section of bench/RESULTS.md.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, percentile, wait_port  # noqa: E402
from bench import http as api  # noqa: E402
from bench import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BEGIN, END = "<!-- resources:begin -->", "<!-- resources:end -->"

# The same misbehaviour as tests/tests/resources.rs.
BOMB = """cat > /tmp/bomb <<'EOF'
#!/bin/sh
exec awk 'BEGIN { while (1) system("/tmp/bomb &") }'
EOF
chmod +x /tmp/bomb && exec /tmp/bomb 2>/dev/null"""
HOGS = """cat > /tmp/hog <<'EOF'
#!/bin/sh
exec awk 'BEGIN { s = "xxxxxxxxxxxxxxxx"; while (1) s = s s }'
EOF
chmod +x /tmp/hog && exec awk 'BEGIN { while (1) system("/tmp/hog") }' 2>/dev/null"""
SPIN = "while :; do :; done"


def queue(port: int, session: str, script: str) -> str:
    return api(port, "POST", f"/api/sessions/{session}/runs",
               {"command": ["sh", "-c", script], "timeout_secs": 3600})["id"]


def stats(port: int, session: str) -> dict:
    """A reading of the session's usage, with the time it was taken."""
    body = api(port, "GET", f"/api/sessions/{session}/stats")
    return {**body["usage"], "taken_at_ms": body["taken_at_ms"]}


def until(what: str, check, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not happen within {limit} s")


def latencies(port: int, samples: int) -> dict:
    """`samples` rounds of: a run of `true` in B, then `/api/health`."""
    execs, probes = [], []
    for _ in range(samples):
        t = time.perf_counter()
        r = api(port, "POST", "/api/sessions/quiet/runs?wait=true", {"command": ["true"]})
        execs.append((time.perf_counter() - t) * 1000)
        assert r["state"] == "succeeded", r
        t = time.perf_counter()
        api(port, "GET", "/api/health")
        probes.append((time.perf_counter() - t) * 1000)
    summary = lambda v: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "max_ms": max(v)}  # noqa: E731
    return {"exec": summary(execs), "health": summary(probes), "samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    args = parser.parse_args()
    samples = 30 if args.quick else 300

    work = Path(tempfile.mkdtemp(prefix="blink-resources-bench-"))
    work.chmod(0o711)  # sandboxes run as other host ids and traverse it
    http_port = free_port()
    config = work / "blink.toml"
    config.write_text("[sandbox]\nid_base = 2122317824\nephemeral_pool = 0\n\n[rest]\nmax_concurrent_runs = 8\n")
    server = subprocess.Popen(
        [str(Path(args.bin_dir) / "blink-server"), "--config", str(config), "--data-dir", str(work / "data"),
         "--ssh-listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}"],
        stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"))
    results: dict = {"machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()[0]}}
    try:
        try:
            wait_port(http_port)
        except RuntimeError:
            print((work / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        limits = {"cpus": 0.5, "memory_mib": 64, "pids": 64}
        api(http_port, "POST", "/api/sessions", {"name": "quiet", "warm": True})
        api(http_port, "POST", "/api/sessions", {"name": "noisy", "warm": True, **limits})
        api(http_port, "POST", "/api/sessions", {"name": "greedy", "warm": True})
        results["noisy_limits"] = limits
        latencies(http_port, 5)  # warm up

        results["idle"] = latencies(http_port, samples)
        print("A idle:", results["idle"], flush=True)

        # The hog and the spinner first (the hog needs a fork for each
        # round, which a fork bomb at the limit would mostly take), then
        # the bomb as well.
        queue(http_port, "noisy", SPIN)
        queue(http_port, "noisy", HOGS)
        until("an OOM kill in A", lambda: (stats(http_port, "noisy")["oom_kills"] or 0) >= 1)
        results["hog_and_spinner"] = measured(http_port, samples)
        print("A hog and spinner:", results["hog_and_spinner"], flush=True)
        queue(http_port, "noisy", BOMB)
        until("A at its process limit", lambda: (stats(http_port, "noisy")["pids"] or 0) >= 60)
        results["misbehaving"] = measured(http_port, samples)
        print("A hog, spinner and fork bomb:", results["misbehaving"], flush=True)
        api(http_port, "POST", "/api/sessions/noisy/stop?force=true")

        greedy = [queue(http_port, "greedy", SPIN) for _ in range(os.cpu_count() or 2)]
        time.sleep(1)
        results["unlimited_spinners"] = latencies(http_port, samples)
        results["unlimited_spinners"]["spinners"] = len(greedy)
        print("A spinning without a quota:", results["unlimited_spinners"], flush=True)
        api(http_port, "POST", "/api/sessions/greedy/stop?force=true")
        results["machine"]["load_after"] = os.getloadavg()[0]
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resources.json").write_text(json.dumps(results, indent=2) + "\n")
    write_section(out / "RESULTS.md", BEGIN, markdown(results))
    print(json.dumps(results, indent=2))
    return 0


def measured(port: int, samples: int) -> dict:
    """`latencies`, with what session A did meanwhile."""
    before = stats(port, "noisy")
    row = latencies(port, samples)
    after = stats(port, "noisy")
    row["noisy_usage"] = {
        "oom_kills_during": after["oom_kills"] - before["oom_kills"],
        "cpu_cores_used": (after["cpu_usec"] - before["cpu_usec"]) / 1e6 / elapsed(before, after),
        "pids_at_end": after["pids"],
        "throttled_periods_during": after["cpu_throttled_periods"] - before["cpu_throttled_periods"],
    }
    return row


def elapsed(before: dict, after: dict) -> float:
    """Seconds between two readings of `stats` (their `taken_at_ms`)."""
    return (after["taken_at_ms"] - before["taken_at_ms"]) / 1000


def markdown(r: dict) -> str:
    def row(name: str, m: dict) -> str:
        e, h = m["exec"], m["health"]
        u = m.get("noisy_usage")
        doing = (f"{u['cpu_cores_used']:.2f} cores, throttled in {u['throttled_periods_during']} periods, "
                 f"{u['oom_kills_during']} OOM kills, {u['pids_at_end']} pids") if u else "-"
        return (f"| {name} | {e['p50_ms']:.1f} ms | {e['p99_ms']:.1f} ms | {e['max_ms']:.1f} ms "
                f"| {h['p50_ms']:.2f} ms | {h['p99_ms']:.2f} ms | {doing} |")
    lim = r["noisy_limits"]
    return "\n".join([
        BEGIN,
        "## A noisy neighbour (bench/resources.py)",
        "",
        f"Session B runs `true` over REST (`POST /api/sessions/B/runs?wait=true`, request to finished run), "
        f"then `GET /api/health`, {r['idle']['samples']} times per row, on {r['machine']['cores']} cores "
        f"(load {r['machine']['load_before']:.1f} before, {r['machine'].get('load_after', 0):.1f} after). "
        f"A misbehaves within cpus {lim['cpus']}, memory {lim['memory_mib']} MiB, pids {lim['pids']}: a CPU "
        f"spinner and a memory hog OOM-killed again and again, then a fork bomb that never lets go as well "
        f"(which takes nearly every fork, the hog's included). The last row is the reference: a session with "
        f"no CPU quota running {r['unlimited_spinners']['spinners']} spinners. Release build.",
        "",
        "| Session A | B exec p50 | B exec p99 | B exec max | /api/health p50 | /api/health p99 | A meanwhile |",
        "|---|---|---|---|---|---|---|",
        row("idle", r["idle"]),
        row("CPU spinner + memory hog", r["hog_and_spinner"]),
        row("CPU spinner + memory hog + fork bomb", r["misbehaving"]),
        row("no CPU quota, spinning (reference)", r["unlimited_spinners"]),
        END,
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
