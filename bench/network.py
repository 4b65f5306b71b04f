#!/usr/bin/env python3
"""Egress proxy benchmark: a download through a session's egress proxy
against the same download without it, and the time the proxy adds to each
connection. Loopback only: the upstream is an HTTP server this script
starts on 127.0.0.1, named `up.test` by the server's [network.resolve]
table. Both sides use the same client (busybox wget: inside the sandbox it
is the default image's, on the host Debian's busybox-static).

    python3 bench/network.py [--quick] [--bin-dir target/release]

Writes bench/network.json and its section of bench/RESULTS.md.
"""

import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, wait_port  # noqa: E402
from bench import http as api  # noqa: E402
from bench import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BEGIN, END = "<!-- network:begin -->", "<!-- network:end -->"


def upstream(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    port = free_port()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **k)  # noqa: E731

    class Quiet(http.server.ThreadingHTTPServer):
        daemon_threads = True

    server = Quiet(("127.0.0.1", port), handler)
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def run_in(port: int, session: str, script: str) -> dict:
    return api(port, "POST", f"/api/sessions/{session}/runs?wait=true",
                {"command": ["sh", "-c", script], "timeout_secs": 600})


def host_busybox() -> str:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            return p
    raise SystemExit("busybox is not installed on the host (apt-get install busybox-static)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    args = parser.parse_args()
    size_mib = 32 if args.quick else 512
    conns = 20 if args.quick else 200
    rounds = 1 if args.quick else 3
    bb = host_busybox()

    work = Path(tempfile.mkdtemp(prefix="blink-net-bench-"))
    work.chmod(0o711)  # sandboxes run as other host ids and traverse it
    www = work / "www"
    www.mkdir()
    with open(www / "big", "wb") as f:
        f.write(os.urandom(1 << 20) * size_mib)
    (www / "small").write_bytes(b"x")
    up, up_port = upstream(www)

    http_port = free_port()
    config = work / "blink.toml"
    config.write_text('[sandbox]\nid_base = 2055208960\n\n[network.resolve]\n"up.test" = "127.0.0.1"\n')
    server = subprocess.Popen(
        [str(Path(args.bin_dir) / "blink-server"), "--config", str(config), "--data-dir", str(work / "data"),
         "--ssh-listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}"],
        stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"))
    results: dict = {"machine": {"cores": os.cpu_count()}, "size_mib": size_mib, "connections": conns}
    try:
        try:
            wait_port(http_port)
        except RuntimeError:
            print((work / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        api(http_port, "POST", "/api/sessions",
             {"name": "net", "warm": True, "network": {"mode": "proxy", "allow": [f"up.test:{up_port}"]}})
        # Warm up both paths once.
        run_in(http_port, "net", f"wget -q -O /dev/null http://up.test:{up_port}/small")
        subprocess.run([bb, "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{up_port}/small"], check=True)

        proxied, direct = [], []
        for _ in range(rounds):
            r = run_in(http_port, "net", f"wget -q -O /dev/null http://up.test:{up_port}/big")
            assert r["exit_code"] == 0, r
            proxied.append(size_mib / (r["duration_ms"] / 1000))
            t = time.monotonic()
            subprocess.run([bb, "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{up_port}/big"], check=True)
            direct.append(size_mib / (time.monotonic() - t))
        results["download_mib_s"] = {"proxied": statistics.median(proxied), "direct": statistics.median(direct),
                                     "ratio": statistics.median(proxied) / statistics.median(direct)}

        loop = (f"i=0; while [ $i -lt {conns} ]; do wget -q -O /dev/null http://up.test:{up_port}/small "
                f"|| exit 1; i=$((i+1)); done")
        r = run_in(http_port, "net", loop)
        assert r["exit_code"] == 0, r
        per_proxied = r["duration_ms"] / conns
        direct_loop = loop.replace(f"up.test:{up_port}", f"127.0.0.1:{up_port}").replace("wget", f"{bb} wget")
        t = time.monotonic()
        subprocess.run(["sh", "-c", direct_loop], check=True)
        per_direct = (time.monotonic() - t) * 1000 / conns
        results["per_connection_ms"] = {"proxied": per_proxied, "direct": per_direct,
                                        "added": per_proxied - per_direct}
        net = api(http_port, "GET", "/api/sessions/net/network")
        results["egress_counters"] = net["egress"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        up.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    (out / "network.json").write_text(json.dumps(results, indent=2) + "\n")
    d, c = results["download_mib_s"], results["per_connection_ms"]
    section = "\n".join([
        BEGIN,
        "## Egress proxy (bench/network.py)",
        "",
        f"{size_mib} MiB from a loopback HTTP upstream with busybox wget, median of {rounds}; "
        f"{conns} sequential 1-byte requests for the per-connection time (each includes starting wget).",
        "",
        "| Measurement | Through the session's proxy | Direct on the host | Ratio / difference | Target |",
        "|---|---|---|---|---|",
        f"| download | {d['proxied']:.0f} MiB/s | {d['direct']:.0f} MiB/s | {d['ratio']:.2f} | >= 0.5 |",
        f"| time per connection | {c['proxied']:.2f} ms | {c['direct']:.2f} ms | {c['added']:+.2f} ms | <= 2 ms added |",
        END,
        "",
    ])
    write_section(out / "RESULTS.md", BEGIN, section)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
