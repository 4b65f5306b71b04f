#!/usr/bin/env python3
"""Blink under long load, and logins under a flood of silent connections.

- soak: `--clients` concurrent clients for `--duration` seconds against
  blink-server, each cycling exec (`true`, or a small output checked byte
  for byte), SFTP (upload and download a few MiB in one connection,
  checksums compared) and PTY sessions (`ssh -tt`, a few lines typed, each
  answer awaited, then `exit`). Every operation is a new SSH connection.
  blink-server's RSS, open fds and threads, and the sandboxes' processes,
  are sampled every few seconds. Each error is recorded with its text:
  nothing is retried.
- preauth: logins (`ssh host true`, from 127.0.0.1) while `--silent`
  TCP connections that never send a byte are held open from other
  loopback addresses, against blink-server and OpenSSH's sshd, both with
  their default admission limits, in the same run.

Writes bench/soak.json and a section of bench/RESULTS.md (between the
`soak` markers; bench.py keeps it). Run through `bash bench/run.sh --soak`,
which builds the release binaries first; `--quick` checks the harness.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import errno
import hashlib
import json
import os
import re
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402  (bench.py is this directory's module)
    BENCH, BLINK_BENCH_LIMITS, ROOT, SOAK_BEGIN, SOAK_END, Target,
    machine, percentile, start_blink, start_sshd, write_section,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class OpError(Exception):
    """An operation's failure, with the text that says what went wrong."""


def tail(data: bytes | str | None, n: int = 300) -> str:
    if data is None:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return text.strip()[-n:]


# --- what is sampled -------------------------------------------------------

def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def sandbox_processes(ids: range) -> list[dict]:
    """Every process running as a host id of `ids`: those of this run's
    sandboxes, even one that left blink-server's process tree."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            cmd = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uid = fields.get("Uid", "").split()[:1]
        if uid and int(uid[0]) in ids:
            found.append({"pid": int(status.parent.name), "state": fields.get("State", "").split()[0],
                          "rss_kib": int(fields.get("VmRSS", "0 kB").split()[0]), "cmd": cmd.strip()[:120]})
    return found


def descendants(pid: int) -> list[dict]:
    """The server's process tree below it (a leaked or unreaped one shows
    here), each with its state."""
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        procs[int(stat.parent.name)] = (int(fields[1]), fields[0])
    found = []
    for p, (ppid, state) in procs.items():
        q = ppid
        for _ in range(64):  # bounded walk up the tree
            if q == pid:
                found.append({"pid": p, "state": state, "child": ppid == pid})
                break
            if q not in procs:
                break
            q = procs[q][0]
    return found


# This run's sandboxes' host ids: a base of its own (other Blink servers
# on the machine, such as the test suites', use the default one), and the
# first 16 ranges above it.
SOAK_ID_BASE = 0x7000_0000 + (os.getpid() % 0x0E00 + 0x100) * 0x1_0000
SOAK_IDS = range(SOAK_ID_BASE, SOAK_ID_BASE + 16 * 0x1_0000)


def server_sample(pid: int) -> dict:
    status = proc_status(pid)
    sandboxes = sandbox_processes(SOAK_IDS)
    tree = descendants(pid)
    return {
        "rss_kib": int(status["VmRSS"].split()[0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
        "descendants": len(tree),
        "zombies": sum(1 for k in tree if k["state"] == "Z"),
        "sandbox_processes": len(sandboxes),
        "sandbox_rss_kib": sum(p["rss_kib"] for p in sandboxes),
        "loadavg_1m": os.getloadavg()[0],  # the machine is shared: how busy it was
    }


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    if len(points) < 2:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


LOG_LINE = re.compile(r"^\S+Z\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+): (.*)$")


def field(line: str, name: str) -> str | None:
    m = re.search(rf' {name}=("(?:[^"\\]|\\.)*"|\S*)', line)
    return m.group(1).strip('"') if m else None


def ops_per_minute(samples: list[dict], load_seconds: float) -> list[int]:
    """Operations finished in each whole minute of the load (from the
    samples nearest each minute's bounds)."""
    def ops_at(t: float) -> int:
        return min(samples, key=lambda s: abs(s["t_s"] - t))["ops"]
    return [ops_at(60 * (m + 1)) - ops_at(60 * m) for m in range(int(load_seconds // 60))]


def log_summary(log: Path, since: int = 0) -> dict:
    """blink-server's log: lines by level, WARN/ERROR lines by message, and
    the connections and channels that ended with an error or a failed
    program."""
    levels: collections.Counter = collections.Counter()
    messages: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}
    ended: collections.Counter = collections.Counter()
    ended_examples: dict[str, str] = {}
    lines = 0
    with open(log, errors="replace") as f:
        f.seek(since)
        for raw in f:
            lines += 1
            line = ANSI.sub("", raw.rstrip("\n"))
            m = LOG_LINE.match(line)
            if not m:
                levels["(not a log line)"] += 1
                continue
            level, target, rest = m.groups()
            levels[level] += 1
            if level in ("WARN", "ERROR"):
                key = f"{level} {target}: " + re.sub(r"\d+", "N", rest)[:200]
                messages[key] += 1
                examples.setdefault(key, line[:500])
            what = None
            if rest.startswith("ssh connection closed") and field(line, "error"):
                what = f"connection closed: {field(line, 'error')}"
            elif rest.startswith("ssh channel closed"):
                kind = field(line, "kind")
                if field(line, "error"):
                    what = f"{kind} channel closed: error {field(line, 'error')}"
                elif field(line, "exit_signal"):
                    what = f"{kind} channel closed: signal {field(line, 'exit_signal')}"
                elif field(line, "exit_status") not in ("0", None):
                    what = f"{kind} channel closed: exit status {field(line, 'exit_status')}"
            if what:
                key = re.sub(r"\d+", "N", what)[:200]
                ended[key] += 1
                ended_examples.setdefault(key, line[:500])
    return {"lines": lines, "levels": dict(levels), "warn_error_messages": dict(messages),
            "warn_error_examples": examples, "ended_badly": dict(ended), "ended_badly_examples": ended_examples}


# --- the soak --------------------------------------------------------------

class Soak:
    CYCLE = ("exec", "sftp", "exec", "pty")  # half exec, a quarter each sftp and PTY
    PTY_LINES = 3

    def __init__(self, target: Target, work: Path, clients: int, duration: float,
                 sftp_bytes: int, op_timeout: float):
        self.t = target
        self.work = work
        self.clients = clients
        self.duration = duration
        self.sftp_bytes = sftp_bytes
        self.op_timeout = op_timeout
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.errors: list[dict] = []
        self.latencies: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        self.digests: dict[int, str] = {}
        self.t0 = 0.0
        self.deadline = 0.0

    def prepare(self) -> None:
        for c in range(self.clients):
            data = os.urandom(self.sftp_bytes)
            (self.work / f"sftp-{c}").write_bytes(data)
            self.digests[c] = hashlib.sha256(data).hexdigest()

    def run_op(self, op: str, client: int, n: int) -> None:
        getattr(self, f"op_{op}")(client, n)

    def op_exec(self, client: int, n: int) -> None:
        if n % 4 < 2:
            command, expected = "true", ""
        else:
            command, expected = f"echo soak-{client}-{n}; uname -s", f"soak-{client}-{n}\nLinux\n"
        r = subprocess.run(self.t.ssh(command), capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=self.op_timeout)
        if r.returncode != 0:
            raise OpError(f"`{command}` exit {r.returncode}: {tail(r.stderr)!r}")
        if r.stdout.decode(errors="replace") != expected:
            raise OpError(f"`{command}` printed {tail(r.stdout, 200)!r}, expected {expected!r};"
                          f" stderr {tail(r.stderr)!r}")

    def op_sftp(self, client: int, n: int) -> None:
        src = self.work / f"sftp-{client}"
        back = self.work / f"sftp-{client}-back"
        remote = f"soak-{client}-{n}"
        batch = self.work / f"sftp-{client}.batch"
        batch.write_text(f"put {src} {remote}\nget {remote} {back}\nrm {remote}\n")
        back.unlink(missing_ok=True)
        r = subprocess.run(self.t.sftp(batch), capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=self.op_timeout)
        if r.returncode != 0:
            raise OpError(f"sftp put/get/rm exit {r.returncode}: {tail(r.stderr)!r}")
        try:
            got = hashlib.sha256(back.read_bytes()).hexdigest()
        except OSError as e:
            raise OpError(f"sftp download missing: {e}") from e
        if got != self.digests[client]:
            raise OpError(f"sftp checksum mismatch: {back.stat().st_size} bytes back of {self.sftp_bytes}")
        back.unlink()

    def op_pty(self, client: int, n: int) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        proc = subprocess.Popen(self.t.ssh(tty=True), stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True)
        os.close(slave)
        buf = bytearray()
        deadline = time.monotonic() + self.op_timeout

        def read_until(done, what: str) -> bool:
            """Read until done(buf); False at EOF."""
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OpError(f"pty: timed out waiting for {what}; last output {tail(bytes(buf), 200)!r}")
                if select.select([master], [], [], min(left, 1.0))[0]:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError as e:
                        if e.errno != errno.EIO:
                            raise
                        chunk = b""
                    if not chunk:
                        return False
                    buf.extend(chunk)
            return True

        try:
            if not read_until(lambda: len(buf) > 0, "the shell's first output"):
                raise OpError(f"pty: closed before any output; exit {proc.wait(5)}")
            for i in range(self.PTY_LINES):
                mark = f"-{client}-{n}-{i}"
                # The echo of what is typed shows $((6*7)); only the shell's answer has 42.
                os.write(master, f"echo pty-$((6*7)){mark}\r".encode())
                want = f"pty-42{mark}".encode()
                if not read_until(lambda: want in buf, want.decode()):
                    raise OpError(f"pty: closed before {want.decode()}; last output {tail(bytes(buf), 200)!r}")
            os.write(master, b"exit\r")
            read_until(lambda: False, "the end after exit")
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if code != 0:
                raise OpError(f"pty: ssh exit {code} after exit; last output {tail(bytes(buf), 200)!r}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)

    def worker(self, client: int) -> None:
        time.sleep(client / self.clients)  # the first logins spread over a second
        n = 0
        # Bounded in time (the deadline, each operation's timeout) and count.
        while time.monotonic() < self.deadline and n < 1_000_000:
            op = self.CYCLE[(client + n) % len(self.CYCLE)]
            start = time.monotonic()
            error = None
            try:
                self.run_op(op, client, n)
            except OpError as e:
                error = str(e)
            except subprocess.TimeoutExpired as e:
                error = f"{op}: timed out after {e.timeout:.0f} s; stderr {tail(e.stderr)!r}"
            except Exception as e:  # noqa: BLE001 (recorded, never hidden)
                error = f"{op}: {type(e).__name__}: {e}"
            end = time.monotonic()
            with self.lock:
                self.counts[op] += 1
                if error is None:
                    self.latencies[op].append((start - self.t0, end - start))
                else:
                    self.errors.append({"t_s": round(start - self.t0, 1), "op": op, "client": client,
                                        "n": n, "seconds": round(end - start, 2), "error": error})
                    print(f"ERROR t={start - self.t0:.1f}s client {client} {op}: {error}", flush=True)
            n += 1

    def ops_done(self) -> tuple[int, int]:
        with self.lock:
            return sum(self.counts.values()), len(self.errors)

    def run(self, server_pid: int, interval: float, log: Path) -> dict:
        self.prepare()
        # One login first: it writes the host key to known_hosts, which 100
        # clients at once would race to do.
        subprocess.run(self.t.ssh("true"), check=True, timeout=60)
        time.sleep(2)
        start_sample = {"t_s": 0.0, **server_sample(server_pid), "ops": 0, "errors": 0}
        start_sandboxes = sandbox_processes(SOAK_IDS)
        samples = [start_sample]
        self.log_start = log.stat().st_size  # the load's lines only
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.duration
        threads = [threading.Thread(target=self.worker, args=(c,), daemon=True) for c in range(self.clients)]
        for th in threads:
            th.start()
        last_print = 0.0
        while any(th.is_alive() for th in threads):
            now = time.monotonic()
            if now > self.deadline + self.op_timeout + 60:
                print("clients still running past the deadline and the timeouts: giving up on them",
                      file=sys.stderr, flush=True)
                break
            time.sleep(interval)
            ops, errors = self.ops_done()
            s = {"t_s": round(time.monotonic() - self.t0, 1), **server_sample(server_pid),
                 "ops": ops, "errors": errors}
            samples.append(s)
            if s["t_s"] - last_print >= 30:
                last_print = s["t_s"]
                print(f"t={s['t_s']:.0f}s ops={ops} errors={errors} rss={s['rss_kib']} KiB fds={s['fds']} "
                      f"threads={s['threads']} sandbox_procs={s['sandbox_processes']}", flush=True)
        load_end = time.monotonic() - self.t0
        # Settle: connections close, sandboxes' programs end. Bounded.
        settle_start = time.monotonic()
        while time.monotonic() - settle_start < 30:
            s = server_sample(server_pid)
            if s["sandbox_processes"] <= start_sample["sandbox_processes"] and s["fds"] <= start_sample["fds"]:
                break
            time.sleep(1)
        settled_after = time.monotonic() - settle_start
        ops, errors = self.ops_done()
        end_sample = {"t_s": round(time.monotonic() - self.t0, 1), **server_sample(server_pid),
                      "ops": ops, "errors": errors}
        end_sandboxes = sandbox_processes(SOAK_IDS)
        return self.report(samples, start_sample, end_sample, load_end, settled_after,
                           start_sandboxes, end_sandboxes)

    def report(self, samples, start, end, load_end, settled_after, start_sandboxes, end_sandboxes) -> dict:
        load = [s for s in samples if s["t_s"] <= load_end]
        half = [s for s in load if s["t_s"] >= load_end / 2]

        def series(key: str) -> dict:
            return {"start": start[key], "peak": max(s[key] for s in samples + [end]), "end": end[key],
                    "slope_per_min": slope_per_min([(s["t_s"], s[key]) for s in load]),
                    "slope_per_min_second_half": slope_per_min([(s["t_s"], s[key]) for s in half])}

        ops = {}
        with self.lock:
            for op in self.CYCLE:
                if op in ops:
                    continue
                lat = self.latencies[op]
                secs = [d for _, d in lat]
                early = [d for t, d in lat if t < 60]
                late = [d for t, d in lat if t >= self.duration - 60]
                ops[op] = {
                    "count": self.counts[op],
                    "errors": sum(1 for e in self.errors if e["op"] == op),
                    "p50_ms": statistics.median(secs) * 1000 if secs else None,
                    "p95_ms": percentile(secs, 95) * 1000 if secs else None,
                    "max_ms": max(secs) * 1000 if secs else None,
                    "p50_ms_first_minute": statistics.median(early) * 1000 if early else None,
                    "p50_ms_last_minute": statistics.median(late) * 1000 if late else None,
                }
            errors = list(self.errors)
        leftover = [p for p in end_sandboxes if p["pid"] not in {q["pid"] for q in start_sandboxes}]
        return {
            "clients": self.clients, "duration_s": self.duration, "load_seconds": load_end,
            "sftp_bytes": self.sftp_bytes, "op_timeout_s": self.op_timeout, "cycle": list(self.CYCLE),
            "pty_lines": self.PTY_LINES,
            "operations": sum(o["count"] for o in ops.values()), "errors": len(errors), "by_op": ops,
            "error_list": errors,
            "error_texts": dict(collections.Counter(re.sub(r"\d+", "N", e["error"]) for e in errors)),
            "server": {k: series(k) for k in ("rss_kib", "fds", "threads", "descendants")},
            "sandbox": {k: series(k) for k in ("sandbox_processes", "sandbox_rss_kib")},
            "zombies_peak": max(s["zombies"] for s in samples + [end]),
            "settled_after_s": settled_after,
            "sandbox_processes_new_at_end": leftover[:50],
            "start_sample": start, "end_sample": end,
            "samples": samples,
        }


def run_soak(args, work: Path, key: Path) -> dict:
    log = work / "blink-soak.log"
    server, blink, _ = start_blink(work / "soak", key, Path(args.bin_dir), limits=BLINK_BENCH_LIMITS,
                                   sandbox=f"id_base = {SOAK_ID_BASE}", log=log)
    try:
        soak = Soak(blink, work / "soak", args.clients, args.duration, args.sftp_mib * 2**20, args.op_timeout)
        result = soak.run(server.pid, args.sample_interval, log)
    finally:
        stop(server)
    result["sandbox_id_base"] = SOAK_ID_BASE
    result["admission"] = "bench (sshd-equal): " + BLINK_BENCH_LIMITS.replace("\n", "; ").strip("; ")
    result["server_log"] = log_summary(log, soak.log_start)
    if args.keep_logs:
        shutil.copy(log, Path(args.out) / "soak-server.log")
    return result


# --- logins under a flood of silent connections ----------------------------

class Flood:
    """`count` TCP connections to 127.0.0.1:`port` that never send a byte,
    spread round robin over `sources` (local addresses). With `refill`, one
    the server closes is opened again `retry` seconds later (an attacker
    keeping up the pressure); without, it stays closed."""

    def __init__(self, port: int, count: int, sources: list[str], refill: bool, retry: float = 1.0):
        self.port = port
        self.count = count
        self.sources = sources
        self.refill = refill
        self.retry = retry
        self.sel = selectors.DefaultSelector()
        self.open: dict[socket.socket, dict] = {}
        self.pending: list[tuple[float, int]] = []  # (when, slot) to (re)open
        self.stats = {"opened": 0, "connect_failed": 0, "closed_by_server": 0,
                      "first_line": collections.Counter(), "lifetimes_s": []}
        self.held_samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def held(self) -> int:
        """Connections open and not (yet) closed by the server."""
        return len(self.open)

    def start(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.pending = [(0.0, slot) for slot in range(self.count)]
        self.thread.start()

    def connect(self, slot: int) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((self.sources[slot % len(self.sources)], 0))
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            self.stats["connect_failed"] += 1
            s.close()
            return
        self.stats["opened"] += 1
        self.open[s] = {"slot": slot, "opened": time.monotonic(), "data": b""}
        self.sel.register(s, selectors.EVENT_READ)

    def closed(self, s: socket.socket, now: float) -> None:
        info = self.open.pop(s)
        self.sel.unregister(s)
        s.close()
        self.stats["closed_by_server"] += 1
        self.stats["lifetimes_s"].append(now - info["opened"])
        first = info["data"].split(b"\n", 1)[0].decode(errors="replace").strip()
        self.stats["first_line"][first[:100] or "(nothing)"] += 1
        if self.refill:
            self.pending.append((now + self.retry, info["slot"]))

    def loop(self) -> None:
        start = time.monotonic()
        last_sample = 0.0
        while not self.stopping.is_set() and time.monotonic() - start < self.max_seconds:
            now = time.monotonic()
            due = [p for p in self.pending if p[0] <= now]
            self.pending = [p for p in self.pending if p[0] > now]
            for _, slot in due:
                self.connect(slot)
            for k, _ in self.sel.select(timeout=0.05):
                s = k.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data:
                    if len(self.open[s]["data"]) < 256:
                        self.open[s]["data"] += data
                else:
                    self.closed(s, time.monotonic())
            if now - last_sample >= 0.5:
                last_sample = now
                self.held_samples.append((round(now - start, 2), self.held()))
        for s in list(self.open):
            self.sel.unregister(s)
            s.close()
        self.open.clear()

    def stop(self) -> dict:
        self.stopping.set()
        self.thread.join(timeout=10)
        lifetimes = self.stats["lifetimes_s"]
        return {"opened": self.stats["opened"], "connect_failed": self.stats["connect_failed"],
                "closed_by_server": self.stats["closed_by_server"],
                "server_closed_first_line": dict(self.stats["first_line"]),
                "closed_lifetime_s_median": statistics.median(lifetimes) if lifetimes else None,
                "closed_lifetime_s_max": max(lifetimes) if lifetimes else None}


def logins(t: Target, count: int, spacing: float, timeout: float, flood: Flood | None) -> dict:
    """`count` `ssh host true` from 127.0.0.1, one at a time, one started every
    `spacing` seconds at most."""
    ok: list[float] = []
    failures: collections.Counter = collections.Counter()
    failure_ms: list[float] = []
    held: list[int] = []
    begin = time.monotonic()
    for i in range(count):
        next_start = begin + i * spacing
        time.sleep(max(0.0, next_start - time.monotonic()))
        if flood:
            held.append(flood.held())
        start = time.perf_counter()
        try:
            r = subprocess.run(t.ssh("true"), capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
            code, err = r.returncode, tail(r.stderr, 200)
        except subprocess.TimeoutExpired as e:
            code, err = -1, f"timed out after {timeout:.0f} s; {tail(e.stderr, 200)}"
        secs = time.perf_counter() - start
        if code == 0:
            ok.append(secs)
        else:
            failures[f"exit {code}: {err}"] += 1
            failure_ms.append(secs * 1000)
    return {
        "logins": count, "succeeded": len(ok),
        "p50_ms": statistics.median(ok) * 1000 if ok else None,
        "p95_ms": percentile(ok, 95) * 1000 if ok else None,
        "max_ms": max(ok) * 1000 if ok else None,
        "failures": dict(failures),
        "failure_ms_median": statistics.median(failure_ms) if failure_ms else None,
        "seconds": time.monotonic() - begin,
        "flood_held_at_login_start": ({"min": min(held), "median": statistics.median(held), "max": max(held)}
                                      if held else None),
    }


def count_admission_log(log: Path, kind: str) -> dict:
    """What a server logged about refusing or closing connections before
    authentication, over its whole run. Blink logs up to 20 refusals a
    second one line each and counts the rest in a line logged before the
    next refusal (so a flood's last second shows only if something else is
    refused later); sshd logs the connections it dropped when a spell of
    MaxStartups throttling ends."""
    counts: collections.Counter = collections.Counter()
    with open(log, errors="replace") as f:
        for raw in f:
            line = ANSI.sub("", raw)
            if kind == "blink":
                if "refused without a line each" in line:
                    for reason, n in re.findall(r"(\w+)=(\d+)", line.split("by_reason=", 1)[-1]):
                        counts[f"refused {reason}"] += int(n)
                elif "ssh connection refused" in line:
                    m = re.search(r'reason="?(\w+)', line)
                    counts[f"refused {m.group(1) if m else '?'}"] += 1
                elif "ssh source penalized" in line:
                    counts["source penalized"] += 1
                elif "version exchange timed out" in line or "login grace time exceeded" in line:
                    counts["closed: " + (field(line, "error") or "?")] += 1
            else:
                # "drop connection #N ... past MaxStartups" is logged once
                # per throttling spell; its end gives the count.
                m = re.search(r"exited MaxStartups throttling after \S+, (\d+) connections dropped", line)
                if m:
                    counts["dropped (MaxStartups)"] += int(m.group(1))
                elif "Timeout before authentication" in line:
                    counts["timeout before authentication"] += 1
    return dict(counts)


def run_preauth(args, work: Path, key: Path) -> dict:
    """Both servers with their own default admission: Blink without any
    [ssh.limits], sshd without MaxStartups (10:30:100)."""
    blink_log, sshd_log = work / "blink-preauth.log", work / "sshd-preauth.log"
    server, blink, _ = start_blink(work / "preauth-blink", key, Path(args.bin_dir), limits=None, log=blink_log)
    sshd, ref = start_sshd(work / "preauth-sshd", key, admission=None, log=sshd_log)
    # Silent connections from 127.0.0.2.. (--silent-sources of them, round
    # robin), real logins from 127.0.0.1: Blink's per-source cap (10 by
    # default) neither refuses the flood nor shields the logins, only the
    # total (max_startups) is in play, as for sshd 9.2, which has no
    # per-source limit by default.
    sources = [f"127.0.0.{2 + i}" for i in range(args.silent_sources)]
    result = {"silent": args.silent, "silent_sources": f"127.0.0.2-127.0.0.{1 + args.silent_sources}",
              "logins_from": "127.0.0.1", "logins": args.logins, "spacing_s": args.login_spacing,
              "blink_admission": "defaults (no [ssh.limits])", "sshd_admission": "defaults (no MaxStartups)",
              "rows": []}
    try:
        for t, log, kind in ((blink, blink_log, "blink"), (ref, sshd_log, "openssh")):
            subprocess.run(t.ssh("true"), check=True, timeout=60, capture_output=True)  # known_hosts
            for mode in ("none", "hold", "refill"):
                flood = None
                if mode != "none":
                    flood = Flood(t.port, args.silent, sources, refill=(mode == "refill"))
                    flood.start(max_seconds=args.logins * args.login_spacing + 120)
                    time.sleep(args.flood_settle)
                held_before = flood.held() if flood else 0
                row = logins(t, args.logins, args.login_spacing, 60, flood)
                row.update({"target": t.name, "flood": mode, "flood_held_before_logins": held_before})
                if flood:
                    row["flood_stats"] = flood.stop()
                # Let the server see the flood's closes, and Blink's penalties
                # for them (1 s per connection, at most 5 per source) run out.
                time.sleep(args.flood_pause if flood else 1)
                result["rows"].append(row)
                print(f"{t.name} flood={mode}: {row['succeeded']}/{row['logins']} ok, p50 "
                      f"{row['p50_ms']} ms, p95 {row['p95_ms']} ms, held {row['flood_held_at_login_start']}, "
                      f"failures {row['failures']}", flush=True)
    finally:
        stop(server)
        stop(sshd)
    result["server_logs"] = {"blink": count_admission_log(blink_log, "blink"),
                             "openssh": count_admission_log(sshd_log, "openssh")}
    if args.keep_logs:
        shutil.copy(blink_log, Path(args.out) / "preauth-blink.log")
        shutil.copy(sshd_log, Path(args.out) / "preauth-sshd.log")
    return result


# --- output ----------------------------------------------------------------

def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [SOAK_BEGIN, "", "## Soak and logins under a silent flood (bench/soak.py)", "",
             f"Machine: {m['cpu']} ({m['cores']} cores, Linux {m['kernel']}), {m['openssh']}. "
             "Figures from bench/soak.json; findings in bench/NOTES.md.", ""]
    s = results.get("soak")
    if s:
        lines += [f"### Soak: {s['clients']} clients for {s['duration_s']:.0f} s ({s['date']})", "",
                  f"Each client loops over exec, sftp, exec, PTY, each a new SSH connection to one session "
                  f"(default busybox image, admission {s['admission']}): exec `true` or "
                  f"`echo …; uname -s` (output checked), sftp put+get+rm of {s['sftp_bytes'] >> 20} MiB "
                  f"(sha256 checked), `ssh -tt` typing {s['pty_lines']} lines and `exit`. "
                  f"Nothing is retried.", "",
                  f"**{s['operations']} operations, {s['errors']} errors** "
                  f"({s['operations'] / s['load_seconds']:.1f} operations/s; per minute: "
                  f"{', '.join(map(str, ops_per_minute(s['samples'], s['load_seconds']))) or '-'}).", "",
                  "| operation | count | errors | p50 ms | p95 ms | max ms | p50 first minute | p50 last minute |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for op, o in s["by_op"].items():
            lines.append(f"| {op} | {o['count']} | {o['errors']} | {fmt(o['p50_ms'])} | {fmt(o['p95_ms'])} | "
                         f"{fmt(o['max_ms'])} | {fmt(o['p50_ms_first_minute'])} | {fmt(o['p50_ms_last_minute'])} |")
        lines += ["", f"Sampled every {s['sample_interval_s']:.0f} s ({len(s['samples'])} samples); start is "
                  "before the first client, end after the last one finished and the server settled "
                  f"({s['settled_after_s']:.0f} s); slopes are least squares over the load.", "",
                  "| | start | peak | end | slope /min (load) | slope /min (second half) |",
                  "|---|---:|---:|---:|---:|---:|"]
        rows = [("blink-server RSS (KiB)", s["server"]["rss_kib"]), ("blink-server open fds", s["server"]["fds"]),
                ("blink-server threads", s["server"]["threads"]),
                ("blink-server's process tree (processes)", s["server"]["descendants"]),
                ("sandbox processes", s["sandbox"]["sandbox_processes"]),
                ("sandbox processes' RSS (KiB)", s["sandbox"]["sandbox_rss_kib"])]
        for name, v in rows:
            lines.append(f"| {name} | {v['start']} | {v['peak']} | {v['end']} | {v['slope_per_min']:.1f} | "
                         f"{v['slope_per_min_second_half']:.1f} |")
        g = s["server_log"]
        lines += ["", f"Zombies in the tree: at most {s['zombies_peak']} in a sample (exited, not yet reaped), "
                  f"{s['end_sample']['zombies']} at the end. blink-server's log from the first "
                  f"client on: {g['lines']} lines, by level {g['levels']}; WARN/ERROR messages: "
                  f"{g['warn_error_messages'] or 'none'}; connections and channels that ended with an error, "
                  f"a signal or a non-zero exit: {g['ended_badly'] or 'none'}."]
        if s["errors"]:
            lines += ["", "Errors (text with digits as N: count):", ""]
            lines += [f"- `{text}`: {n}" for text, n in s["error_texts"].items()]
        lines.append("")
    p = results.get("preauth")
    if p:
        lines += [f"### Logins under {p['silent']} silent pre-auth connections ({p['date']})", "",
                  f"{p['silent']} TCP connections that never send a byte, from {p['silent_sources']} "
                  f"(round robin), while {p['logins']} logins (`ssh host true`, connect+auth+exec) run one "
                  f"at a time from {p['logins_from']}, one started every {p['spacing_s']} s at most. "
                  f"Blink: {p['blink_admission']}; sshd: {p['sshd_admission']}. "
                  "Flood `hold`: the 200 are opened once, those the server closes stay closed; "
                  "`refill`: each closed one is opened again 1 s later. Latencies are of the successful logins.",
                  "",
                  "| server | flood | ok | p50 ms | p95 ms | max ms | silent held (median at login) | "
                  "failed logins | silent ones closed by the server (line sent) |",
                  "|---|---|---:|---:|---:|---:|---:|---|---|"]
        for r in p["rows"]:
            held = r["flood_held_at_login_start"]
            fails = "; ".join(f"{n}× `{t}`" for t, n in r["failures"].items()) or "-"
            fs = r.get("flood_stats")
            closed = (f"{fs['closed_by_server']} of {fs['opened']} opened (" + "; ".join(
                f"{n}× `{t}`" for t, n in fs["server_closed_first_line"].items()) + ")") if fs else "-"
            lines.append(f"| {r['target']} | {r['flood']} | {r['succeeded']}/{r['logins']} | {fmt(r['p50_ms'])} | "
                         f"{fmt(r['p95_ms'])} | {fmt(r['max_ms'])} | {fmt(held['median'] if held else None)} | "
                         f"{fails} | {closed} |")
        if p.get("server_logs"):
            lines += ["", "The servers' logs over the whole benchmark: " + "; ".join(
                f"{who}: " + (", ".join(f"{k} {v}" for k, v in c.items()) or "nothing") for who, c in
                p["server_logs"].items()) + "."]
        lines.append("")
    lines.append(SOAK_END)
    return "\n".join(lines)


def write_results_section(path: Path, block: str) -> None:
    """Put the soak section into RESULTS.md (written by bench.py), after its
    tables and before the findings, which are refreshed from NOTES.md;
    bench/disks.py's section is kept."""
    write_section(path, SOAK_BEGIN, block)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("soak", "preauth"), help="run one of the two (default: both)")
    parser.add_argument("--quick", action="store_true",
                        help="check the harness: 30 s, 10 clients, 10 logins (flags given still win)")
    parser.add_argument("--duration", type=float, help="soak seconds (default 600; quick 30)")
    parser.add_argument("--clients", type=int, help="soak clients (default 100; quick 10)")
    parser.add_argument("--sftp-mib", type=int, default=4, help="sftp file per transfer (MiB)")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--op-timeout", type=float, default=120.0, help="seconds one operation may take")
    parser.add_argument("--silent", type=int, default=200, help="silent pre-auth connections")
    parser.add_argument("--silent-sources", type=int, default=40,
                        help="loopback addresses the silent connections come from (127.0.0.2 on)")
    parser.add_argument("--logins", type=int, help="real logins per row (default 50; quick 10)")
    parser.add_argument("--login-spacing", type=float, default=0.4, help="seconds between login starts")
    parser.add_argument("--flood-settle", type=float, default=2.0, help="seconds from flood to first login")
    parser.add_argument("--flood-pause", type=float, default=10.0, help="seconds between flooded rows")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    parser.add_argument("--keep-logs", action="store_true", help="copy the servers' logs to --out")
    args = parser.parse_args()
    args.duration = args.duration or (30.0 if args.quick else 600.0)
    args.clients = args.clients or (10 if args.quick else 100)
    args.logins = args.logins or (10 if args.quick else 50)
    if not 1 <= args.silent_sources <= 250:
        parser.error("--silent-sources: 1 to 250 (127.0.0.2-127.0.0.251)")
    os.environ["NO_COLOR"] = "1"  # plain server logs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "soak.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    results["machine"] = machine()
    work = Path(tempfile.mkdtemp(prefix="blink-soak-"))
    work.chmod(0o711)  # sandboxes run as an unprivileged uid that must reach the data dir
    key = work / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    now = lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    try:
        if args.only in (None, "soak"):
            date = now()
            print(f"soak: {args.clients} clients, {args.duration:.0f} s", flush=True)
            results["soak"] = {"date": date, "quick": args.quick, "sample_interval_s": args.sample_interval,
                               **run_soak(args, work, key)}
            s = results["soak"]
            print(f"soak: {s['operations']} operations, {s['errors']} errors; rss {s['server']['rss_kib']}; "
                  f"fds {s['server']['fds']}; sandbox processes {s['sandbox']['sandbox_processes']}", flush=True)
        if args.only in (None, "preauth"):
            date = now()
            print(f"preauth: {args.silent} silent connections, {args.logins} logins per row", flush=True)
            results["preauth"] = {"date": date, "quick": args.quick, **run_preauth(args, work, key)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    write_results_section(out / "RESULTS.md", markdown(results))
    print(f"wrote {json_path} and the soak section of {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
