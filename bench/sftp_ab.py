#!/usr/bin/env python3
"""Two builds of blink-server side by side on sftp: before/after a change.

Starts both builds (each with its own data dir, the default image, a warm
session), then alternates 256 MiB `sftp` uploads and downloads between them
(the order swapped every round, so the machine's drift hits both alike) and
prints, per build, the medians of wall-clock MiB/s and of blink-server's own
CPU seconds per GiB moved (utime+stime of its process, where the gateway's
work is; the sftp server itself runs in the sandbox). On a shared machine
the wall-clock figures are noise of +-50%; CPU per GiB is the steady one.

    python3 bench/sftp_ab.py --a target/release-before --b target/release --rounds 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="bin dir of build A (blink-server, blink-cli)")
    parser.add_argument("--b", required=True, help="bin dir of build B")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    size = args.size_mib * 2**20
    work = Path(tempfile.mkdtemp(prefix="blink-sftp-ab-"))
    work.chmod(0o711)
    key = work / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    servers = {}
    try:
        for name, bin_dir in (("A", args.a), ("B", args.b)):
            proc, target, _ = bench.start_blink(work / name, key, Path(bin_dir))
            target.name = name
            servers[name] = (proc, target)
        src = work / "src"
        src.write_bytes(os.urandom(size))
        figures = {n: {"up_mib_s": [], "down_mib_s": [], "up_cpu_s_per_gib": [], "down_cpu_s_per_gib": []}
                   for n in servers}
        gib = size / 2**30
        for r in range(args.rounds):
            for name in (["A", "B"] if r % 2 == 0 else ["B", "A"]):
                proc, t = servers[name]
                up = work / f"up-{name}.batch"
                up.write_text(f"put {src} ab-upload\n")
                back = work / f"back-{name}"
                down = work / f"down-{name}.batch"
                down.write_text(f"get ab-upload {back}\nrm ab-upload\n")
                c0 = cpu_seconds(proc.pid)
                up_s = bench.timed(t.sftp(up), stdout=subprocess.DEVNULL)
                c1 = cpu_seconds(proc.pid)
                down_s = bench.timed(t.sftp(down), stdout=subprocess.DEVNULL)
                c2 = cpu_seconds(proc.pid)
                if back.read_bytes() != src.read_bytes():
                    raise RuntimeError(f"{name}: the download differs from the upload")
                back.unlink()
                f = figures[name]
                f["up_mib_s"].append(size / up_s / 2**20)
                f["down_mib_s"].append(size / down_s / 2**20)
                f["up_cpu_s_per_gib"].append((c1 - c0) / gib)
                f["down_cpu_s_per_gib"].append((c2 - c1) / gib)
                print(f"round {r} {name}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in f.items()), flush=True)
        for name, f in figures.items():
            print(f"{name} ({args.a if name == 'A' else args.b}): " + ", ".join(
                f"{k} median {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]" for k, v in f.items()))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
