#!/usr/bin/env python3
"""Export and import throughput and peak memory: a session that wrote
1 GiB (random, so zstd cannot shrink it) exported to a .boxlite and
imported back with blink-cli, beside `tar c | zstd -3` and `zstd -d | tar x`
of the same bytes on the host (what a user would do by hand). Peak RSS is
the process's own (GNU time's maximum resident set size): it must stay
bounded, not grow with the archive.

    python3 bench/archives.py [--quick] [--bin-dir target/release]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BEGIN, END = "<!-- archives:begin -->", "<!-- archives:end -->"


def timed(argv: list[str], **kw) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    t = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, **kw)
    took = time.monotonic() - t
    if out.returncode != 0:
        raise SystemExit(f"{argv} failed: {out.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return took, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    args = parser.parse_args()
    if not shutil.which("zstd") or not os.path.exists("/usr/bin/time"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "zstd", "time"], check=True)
    mib = 64 if args.quick else 1024
    cli = str(Path(args.bin_dir) / "blink-cli")
    work = Path(tempfile.mkdtemp(prefix="blink-archive-bench-"))
    work.chmod(0o711)
    data = work / "data"
    try:
        base = [cli, "--data-dir", str(data)]
        subprocess.run([*base, "session", "open", "--name", "a", "--disk-size", f"{mib * 2 + 512}M"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*base, "session", "exec", "--name", "a", "--", "sh", "-c",
                        f"dd if=/dev/urandom of=/root/big bs=1M count={mib} 2>/dev/null"], check=True)
        archive = work / "a.boxlite"
        export_s, export_rss = timed([*base, "session", "export", "--name", "a", "-o", str(archive)])
        size = archive.stat().st_size
        import_s, import_rss = timed([*base, "session", "import", str(archive), "--name", "b"])
        same = subprocess.run([*base, "session", "exec", "--name", "b", "--", "sha256sum", "/root/big"],
                              capture_output=True, text=True).stdout.split()[0] == \
            subprocess.run([*base, "session", "exec", "--name", "a", "--", "sha256sum", "/root/big"],
                           capture_output=True, text=True).stdout.split()[0]
        # The same bytes by hand on the host.
        plain = work / "plain"
        plain.mkdir()
        with open(plain / "big", "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        tar_s, tar_rss = timed(["sh", "-c", f"tar -C {plain} -cf - . | zstd -3 -q -o {work}/plain.tar.zst"])
        untar = work / "untar"
        untar.mkdir()
        untar_s, untar_rss = timed(["sh", "-c", f"zstd -dc {work}/plain.tar.zst | tar -C {untar} -xf -"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {
        "mib_written": mib, "archive_bytes": size, "round_trip_identical": same,
        "export": {"seconds": export_s, "mib_s": mib / export_s, "peak_rss_kib": export_rss},
        "import": {"seconds": import_s, "mib_s": mib / import_s, "peak_rss_kib": import_rss},
        "tar_zstd": {"seconds": tar_s, "mib_s": mib / tar_s, "peak_rss_kib": tar_rss},
        "unzstd_untar": {"seconds": untar_s, "mib_s": mib / untar_s, "peak_rss_kib": untar_rss},
    }
    out = Path(args.out)
    (out / "archives.json").write_text(json.dumps(results, indent=2) + "\n")
    e, i, t, u = (results[k] for k in ("export", "import", "tar_zstd", "unzstd_untar"))
    section = "\n".join([
        BEGIN,
        "## Export and import (bench/archives.py)",
        "",
        f"A session that wrote {mib} MiB of random data; blink-cli on its data dir (the REST routes run the "
        "same code). Export includes the image (1 MiB busybox) and copies the disk first; import makes a "
        f"fresh disk and checks every checksum. Round trip identical: {same}.",
        "",
        "| | Blink | By hand on the host | Blink peak RSS | By hand peak RSS |",
        "|---|---|---|---|---|",
        f"| export (`session export` / `tar c \\| zstd -3`) | {e['mib_s']:.0f} MiB/s | {t['mib_s']:.0f} MiB/s | "
        f"{e['peak_rss_kib'] / 1024:.1f} MiB | {t['peak_rss_kib'] / 1024:.1f} MiB |",
        f"| import (`session import` / `zstd -d \\| tar x`) | {i['mib_s']:.0f} MiB/s | {u['mib_s']:.0f} MiB/s | "
        f"{i['peak_rss_kib'] / 1024:.1f} MiB | {u['peak_rss_kib'] / 1024:.1f} MiB |",
        END,
        "",
    ])
    write_section(out / "RESULTS.md", BEGIN, section)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
