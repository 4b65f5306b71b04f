#!/usr/bin/env python3
"""Cluster benchmark (docs/SCALE.md): the added cost of the router hop
(connect+exec and exec throughput through a router against straight to the
node), the placement rate (sessions created per second through a router
across 3 nodes), and the time from a node's death to its cold sessions
answering again (restored on another node from their last export).
Loopback only: a 3-member etcd, 3 nodes and a router on 127.0.0.1,
started here.

    python3 bench/router.py [--quick] [--bin-dir target/release]

Writes bench/router.json and its section of bench/RESULTS.md.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Target, free_port, percentile, timed  # noqa: E402
from bench import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BEGIN, END = "<!-- router:begin -->", "<!-- router:end -->"
TTL = 3


def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            text = resp.read()
            return resp.status, (json.loads(text) if text else {})
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, (json.loads(text) if text else {})


def ok(port: int, method: str, path: str, body: dict | None = None) -> dict:
    status, answer = call(port, method, path, body)
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {answer}")
    return answer


def start_etcd(work: Path, n: int = 3) -> tuple[list[subprocess.Popen], list[str]]:
    ports = [(free_port(), free_port()) for _ in range(n)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    procs = []
    for i, (client, peer) in enumerate(ports):
        log = open(work / f"etcd{i}.log", "wb")
        procs.append(subprocess.Popen([
            "etcd", "--name", f"m{i}", "--data-dir", str(work / f"etcd{i}"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ], stdout=subprocess.DEVNULL, stderr=log))
    endpoints = [f"http://127.0.0.1:{c}" for c, _ in ports]
    deadline = time.monotonic() + 30
    while subprocess.run(["etcdctl", f"--endpoints={','.join(endpoints)}", "endpoint", "health"],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("etcd never became healthy")
        time.sleep(0.1)
    return procs, endpoints


def start_server(bin_dir: Path, work: Path, name: str, config: str, *extra: str) -> tuple[subprocess.Popen, int, int]:
    data = work / name
    data.mkdir()
    (data / "blink.toml").write_text(config)
    http_port, ssh_port = free_port(), free_port()
    proc = subprocess.Popen([
        str(bin_dir / "blink-server"), "--data-dir", str(data), "--config", str(data / "blink.toml"),
        "--ssh-listen", f"127.0.0.1:{ssh_port}", "--http-listen", f"127.0.0.1:{http_port}", *extra,
    ], stdout=subprocess.PIPE, stderr=open(work / f"{name}.log", "wb"), text=True)
    want = "router ready" if "router" in extra else None
    seen = set()
    for line in proc.stdout:
        seen.add(line.split(" on ")[0].strip())
        if (want and line.strip() == want) or (not want and {"http listening", "ssh listening"} <= seen):
            break
    return proc, http_port, ssh_port


TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle (every core)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def process_cpu(pid: int) -> float:
    """CPU seconds a process has used itself (user + system)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu() -> float:
    """CPU seconds of this script's finished children (ssh, head)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU spent during one transfer: the whole machine, the router, the
    node and the client side (ssh and its producer). Tells a CPU-bound run
    from one that waits: on a machine this size the hop's decryption and
    encryption compete with the client, the node and the sandbox."""

    def __init__(self, router_pid: int, node_pid: int):
        self.pids = (router_pid, node_pid)

    def snapshot(self) -> tuple[float, ...]:
        return (time.perf_counter(), machine_busy(), *map(process_cpu, self.pids), children_cpu())

    @staticmethod
    def spent(before: tuple[float, ...], after: tuple[float, ...]) -> dict:
        wall, machine, router, node, client = (b - a for a, b in zip(before, after))
        return {"wall_s": wall, "machine_cpu_s": machine, "router_cpu_s": router,
                "node_cpu_s": node, "client_cpu_s": client}


def cpu_summary(spent: list[dict], size: int) -> dict:
    """Medians over a transfer's rounds: core-seconds per GiB moved and
    the cores busy while it ran (the whole machine: others' work counts)."""
    gib = size / 2**30
    return {
        "machine_cpu_s_per_gib": statistics.median(s["machine_cpu_s"] for s in spent) / gib,
        "router_cpu_s_per_gib": statistics.median(s["router_cpu_s"] for s in spent) / gib,
        "node_cpu_s_per_gib": statistics.median(s["node_cpu_s"] for s in spent) / gib,
        "client_cpu_s_per_gib": statistics.median(s["client_cpu_s"] for s in spent) / gib,
        "cores_busy": statistics.median(s["machine_cpu_s"] / s["wall_s"] for s in spent),
    }


def pin_all(pid: int, cores: str) -> None:
    """Every thread of `pid` (and what it starts from now) on `cores`."""
    subprocess.run(["taskset", "-a", "-p", "-c", cores, str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


def measure_hop(via: Target, direct: Target, meter: "CpuMeter", runs: int, size: int,
                rounds: int, pin: list[str] | None = None) -> dict:
    """Connect+exec and exec throughput both ways, through the router and
    straight at the node; client commands run under `pin` (a taskset)."""
    pin = pin or []
    hop: dict = {}
    for t in (via, direct):
        times = [timed([*pin, *t.ssh("true")], stdout=subprocess.DEVNULL) for _ in range(runs)]
        hop[t.name] = {
            "connect_exec_median_ms": statistics.median(times) * 1000,
            "connect_exec_p95_ms": percentile(times, 95) * 1000,
        }
    # Throughput rounds alternate between the two ways in, so a
    # neighbour's load falls on both alike.
    spent: dict = {(t.name, way): [] for t in (via, direct) for way in ("stdout", "stdin")}
    for _ in range(rounds):
        for t in (via, direct):
            before = meter.snapshot()
            subprocess.run([*pin, *t.ssh(f"dd if=/dev/zero bs=1M count={size >> 20} 2>/dev/null")],
                           stdout=subprocess.DEVNULL, check=True)
            spent[t.name, "stdout"].append(CpuMeter.spent(before, meter.snapshot()))
    for _ in range(rounds):
        for t in (via, direct):
            before = meter.snapshot()
            producer = subprocess.Popen([*pin, "head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
            subprocess.run([*pin, *t.ssh("dd of=/dev/null bs=1M 2>/dev/null")], stdin=producer.stdout,
                           check=True)
            producer.wait()
            spent[t.name, "stdin"].append(CpuMeter.spent(before, meter.snapshot()))
    for (name, way), rounds_spent in spent.items():
        hop[name][f"{way}_mib_s"] = size / statistics.median(s["wall_s"] for s in rounds_spent) / 2**20
        hop[name][f"{way}_cpu"] = cpu_summary(rounds_spent, size)
    return hop


def login_costs(log: Path, since: int) -> dict:
    """Medians of what the router's logins spent on the route and on the
    link to the node (its log's `route_us`, `link_us`), from byte `since`."""
    route, link = [], []
    with open(log, "rb") as f:
        f.seek(since)
        for line in f.read().decode(errors="replace").splitlines():
            if "router ssh login relayed" not in line:
                continue
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            r, k = re.search(r"route_us=(\d+)", line), re.search(r"link_us=(\d+)", line)
            if r and k:
                route.append(int(r.group(1)) / 1000)
                link.append(int(k.group(1)) / 1000)
    if not route:
        return {}
    return {"logins": len(route), "route_median_ms": statistics.median(route),
            "link_median_ms": statistics.median(link), "link_p95_ms": percentile(link, 95)}


def own_core_rows(results: dict) -> list[str]:
    """The table rows of the router on a core of its own, if measured."""
    own = results.get("hop_router_own_core")
    if not own:
        return []
    r, d = own["router"], own["node"]
    return [
        f"| connect + exec, router on a core of its own | {r['connect_exec_median_ms']:.1f} ms "
        f"| {d['connect_exec_median_ms']:.1f} ms | {r['connect_exec_median_ms'] - d['connect_exec_median_ms']:+.1f} ms "
        f"| <= 5 ms added |",
        *[f"| exec {way}, router on a core of its own | {r[way + '_mib_s']:.0f} MiB/s | {d[way + '_mib_s']:.0f} MiB/s "
          f"| {r[way + '_mib_s'] / d[way + '_mib_s']:.2f} | >= 0.9 |" for way in ("stdout", "stdin")],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    args = parser.parse_args()
    bin_dir = Path(args.bin_dir)
    runs = 10 if args.quick else 40
    size = (64 if args.quick else 512) << 20
    placements = 12 if args.quick else 60
    rounds = 1 if args.quick else 3

    work = Path(tempfile.mkdtemp(prefix="blink-router-bench-"))
    work.chmod(0o711)
    procs: list[subprocess.Popen] = []
    results: dict = {"quick": args.quick}
    try:
        etcd, endpoints = start_etcd(work)
        procs += etcd
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "router_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "user")], check=True)
        (work / "exports").mkdir()
        eps = json.dumps(endpoints)
        base = (f"[images]\npull = \"never\"\n[sandbox]\nephemeral_pool = 0\n"
                f"[ssh.limits]\npenalty_exempt = [\"127.0.0.1\"]\nper_source_max_startups = 64\n"
                f"max_startups = \"64:30:128\"\n")
        nodes = []
        for i in range(3):
            cfg = (base + f"[cluster]\netcd_endpoints = {eps}\nnode_name = \"node-{i}\"\n"
                   f"lease_ttl_secs = {TTL}\nrouter_keys = \"{work / 'router_key.pub'}\"\n"
                   f"[cluster.capacity]\nsessions = 1000\n")
            proc, http_port, ssh_port = start_server(bin_dir, work, f"node-{i}", cfg)
            procs.append(proc)
            nodes.append((proc, http_port, ssh_port))
        cfg = (base + f"[cluster]\netcd_endpoints = {eps}\nlease_ttl_secs = {TTL}\n"
               f"router_key = \"{work / 'router_key'}\"\nexport_dir = \"{work / 'exports'}\"\n")
        router, r_http, r_ssh = start_server(bin_dir, work, "router", cfg, "--role", "router")
        procs.append(router)
        user_key = (work / "user.pub").read_text().strip()

        # The router hop: one session, reached through the router and
        # straight at its node, with the same client and key.
        ok(r_http, "POST", "/api/sessions", {"name": "hop"})
        ok(r_http, "POST", "/api/sessions/hop/keys", {"key": user_key})
        node_name = ok(r_http, "GET", "/api/sessions")["sessions"][0]["node"]
        node_ssh = nodes[int(node_name.split("-")[1])][2]
        known = work / "known_hosts"
        via = Target("router", r_ssh, "hop", work / "user", known)
        direct = Target("node", node_ssh, "hop", work / "user", known)
        for t in (via, direct):
            subprocess.run(t.ssh("true"), check=True)
        meter = CpuMeter(router.pid, nodes[int(node_name.split("-")[1])][0].pid)
        router_log = work / "router.log"
        since = router_log.stat().st_size
        hop = measure_hop(via, direct, meter, runs, size, rounds)
        results["hop_login"] = login_costs(router_log, since)
        results["cores"] = os.cpu_count()
        results["hop"] = hop
        # As deployed, a router has a host of its own: here a core of its
        # own, everything else (client, nodes, sandboxes, etcd) on the
        # other. Straight to the node, the same one core does the work.
        if (os.cpu_count() or 1) >= 2:
            others = [p.pid for p in procs if p is not router]
            pin_all(router.pid, "1")
            for pid in others:
                pin_all(pid, "0")
            hop_own = measure_hop(via, direct, meter, runs, size, rounds, ["taskset", "-c", "0"])
            every = f"0-{(os.cpu_count() or 1) - 1}"
            for pid in [router.pid, *others]:
                pin_all(pid, every)
            results["hop_router_own_core"] = hop_own

        # Placement: sessions created through the router, 4 at a time.
        def create(i: int) -> None:
            ok(r_http, "POST", "/api/sessions", {"name": f"p{i}"})
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, range(placements)))
        secs = time.perf_counter() - start
        spread = {n["name"]: n["sessions"] for n in ok(r_http, "GET", "/api/cluster/nodes")["nodes"]}
        results["placement"] = {"sessions": placements, "seconds": secs,
                                "per_second": placements / secs, "spread": spread}
        # The same creations straight at one node, for scale.
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: ok(nodes[0][1], "POST", "/api/sessions", {"name": f"d{i}"}),
                          range(placements)))
        results["placement"]["direct_one_node_per_second"] = placements / (time.perf_counter() - start)

        # Failover: a cold session exported to the shared directory, its
        # node killed, then asked for until it answers from another node.
        ok(r_http, "POST", "/api/sessions", {"name": "fo"})
        ok(r_http, "POST", "/api/sessions/fo/runs?wait=true",
           {"command": ["sh", "-c", "echo kept > /var/blink/memory/mark"]})
        ok(r_http, "POST", "/api/sessions/fo/backup", {})
        victim = next(s["node"] for s in ok(r_http, "GET", "/api/sessions")["sessions"] if s["name"] == "fo")
        vproc = nodes[int(victim.split("-")[1])][0]
        vproc.send_signal(signal.SIGKILL)
        died = time.perf_counter()
        while True:
            status, _ = call(r_http, "GET", "/api/sessions/fo")
            if status == 200:
                break
            if time.perf_counter() - died > 120:
                raise RuntimeError("fo never answered again")
            time.sleep(0.05)
        back = time.perf_counter() - died
        mark = ok(r_http, "POST", "/api/sessions/fo/runs?wait=true",
                  {"command": ["cat", "/var/blink/memory/mark"]})["stdout"]["data"].strip()
        results["failover"] = {"lease_ttl_secs": TTL, "seconds_to_answer": back, "data_kept": mark == "kept"}
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    (out / "router.json").write_text(json.dumps(results, indent=2) + "\n")
    r, d = results["hop"]["router"], results["hop"]["node"]
    p, f = results["placement"], results["failover"]
    section = "\n".join([
        BEGIN,
        "## Cluster: router hop, placement, failover (bench/router.py)",
        "",
        f"3 etcd members, 3 nodes and a router on 127.0.0.1 (release build). OpenSSH `ssh` with one key; "
        f"connect+exec median of {runs}; {size >> 20} MiB through `dd`, median of {rounds} "
        f"(rounds alternate between the two ways in).",
        "",
        "| Measurement | Through a router | Straight to the node | Ratio / difference | Target |",
        "|---|---|---|---|---|",
        f"| connect + exec `true` | {r['connect_exec_median_ms']:.1f} ms | {d['connect_exec_median_ms']:.1f} ms "
        f"| {r['connect_exec_median_ms'] - d['connect_exec_median_ms']:+.1f} ms | <= 5 ms added |",
        f"| exec stdout | {r['stdout_mib_s']:.0f} MiB/s | {d['stdout_mib_s']:.0f} MiB/s "
        f"| {r['stdout_mib_s'] / d['stdout_mib_s']:.2f} | >= 0.9 |",
        f"| exec stdin | {r['stdin_mib_s']:.0f} MiB/s | {d['stdin_mib_s']:.0f} MiB/s "
        f"| {r['stdin_mib_s'] / d['stdin_mib_s']:.2f} | >= 0.9 |",
        *[f"| CPU per GiB, {way} (machine; router process) "
          f"| {r[way + '_cpu']['machine_cpu_s_per_gib']:.2f} s; {r[way + '_cpu']['router_cpu_s_per_gib']:.2f} s "
          f"| {d[way + '_cpu']['machine_cpu_s_per_gib']:.2f} s "
          f"| {d[way + '_cpu']['machine_cpu_s_per_gib'] / r[way + '_cpu']['machine_cpu_s_per_gib']:.2f} (straight / router) | |"
          for way in ("stdout", "stdin")],
        *own_core_rows(results),
        "",
        *([f"Of a login through the router (median of {results['hop_login']['logins']}): reading the route "
           f"and the live nodes from etcd {results['hop_login']['route_median_ms']:.1f} ms; the link to the node "
           f"(TCP, key exchange, login) {results['hop_login']['link_median_ms']:.1f} ms "
           f"(p95 {results['hop_login']['link_p95_ms']:.1f} ms).", ""] if results.get("hop_login") else []),
        "Rows \"router on a core of its own\": the router pinned to one core and everything else (the client, "
        "the nodes and their sandboxes, etcd) to the other, the shape of a deployment where routers have hosts "
        "of their own; straight to the node, that same one core does all the work.",
        "",
        f"Cores busy while the data moved (the whole machine, {results['cores']} cores; others' work counts): "
        f"stdout {r['stdout_cpu']['cores_busy']:.2f} through the router, {d['stdout_cpu']['cores_busy']:.2f} straight; "
        f"stdin {r['stdin_cpu']['cores_busy']:.2f} through the router, {d['stdin_cpu']['cores_busy']:.2f} straight. "
        f"When the straight path already keeps the cores busy, the router's second decryption and encryption "
        f"(on the same cores here) bound the throughput ratio by the CPU ratio.",
        "",
        f"Placement: {p['sessions']} sessions created through the router, 4 at a time: "
        f"{p['per_second']:.1f}/s (spread {p['spread']}); the same straight at one node: "
        f"{p['direct_one_node_per_second']:.1f}/s.",
        "",
        f"Failover: a cold session backed up to the shared directory, its node killed with -9 "
        f"(lease TTL {f['lease_ttl_secs']} s): it answered again from another node after "
        f"{f['seconds_to_answer']:.1f} s, its data {'kept' if f['data_kept'] else 'LOST'}.",
        END,
        "",
    ])
    write_section(out / "RESULTS.md", BEGIN, section)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
