#!/usr/bin/env python3
"""What recording a PTY session costs (docs/RECORDING.md): output
throughput through `ssh -tt` and keystroke echo latency, in a session
that is recorded beside one that is not, on one blink-server, with
OpenSSH's sshd (no recording) as the reference. Also whether the
recordings kept up: their `complete` flag, events dropped, cast size.
Loopback only.

    python3 bench/recording.py [--quick] [--bin-dir target/release]

Writes bench/recording.json and its section of bench/RESULTS.md.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    BLINK_BENCH_LIMITS, Target, free_port, http, pty_echo, start_sshd, timed, wait_port, write_section,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BEGIN, END = "<!-- recording:begin -->", "<!-- recording:end -->"

# Printable text (what terminals mostly carry), the same program in the
# sandbox's busybox and on the host.
PRODUCER = "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {size}"


def start_blink(work: Path, key: Path, bin_dir: Path) -> tuple[subprocess.Popen, int, int]:
    """blink-server recording the session `rec` (and not `plain`)."""
    ssh_port, http_port = free_port(), free_port()
    admin = work / "admin_keys"
    shutil.copy(f"{key}.pub", admin)
    config = work / "blink.toml"
    config.write_text(
        "[sandbox]\nephemeral_pool = 0\n\n"
        f"[ssh.limits]\n{BLINK_BENCH_LIMITS}\n"
        "[recording]\nenabled = true\nsessions = [\"rec\"]\n"
        "max_bytes_per_recording = 4294967296\nmax_total_bytes = 17179869184\n"
    )
    server = subprocess.Popen(
        [str(bin_dir / "blink-server"), "--config", str(config), "--data-dir", str(work / "data"),
         "--ssh-listen", f"127.0.0.1:{ssh_port}", "--http-listen", f"127.0.0.1:{http_port}",
         "--admin-keys", str(admin)],
        stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"))
    wait_port(ssh_port)
    wait_port(http_port)
    for name in ("plain", "rec"):
        http(http_port, "POST", "/api/sessions", {"name": name, "warm": True})
    return server, ssh_port, http_port


def throughput(t: Target, size: int, runs: int) -> dict:
    """PTY output of `size` bytes, `runs` times: median MiB/s."""
    secs = [timed(t.ssh(PRODUCER.format(size=size), tty=True), stdout=subprocess.DEVNULL,
                  stdin=subprocess.DEVNULL) for _ in range(runs)]
    return {"bytes": size, "runs": runs, "median_s": statistics.median(secs),
            "mib_s": size / statistics.median(secs) / 2**20}


def recordings(http_port: int) -> list[dict]:
    """The finished recordings of `rec` (waits for the writers)."""
    for _ in range(600):
        listed = http(http_port, "GET", "/api/sessions/rec/recordings")["recordings"]
        if all(not r["active"] for r in listed):
            return listed
        time.sleep(0.1)
    raise RuntimeError("recordings still being written after 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    args = parser.parse_args()
    size = (8 if args.quick else 64) << 20
    runs = 2 if args.quick else 5
    keystrokes = 50 if args.quick else 300

    work = Path(tempfile.mkdtemp(prefix="blink-recording-bench-"))
    work.chmod(0o711)  # sandboxes run as other host ids and traverse it
    key = work / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    server, ssh_port, http_port = start_blink(work, key, Path(args.bin_dir))
    sshd, openssh = start_sshd(work / "sshd", key)
    known = work / "known_blink"
    plain = Target("blink", ssh_port, "plain", key, known)
    rec = Target("blink-recorded", ssh_port, "rec", key, known)
    results: dict = {"machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()[0]},
                     "build": Path(args.bin_dir).name}
    try:
        for t in (plain, rec, openssh):
            subprocess.run(t.ssh("true"), check=True, stdin=subprocess.DEVNULL)  # warm up
        results["throughput"] = {t.name: throughput(t, size, runs) for t in (plain, rec, openssh)}
        print("throughput:", json.dumps(results["throughput"]), flush=True)
        results["echo"] = {t.name: pty_echo(t, keystrokes) for t in (plain, rec, openssh)}
        print("echo:", json.dumps(results["echo"]), flush=True)
        listed = recordings(http_port)
        big = [r for r in listed if r["bytes"] >= size]
        results["recordings"] = {
            "made": len(listed),
            "of_the_throughput_runs": len(big),
            "complete": sum(1 for r in big if r["complete"]),
            "dropped_events": [r["dropped_events"] for r in big],
            "cast_bytes_per_output_byte": statistics.median(r["bytes"] / size for r in big) if big else None,
        }
        print("recordings:", json.dumps(results["recordings"]), flush=True)
        results["machine"]["load_after"] = os.getloadavg()[0]
    finally:
        for proc in (server, sshd):
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recording.json").write_text(json.dumps(results, indent=2) + "\n")
    write_section(out / "RESULTS.md", BEGIN, markdown(results))
    print(json.dumps(results, indent=2))
    return 0


def markdown(r: dict) -> str:
    tp, echo, rec = r["throughput"], r["echo"], r["recordings"]
    row = lambda name, key: (  # noqa: E731
        f"| {name} | {tp[key]['mib_s']:.1f} MiB/s | {echo[key]['median_ms']:.2f} ms | {echo[key]['p95_ms']:.2f} ms |")
    size = tp["blink"]["bytes"] >> 20
    return "\n".join([
        BEGIN,
        "## Recording PTY sessions (bench/recording.py)",
        "",
        f"`ssh -tt host '{PRODUCER.format(size=f'{size} MiB')}'` (median of {tp['blink']['runs']} runs) and the "
        f"echo of a keystroke through `ssh -tt host cat` ({echo['blink']['keystrokes']} keys), in a session "
        f"recorded as asciicast and in one that is not, on one blink-server ({r['build']} build, "
        f"{r['machine']['cores']} cores, load {r['machine']['load_before']:.1f} before); OpenSSH's sshd, which "
        "records nothing, for reference.",
        "",
        "| Server | PTY output | echo p50 | echo p95 |",
        "|---|---|---|---|",
        row("blink, not recorded", "blink"),
        row("blink, recorded", "blink-recorded"),
        row("OpenSSH sshd (reference)", "openssh"),
        "",
        f"Recordings of the throughput runs: {rec['complete']} of {rec['of_the_throughput_runs']} complete, "
        f"events dropped {rec['dropped_events']}, cast bytes per output byte "
        f"{rec['cast_bytes_per_output_byte'] or 0:.3f}.",
        END,
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
