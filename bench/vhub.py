#!/usr/bin/env python3
"""V-Hub benchmark (docs/VHUB.md): calls between a sandbox process and a
host client through the hub (each way), a 1 GiB stream out of a sandbox
with the server's memory meanwhile, and events fanned out to 10
subscribers. The host side is a small Python BLIN client (below); the
sandbox side is `/.blink/guest vhub`. Loopback and unix sockets only.

References measured in the same run: a host->sandbox call beside a REST
run of `true` in the same session (what a host would otherwise do to reach
into a sandbox), and the stream beside the same Python reader on a plain
unix socket (no protocol, no hub, no sandbox: the ceiling).

    python3 bench/vhub.py [--quick] [--bin-dir target/release]

Writes bench/vhub.json and its section of bench/RESULTS.md.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
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
BEGIN, END = "<!-- vhub:begin -->", "<!-- vhub:end -->"
GUEST = "/.blink/guest"

HELLO, WELCOME, REQUEST, RESPONSE, ERROR = 1, 2, 3, 4, 5
STREAM_OPEN, STREAM_DATA, STREAM_CREDIT, STREAM_CLOSE = 6, 7, 8, 9
HEADER = struct.Struct(">4sBBBBII")


class Blin:
    """A blocking BLIN client: 16-byte headers, JSON payloads."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.rx = self.sock.makefile("rb", buffering=1 << 20)
        self.lock = threading.Lock()
        self.next_id = 0
        self.send(HELLO, 0, {"versions": [1], "client": "bench"})
        kind, _, body = self.recv()
        assert kind == WELCOME, body
        self.window = json.loads(body)["initial_window"]

    def send(self, kind: int, channel: int, body) -> None:
        payload = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
        with self.lock:
            self.sock.sendall(HEADER.pack(b"BLIN", 1, kind, 0, 0, channel, len(payload)) + payload)

    def recv(self):
        head = self.rx.read(16)
        if len(head) < 16:
            raise EOFError("hub closed")
        magic, _, kind, _, _, channel, length = HEADER.unpack(head)
        assert magic == b"BLIN"
        return kind, channel, self.rx.read(length)

    def call(self, method: str, params=None, session: str | None = None):
        self.next_id += 1
        body = {"method": method, "params": params}
        if session:
            body["session"] = session
        self.send(REQUEST, self.next_id, body)
        while True:
            kind, channel, payload = self.recv()
            if channel == self.next_id and kind in (RESPONSE, ERROR):
                answer = json.loads(payload)
                if kind == ERROR:
                    raise RuntimeError(answer)
                return answer["result"]


def run_in(port: int, session: str, command: list[str], wait: bool = True) -> dict:
    path = f"/api/sessions/{session}/runs" + ("?wait=true" if wait else "")
    return api(port, "POST", path, {"command": command, "timeout_secs": 600})


def wait_run(port: int, run_id: str) -> dict:
    while True:
        r = api(port, "GET", f"/api/runs/{run_id}")
        if r["state"] not in ("queued", "running"):
            return r
        time.sleep(0.05)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sandbox_to_host(port: int, sock: str, calls: int) -> dict:
    host = Blin(sock)
    host.call("rpc.register", {"method": "host.echo"}, session="bench")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                kind, channel, payload = host.recv()
            except EOFError:
                return
            if kind == REQUEST and channel:
                host.send(RESPONSE, channel, b'{"result":' + json.dumps(json.loads(payload)["params"]).encode() + b"}")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    r = run_in(port, "bench", [GUEST, "vhub", "call", "host.echo", '{"x":1}', "--repeat", str(calls)])
    assert r["exit_code"] == 0, r
    stop.set()
    host.sock.close()
    return json.loads(r["stdout"]["data"])


def host_to_sandbox(port: int, sock: str, calls: int) -> dict:
    started = run_in(port, "bench", [GUEST, "vhub", "serve", "agent.echo", "--count", str(calls + 1)], wait=False)
    host = Blin(sock)
    deadline = time.monotonic() + 30
    while True:
        try:
            host.call("agent.echo", {"warm": True}, session="bench")
            break
        except RuntimeError as e:
            if "no_such_method" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    times = []
    t0 = time.monotonic()
    for _ in range(calls):
        t = time.monotonic()
        host.call("agent.echo", {"x": 1}, session="bench")
        times.append((time.monotonic() - t) * 1e6)
    total = time.monotonic() - t0
    done = wait_run(port, started["id"])
    assert done["exit_code"] == 0, done
    host.sock.close()
    return {"calls": calls, "per_second": calls / total, "p50_us": pct(times, 0.5), "p99_us": pct(times, 0.99)}


def rest_exec(port: int, runs: int) -> dict:
    times = []
    for _ in range(runs):
        t = time.monotonic()
        r = run_in(port, "bench", ["true"])
        times.append((time.monotonic() - t) * 1e6)
        assert r["exit_code"] == 0, r
    return {"calls": runs, "p50_us": pct(times, 0.5), "p99_us": pct(times, 0.99),
            "per_second": runs / (sum(times) / 1e6)}


def read_stream(conn: Blin, channel: int) -> tuple[int, float]:
    """Count a stream's bytes to its close, granting credit as they are read."""
    got, unacked, first = 0, 0, None
    quarter = conn.window // 4
    while True:
        kind, ch, payload = conn.recv()
        if ch != channel:
            continue
        if kind == STREAM_DATA:
            if first is None:
                first = time.monotonic()
            got += len(payload)
            unacked += len(payload)
            if unacked >= quarter:
                conn.send(STREAM_CREDIT, channel, struct.pack(">I", unacked))
                unacked = 0
        elif kind == STREAM_CLOSE:
            conn.send(STREAM_CLOSE, channel, b"")
            return got, time.monotonic() - (first or time.monotonic())


def stream_out(port: int, sock: str, pid: int, size: int) -> dict:
    host = Blin(sock)
    host.call("rpc.register", {"method": "sink"}, session="bench")
    rss_before = rss_kib(pid)
    peak = [rss_before]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    started = run_in(port, "bench", ["sh", "-c", f"head -c {size} /dev/zero | {GUEST} vhub stream sink"], wait=False)
    while True:
        kind, channel, payload = host.recv()
        if kind == STREAM_OPEN:
            break
    got, seconds = read_stream(host, channel)
    sampling.set()
    done = wait_run(port, started["id"])
    assert done["exit_code"] == 0, done
    assert got == size, (got, size)
    stats = host.call("hub.stats")
    host.sock.close()
    return {"bytes": got, "mib_s": got / (1 << 20) / seconds, "rss_before_kib": rss_before,
            "rss_peak_kib": peak[0], "hub_peak_queued_bytes": stats["peak_queued_bytes"]}


def stream_reference(size: int) -> dict:
    """The same reader loop's speed on a plain unix socket (raw bytes)."""
    a, b = socket.socketpair()
    chunk = bytes(64 * 1024)

    def write():
        left = size
        while left > 0:
            n = min(left, len(chunk))
            a.sendall(chunk[:n])
            left -= n
        a.close()

    threading.Thread(target=write, daemon=True).start()
    got, t = 0, time.monotonic()
    rx = b.makefile("rb", buffering=1 << 20)
    while True:
        data = rx.read1(1 << 20)
        if not data:
            break
        got += len(data)
    return {"bytes": got, "mib_s": got / (1 << 20) / (time.monotonic() - t)}


def fan_out(port: int, sock: str, events: int, subscribers: int) -> dict:
    counts = [0] * subscribers
    dropped = [0] * subscribers
    ready = threading.Barrier(subscribers + 1)
    last = [0.0] * subscribers

    def subscriber(i: int):
        c = Blin(sock)
        c.call("session.subscribe", {"name": "bench"})
        ready.wait()
        c.sock.settimeout(60)
        while counts[i] + dropped[i] < events:
            kind, channel, payload = c.recv()
            if kind == REQUEST and channel == 0:
                e = json.loads(payload)["params"]
                counts[i] += 1
                dropped[i] += e["dropped"]
                last[i] = time.monotonic()
        c.sock.close()

    threads = [threading.Thread(target=subscriber, args=(i,), daemon=True) for i in range(subscribers)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.monotonic()
    r = run_in(port, "bench", [GUEST, "vhub", "emit", "tick", '{"n":1}', "--repeat", str(events)])
    assert r["exit_code"] == 0, r
    for t in threads:
        t.join(timeout=120)
    emitted = json.loads(r["stdout"]["data"])
    span = max(last) - t0
    return {"events": events, "subscribers": subscribers, "emitted_per_second": emitted["per_second"],
            "delivered": sum(counts), "dropped": sum(dropped),
            "delivered_per_second": sum(counts) / span}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    args = parser.parse_args()
    calls = 500 if args.quick else 5000
    size = (64 << 20) if args.quick else (1 << 30)
    events = 1000 if args.quick else 10000

    work = Path(tempfile.mkdtemp(prefix="blink-vhub-bench-"))
    work.chmod(0o711)  # sandboxes run as other host ids and traverse it
    http_port = free_port()
    config = work / "blink.toml"
    config.write_text("[sandbox]\nid_base = 2055208960\n")
    data = work / "data"
    server = subprocess.Popen(
        [str(Path(args.bin_dir) / "blink-server"), "--config", str(config), "--data-dir", str(data),
         "--ssh-listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}"],
        stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"))
    sock = str(data / "vhub.sock")
    results: dict = {"machine": {"cores": os.cpu_count(), "load": os.getloadavg()[0]}}
    try:
        try:
            wait_port(http_port)
        except RuntimeError:
            print((work / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        api(http_port, "POST", "/api/sessions", {"name": "bench", "warm": True})
        run_in(http_port, "bench", ["true"])
        results["sandbox_to_host"] = sandbox_to_host(http_port, sock, calls)
        results["host_to_sandbox"] = host_to_sandbox(http_port, sock, calls)
        results["rest_exec_reference"] = rest_exec(http_port, min(calls, 200))
        results["stream"] = stream_out(http_port, sock, server.pid, size)
        results["stream_reference"] = stream_reference(size)
        results["fan_out"] = fan_out(http_port, sock, events, 10)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    (out / "vhub.json").write_text(json.dumps(results, indent=2) + "\n")
    s2h, h2s, ref = results["sandbox_to_host"], results["host_to_sandbox"], results["rest_exec_reference"]
    st, sref, fo = results["stream"], results["stream_reference"], results["fan_out"]
    mib = lambda kib: kib / 1024  # noqa: E731
    section = "\n".join([
        BEGIN,
        "## V-Hub (bench/vhub.py)",
        "",
        f"{'Quick run (small sizes). ' if args.quick else ''}Release build, {os.cpu_count()} cores, "
        f"load {results['machine']['load']:.1f} at the start. Sandbox side `/.blink/guest vhub`, host side "
        "a Python BLIN client on the server's socket. A call is 4 frames through the hub (request and "
        "response, in and out).",
        "",
        "| Measurement | Through the V-Hub | Reference | Reference is |",
        "|---|---|---|---|",
        f"| call sandbox -> host, {s2h['calls']} in a row | {s2h['per_second']:.0f} calls/s "
        f"({4 * s2h['per_second']:.0f} frames/s), p50 {s2h['p50_us']} us, p99 {s2h['p99_us']} us | | |",
        f"| call host -> sandbox, {h2s['calls']} in a row | {h2s['per_second']:.0f} calls/s "
        f"({4 * h2s['per_second']:.0f} frames/s), p50 {h2s['p50_us']:.0f} us, p99 {h2s['p99_us']:.0f} us "
        f"| p50 {ref['p50_us'] / 1000:.1f} ms, p99 {ref['p99_us'] / 1000:.1f} ms "
        "| a REST run of `true` in the session (`?wait=true`) |",
        f"| stream sandbox -> host, {st['bytes'] >> 20} MiB | {st['mib_s']:.0f} MiB/s "
        f"| {sref['mib_s']:.0f} MiB/s | the same reader on a plain unix socket |",
        f"| hub memory during the stream | at most {st['hub_peak_queued_bytes'] / 1024:.0f} KiB queued "
        f"to a connection; server RSS {mib(st['rss_before_kib']):.1f} -> peak {mib(st['rss_peak_kib']):.1f} MiB "
        "| | bound: max_window (1 MiB) per stream direction |",
        f"| events to 10 subscribers, {fo['events']} emitted | {fo['emitted_per_second']:.0f} emitted/s, "
        f"{fo['delivered_per_second']:.0f} delivered/s, {fo['dropped']} dropped | | |",
        END,
        "",
    ])
    write_section(out / "RESULTS.md", BEGIN, section)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
