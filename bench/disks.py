#!/usr/bin/env python3
"""Session disks: creation, runs, host disk per session, snapshots, restore, clones.

Starts one release blink-server (as root: copy-on-write disks, docs/DISKS.md)
on a fresh data dir under /tmp, with a `[sandbox] id_base` of its own, and
measures over REST, each beside the alternative a user would otherwise pick
where one exists, measured in the same run:

1. session creation (`POST /api/sessions`), cold and warm (create+start),
   default and Debian image; beside a full copy of the image tree per
   session (`cp -a`, what a disk without copy-on-write costs);
2. an ephemeral run of `true` (`POST /api/runs?wait=true`); beside bare
   `bwrap --unshare-all --ro-bind / / true` (the floor), and docker/podman
   when a daemon is there;
3. the host disk an untouched session takes (allocated bytes of its
   directory), beside the size of its image;
4. a session that wrote 1 GiB (one file) and one that wrote 10,000 small
   files: snapshot of the running session (wall, frozen_ms, size), restore,
   clone (live, from the snapshot, of the stopped session) and snapshot of
   the stopped session, with the host bytes each adds (disk layers,
   docs/DISKS.md); beside `cp --sparse=always` of its
   disk.img on the host (the floor) and `tar` of the changes inside the
   session (what a user would do by hand);
5. export and import: only when `blink-cli session export` exists.

Writes bench/disks.json and a section of bench/RESULTS.md (between the
`disks` markers; bench.py and soak.py keep it). Run through
`bash bench/run.sh --disks`, which builds the release binaries first;
`--quick` checks the harness with small sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402  (bench.py is this directory's module)
    BENCH, DISKS_BEGIN, DISKS_END, ROOT, http, machine, percentile, rss_kib, start_blink, write_section,
)

# This run's sandboxes' host ids: a base of their own, so that other Blink
# servers on this machine (test suites, other benchmarks on the default
# 0x70000000) neither collide with nor pollute what is counted here.
ID_BASE = 0x7A00_0000
ID_RANGES = range(ID_BASE, ID_BASE + 0x600 * 0x1_0000)


# --- measuring --------------------------------------------------------------

def stats(seconds: list[float]) -> dict:
    """p50/p95/mean/min/max in ms of a list of durations in seconds."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 95),
            "mean_ms": statistics.fmean(ms), "min_ms": min(ms), "max_ms": max(ms),
            "samples_ms": [round(v, 2) for v in ms]}


def timed_http(port: int, method: str, path: str, body: dict | None = None) -> tuple[float, dict]:
    start = time.perf_counter()
    answer = http(port, method, path, body)
    return time.perf_counter() - start, answer


def timed_cmd(argv: list[str], **kw) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, **kw)
    return time.perf_counter() - start


def run_in(port: int, session: str, script: str, timeout: int = 600) -> tuple[float, dict]:
    """`sh -c script` in a session, waited for; (wall seconds, run)."""
    took, run = timed_http(port, "POST", f"/api/sessions/{session}/runs?wait=true",
                           {"command": ["sh", "-c", script], "timeout_secs": timeout})
    if run.get("state") != "succeeded" or run.get("exit_code") != 0:
        raise RuntimeError(f"run in {session} failed: {script!r}: {json.dumps(run)[:600]}")
    return took, run


def stdout_of(run: dict) -> str:
    return ((run.get("stdout") or {}).get("data") or "").strip()


def du_bytes(path: Path, apparent: bool = False) -> int:
    """Bytes of the host's disk `path` takes (allocated blocks), or its
    apparent size."""
    args = ["du", "-s", "--block-size=1"] + (["--apparent-size"] if apparent else []) + [str(path)]
    return int(subprocess.run(args, check=True, capture_output=True, text=True).stdout.split()[0])


def remove_session(port: int, name: str) -> None:
    http(port, "DELETE", f"/api/sessions/{name}?force=true")


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, data: Path):
        self.proc, self.port, self.data = proc, port, data

    def box(self, session: str) -> Path:
        return self.data / "sandboxes" / http(self.port, "GET", f"/api/sessions/{session}")["box_id"]

    def tree(self, session: str) -> Path:
        """The image tree under a session's disk (its `image` file names it)."""
        name = (self.box(session) / "image").read_text().strip()
        return self.data / "image-trees" / name


# --- 1. creation ------------------------------------------------------------

def creations(srv: Server, prefix: str, n: int, body: dict) -> tuple[dict, list[str]]:
    times, names = [], []
    for i in range(n):
        name = f"{prefix}-{i}"
        took, answer = timed_http(srv.port, "POST", "/api/sessions", {"name": name, **body})
        if not answer.get("created"):
            raise RuntimeError(f"{name} was not created: {answer}")
        times.append(took)
        names.append(name)
    return stats(times), names


def create_then_run(srv: Server, prefix: str, n: int, body: dict) -> tuple[dict, list[str]]:
    """A new cold session and its first command (`true`), as bench.py's
    cold_start."""
    times, names = [], []
    for i in range(n):
        name = f"{prefix}-{i}"
        start = time.perf_counter()
        http(srv.port, "POST", "/api/sessions", {"name": name, **body})
        run = http(srv.port, "POST", f"/api/sessions/{name}/runs?wait=true", {"command": ["true"]})
        times.append(time.perf_counter() - start)
        if run.get("state") != "succeeded":
            raise RuntimeError(f"first run in {name} failed: {run}")
        names.append(name)
    return stats(times), names


def full_copies(tree: Path, work: Path, n: int) -> dict:
    """What a disk without copy-on-write costs: `cp -a` of the image tree
    (time and allocated bytes of the copy)."""
    times, size = [], 0
    for i in range(n):
        dest = work / f"fullcopy-{i}"
        times.append(timed_cmd(["cp", "-a", str(tree), str(dest)]))
        size = du_bytes(dest)
        shutil.rmtree(dest)
    return {**stats(times), "copy_bytes": size}


# --- 2. ephemeral runs --------------------------------------------------------

def ephemeral_runs(srv: Server, n: int) -> dict:
    times, server_side = [], []
    for _ in range(n):
        took, run = timed_http(srv.port, "POST", "/api/runs?wait=true", {"command": ["true"]})
        if run.get("state") != "succeeded":
            raise RuntimeError(f"ephemeral run failed: {run}")
        times.append(took)
        # The server's own account: queued (sandbox made and started) and ran.
        server_side.append({k: run.get(k) for k in ("queued_ms", "duration_ms", "created_at_ms",
                                                    "started_at_ms", "finished_at_ms")})
    out = stats(times)
    for key in ("queued_ms", "duration_ms"):
        vals = [s[key] for s in server_side if s.get(key) is not None]
        if vals:
            out[f"server_{key}_p50"] = statistics.median(vals)
    spans = [s["finished_at_ms"] - s["created_at_ms"] for s in server_side
             if s.get("finished_at_ms") is not None and s.get("created_at_ms") is not None]
    if spans:
        out["server_created_to_finished_ms_p50"] = statistics.median(spans)
    return out


def session_runs(srv: Server, session: str, n: int) -> dict:
    times = []
    for _ in range(n):
        took, run = timed_http(srv.port, "POST", f"/api/sessions/{session}/runs?wait=true", {"command": ["true"]})
        if run.get("state") != "succeeded":
            raise RuntimeError(f"session run failed: {run}")
        times.append(took)
    return stats(times)


def bwrap_floor(n: int) -> dict:
    argv = ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"]
    for _ in range(3):
        subprocess.run(argv, check=True)
    return {**stats([timed_cmd(argv) for _ in range(n)]), "argv": " ".join(argv)}


def container_engines() -> dict:
    """Whether docker or podman could be measured here, and why not."""
    found = {}
    for engine in ("docker", "podman"):
        path = shutil.which(engine)
        if not path:
            found[engine] = "not installed"
            continue
        try:
            probe = subprocess.run([engine, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                   text=True, timeout=20)
        except subprocess.TimeoutExpired:
            found[engine] = f"{path}: `{engine} info` timed out"
            continue
        if probe.returncode != 0:
            why = (probe.stderr.strip().splitlines() or ["?"])[-1][:200]
            found[engine] = f"client at {path}, no daemon: {why}"
        else:
            # TODO: measure `docker run --rm <image> true` when an engine and a
            # local image are there (not on the machine these figures come from).
            found[engine] = f"daemon {probe.stdout.strip()} (not measured: no local image)"
    return found


# --- 3. host disk per session ---------------------------------------------

def per_session_disk(srv: Server, names: list[str]) -> dict:
    sizes = [du_bytes(srv.box(n)) for n in names]
    used = [http(srv.port, "GET", f"/api/sessions/{n}")["disk"]["used_bytes"] for n in names]
    return {"sessions": len(names), "box_dir_bytes_p50": statistics.median(sizes), "box_dir_bytes_max": max(sizes),
            "disk_used_bytes_p50": statistics.median(used), "disk_used_bytes_max": max(used)}


def image_tree(srv: Server, session: str) -> dict:
    tree = srv.tree(session)
    return {"tree": tree.name, "tree_bytes": du_bytes(tree), "tree_apparent_bytes": du_bytes(tree, apparent=True)}


# --- 4. written sessions: snapshot, restore, clone ------------------------

def written_session(srv: Server, work: Path, name: str, image: str | None, write: str, check: str,
                    expect: str, tar_dir: str, repeats: int, tag: str, profile: bool) -> dict:
    """A warm session that ran `write`; its snapshots, restores and clones,
    `cp --sparse=always` of its disk.img, and `tar` of what it wrote."""
    http(srv.port, "POST", "/api/sessions", {"name": name, "warm": True, **({"image": image} if image else {})})
    before = http(srv.port, "GET", f"/api/sessions/{name}")["disk"]
    write_s, write_run = run_in(srv.port, name, write)
    after = http(srv.port, "GET", f"/api/sessions/{name}")
    out: dict = {"session": name, "image": after["image"], "state": after["state"], "write": write,
                 "write_wall_ms": write_s * 1000, "write_inside_ms": write_run.get("duration_ms"),
                 "disk_used_bytes_before": before["used_bytes"], "disk_used_bytes_after": after["disk"]["used_bytes"],
                 "disk_size_bytes": after["disk"]["size_bytes"]}
    box = srv.box(name)
    print(f"[{tag}] wrote: {out['disk_used_bytes_after'] / 2**20:.1f} MiB on the host in {write_s:.1f} s", flush=True)

    def verify(session: str) -> None:
        _, run = run_in(srv.port, session, check)
        if stdout_of(run) != expect:
            raise RuntimeError(f"{session}: {check!r} gave {stdout_of(run)!r}, not {expect!r}")

    def copy_op(fn) -> tuple[float, dict, dict]:
        """Time `fn()`, with what the machine did meanwhile."""
        before = {**system_state(srv.proc.pid), "disk_img_resident_bytes": resident_bytes(box / "disk.img")}
        start = time.perf_counter()
        answer = fn()
        took = time.perf_counter() - start
        state = {**state_delta(before, system_state(srv.proc.pid)),
                 "disk_img_resident_bytes_before": before["disk_img_resident_bytes"]}
        return took, answer if isinstance(answer, dict) else {}, state

    # Snapshots of the running session, each beside the floor measured
    # just before or after it (alternating): a sparse copy of the disk
    # image on the host, by `cp --sparse=always` (read/write, holes kept)
    # and by `cp` (coreutils 9 copies data extents with copy_file_range, as
    # Blink does); page cache as it is, no fsync (as Blink's own copy).
    snaps, floors = [], {"cp_sparse": [], "cp_auto": []}
    copy_bytes = {}

    def floor(k: int) -> None:
        for key, argv in (("cp_sparse", ["cp", "--sparse=always"]), ("cp_auto", ["cp"])):
            dest = work / f"{key}-{name}-{k}.img"
            rusage = {}

            def cp() -> None:
                child = subprocess.Popen([*argv, str(box / "disk.img"), str(dest)])
                _, status, ru = os.wait4(child.pid, 0)
                child.returncode = os.waitstatus_to_exitcode(status)
                if child.returncode:
                    raise RuntimeError(f"{argv} failed: {child.returncode}")
                rusage["cp_cpu_us"] = int((ru.ru_utime + ru.ru_stime) * 1e6)

            took, _, state = copy_op(cp)
            floors[key].append({"wall_ms": took * 1000, **state, **rusage})
            copy_bytes[key] = du_bytes(dest)
            dest.unlink()

    for k in range(repeats):
        if k % 2:
            floor(k)
        state_name = http(srv.port, "GET", f"/api/sessions/{name}")["state"]
        took, info, state = copy_op(lambda: http(srv.port, "POST", f"/api/sessions/{name}/checkpoints",
                                                 {"snapshot": f"s{k}"}))
        snaps.append({"wall_ms": took * 1000, "frozen_ms": info["frozen_ms"], "size_bytes": info["size_bytes"],
                      "session_state": state_name, **state})
        if not k % 2:
            floor(k)
    out["snapshot"] = {**stats([s["wall_ms"] / 1000 for s in snaps]),
                       "frozen_ms_p50": statistics.median(s["frozen_ms"] for s in snaps),
                       "frozen_ms_max": max(s["frozen_ms"] for s in snaps),
                       "size_bytes": snaps[0]["size_bytes"], "runs": snaps}
    for key, runs in floors.items():
        out[key] = {**stats([r["wall_ms"] / 1000 for r in runs]), "copy_bytes": copy_bytes[key], "runs": runs}
    print(f"[{tag}] snapshot p50 {out['snapshot']['p50_ms']:.0f} ms (frozen {out['snapshot']['frozen_ms_p50']} ms), "
          f"{snaps[0]['size_bytes'] / 2**20:.1f} MiB; session {snaps[0]['session_state']}; cp --sparse=always p50 "
          f"{out['cp_sparse']['p50_ms']:.0f} ms, cp p50 {out['cp_auto']['p50_ms']:.0f} ms", flush=True)
    for k in range(1, repeats):
        http(srv.port, "DELETE", f"/api/sessions/{name}/checkpoints/s{k}")

    # Clones: of the running session (a consistent copy, as a new disk
    # layer; made before the restore below, while what it wrote is still
    # in its own disk, not in its snapshot's layer), of the snapshot (a
    # fresh disk over its layers), and of the session stopped (its disk
    # becomes a layer, nothing copied). Host bytes: the clone's directory
    # and what the shared layers grew by.
    layers_dir = srv.data / "disk-layers"

    def clones(kind: str, source: str) -> None:
        times, sizes, added, states = [], [], [], []
        for k in range(repeats):
            clone = f"{name}-{kind.replace('_', '-')}-{k}"
            layers_before = du_bytes(layers_dir) if layers_dir.exists() else 0
            took, _, state = copy_op(lambda: http(srv.port, "POST", "/api/sessions", {"name": clone, "from": source}))
            times.append(took)
            states.append(state)
            sizes.append(du_bytes(srv.box(clone)))
            added.append(sizes[-1] + max(0, du_bytes(layers_dir) - layers_before))
            if k == 0:
                verify(clone)
            remove_session(srv.port, clone)
        out[kind] = {**stats(times), "box_dir_bytes": statistics.median(sizes),
                     "host_bytes_added": statistics.median(added), "runs": states}
        print(f"[{tag}] {kind} p50 {out[kind]['p50_ms']:.0f} ms, {out[kind]['host_bytes_added'] / 2**20:.1f} MiB "
              "added on the host", flush=True)

    clones("clone_live", name)

    http(srv.port, "POST", f"/api/sessions/{name}/stop?force=true")
    # A snapshot of the stopped session: its disk becomes a layer.
    times, added, layer_sizes = [], [], []
    for k in range(repeats):
        layers_before = du_bytes(layers_dir) if layers_dir.exists() else 0
        box_before = du_bytes(box)
        took, info, _ = copy_op(lambda: http(srv.port, "POST", f"/api/sessions/{name}/checkpoints",
                                             {"snapshot": f"stopped-{k}"}))
        times.append(took)
        layer_sizes.append(info["size_bytes"])
        added.append(max(0, du_bytes(layers_dir) + du_bytes(box) - layers_before - box_before))
        # Written again, so the next one has something to make a layer of.
        run_in(srv.port, name, "echo x >> /root/.bench-mark && sync")
        http(srv.port, "POST", f"/api/sessions/{name}/stop?force=true")
    out["snapshot_stopped"] = {**stats(times), "host_bytes_added": statistics.median(added),
                               "first_size_bytes": layer_sizes[0], "host_bytes_added_first": added[0]}
    print(f"[{tag}] snapshot of the stopped session p50 {out['snapshot_stopped']['p50_ms']:.0f} ms", flush=True)
    clones("clone_stopped", name)
    for k in range(repeats):
        http(srv.port, "DELETE", f"/api/sessions/{name}/checkpoints/stopped-{k}")
    run_in(srv.port, name, "rm -f /root/.bench-mark && sync")
    verify(name)

    # Restore (the session is warm: stopped, a fresh disk put over the
    # snapshot's layers, started again).
    times, states = [], []
    for _ in range(repeats):
        took, info, state = copy_op(lambda: http(srv.port, "POST",
                                                 f"/api/sessions/{name}/checkpoints/s0/restore?force=true"))
        times.append(took)
        states.append(state)
    out["restore"] = {**stats(times), "state_after": info["state"], "runs": states}
    verify(name)
    print(f"[{tag}] restore p50 {out['restore']['p50_ms']:.0f} ms (then {info['state']})", flush=True)

    clones("clone_snapshot", f"{name}@s0")

    # By hand: tar of the changes inside the session (to its own disk, as a
    # user keeping a copy would), tar streamed to nowhere (reading and
    # archiving alone), and putting the files back from the tar.
    parent, leaf = tar_dir.rsplit("/", 1)
    tar = {}
    for key, script in (
        ("tar_to_disk", f"rm -f /root/snap.tar; tar cf /root/snap.tar -C {parent or '/'} {leaf} && sync"),
        ("tar_to_null", f"tar cf - -C {parent or '/'} {leaf} | wc -c"),
        ("untar_restore", f"rm -rf {tar_dir} && tar xf /root/snap.tar -C {parent or '/'} && sync"),
    ):
        times, inside = [], []
        for _ in range(repeats):
            took, run = run_in(srv.port, name, script)
            times.append(took)
            inside.append(run.get("duration_ms") or 0)
        tar[key] = {**stats(times), "inside_ms_p50": statistics.median(inside), "script": script}
    _, run = run_in(srv.port, name, "stat -c %s /root/snap.tar")
    tar["tar_bytes"] = int(stdout_of(run))
    run_in(srv.port, name, "rm -f /root/snap.tar && sync")
    verify(name)
    out["tar"] = tar
    print(f"[{tag}] tar to disk p50 {tar['tar_to_disk']['p50_ms']:.0f} ms, untar p50 "
          f"{tar['untar_restore']['p50_ms']:.0f} ms", flush=True)
    out["box_dir_bytes_with_snapshot"] = du_bytes(box)
    if profile:
        # Where the time goes, under the stack sampler (not the figures above).
        prof = out["profile"] = {}
        prof["snapshot"] = sample_stacks(srv.proc.pid, lambda: http(
            srv.port, "POST", f"/api/sessions/{name}/checkpoints", {"snapshot": "prof"}))
        prof["restore"] = sample_stacks(srv.proc.pid, lambda: http(
            srv.port, "POST", f"/api/sessions/{name}/checkpoints/prof/restore?force=true"))
        prof["clone_live"] = sample_stacks(srv.proc.pid, lambda: http(
            srv.port, "POST", "/api/sessions", {"name": f"{name}-prof", "from": name}))
        remove_session(srv.port, f"{name}-prof")
        print(f"[{tag}] profiled: " + "; ".join(
            f"{k} {v['wall_ms']:.0f} ms: {next(iter(v['by_kind_task_ms']), '-')}" for k, v in prof.items()), flush=True)
    remove_session(srv.port, name)
    return out


# --- 5. export / import -----------------------------------------------------

def export_available(bin_dir: Path) -> bool:
    probe = subprocess.run([str(bin_dir / "blink-cli"), "session", "export", "--help"], capture_output=True)
    return probe.returncode == 0


# --- where the time goes -----------------------------------------------------

# Kernel work a busy task (running, or in uninterruptible sleep) was caught
# in, by the first rule whose function names appear in its kernel stack
# (/proc/<pid>/task/<tid>/stack, innermost first). Order matters.
STACK_RULES = (
    ("discard of freed blocks on the host fs (mounted -o discard)", ("blkdev_issue_discard",)),
    ("dirty-page throttling (balance_dirty_pages)", ("balance_dirty_pages",)),
    ("block-layer write throttling (rq_qos_wait)", ("rq_qos_wait",)),
    ("direct memory reclaim", ("try_to_free_pages", "shrink_node", "shrink_lruvec")),
    ("cgroup attach (cgroup.procs write)", ("cgroup_attach_task", "__cgroup1_procs_write", "cgroup_procs_write",
                                            "cgroup_migrate", "cgroup_attach_lock")),
    ("syncfs of a running session's disk (journal commit, flush through the loop device)", ("__x64_sys_syncfs",)),
    ("session disk mount: ext4 reads and writes its superblock, loads its journal",
     ("ext4_fill_super", "get_tree_bdev")),
    ("session disk unmount: journal commit, superblock writes, flush through the loop device",
     ("generic_shutdown_super", "ext4_put_super", "ext4_kill_sb", "cleanup_mnt", "deactivate_locked_super")),
    ("loop attach: LOOP_CONFIGURE writes back the disk image's dirty pages (fsync)", ("loop_configure",)),
    ("fsync (session record, image files)", ("vfs_fsync_range", "do_fsync", "ext4_sync_file", "file_write_and_wait")),
    ("RCU grace period (mount/namespace teardown)", ("synchronize_rcu", "rcu_sync", "synchronize_srcu")),
    ("SEEK_DATA/SEEK_HOLE over the disk image", ("ext4_llseek", "iomap_seek_data", "iomap_seek_hole")),
    ("copy_file_range: waiting for pages read from disk", ("folio_wait_bit_common", "filemap_get_pages")),
    ("copy_file_range: copying in the page cache", ("do_splice_direct", "vfs_copy_file_range", "copy_file_range")),
    ("guest helper copied into the sandbox's tmpfs", ("shmem_file_write_iter", "shmem_file_read_iter")),
    ("loop device detach, other", ("__loop_clr_fd", "lo_release", "loop_control_ioctl")),
    ("ext4 journal (jbd2) waits, other", ("jbd2_",)),
    ("mount/umount, pivot_root", ("path_mount", "do_mount", "do_umount", "path_umount", "__x64_sys_pivot_root",
                                  "namespace_unlock", "mntput", "__x64_sys_fsmount", "do_new_mount")),
    ("chown/setattr walk (clone's id shift)", ("chown_common", "notify_change", "__x64_sys_fchownat",
                                               "__x64_sys_lchown", "vfs_fchown")),
    ("ext4 inode and directory reads", ("__ext4_get_inode_loc", "ext4_readdir", "__ext4_find_entry", "ext4_read_bh",
                                        "ext4_lookup", "ext4_iget")),
    ("unlink/rmdir (other)", ("do_unlinkat", "do_rmdir", "evict")),
    ("exec (loading a program)", ("bprm_execve", "do_execveat_common", "load_elf_binary", "begin_new_exec")),
    ("fork/clone", ("copy_process", "kernel_clone")),
    ("process exit, namespace teardown", ("do_exit", "exit_mmap", "put_mnt_ns", "free_nsproxy", "exit_task_namespaces",
                                          "switch_task_namespaces")),
    ("page faults", ("asm_exc_page_fault", "handle_mm_fault")),
)


# Where a runnable task that is not running sits: woken from a wait, or
# preempted on its way back to user space. On a shared 2-core machine that
# is time spent waiting for a CPU.
RUNQUEUE_TOPS = ("exit_to_user_mode_loop", "irqentry_exit_to_user_mode", "__switch_to_asm", "futex_do_wait",
                 "do_wait", "do_epoll_wait", "ep_poll", "anon_pipe_read", "pipe_read", "__skb_wait_for_more_packets",
                 "poll_schedule_timeout", "do_wait_intr_irq", "do_sys_poll", "do_select", "__do_sys_sched_yield",
                 "do_nanosleep", "schedule_hrtimeout_range", "unix_stream_read_generic")
# Tasks stopped by the cgroup freezer (the session being snapshotted): not work.
FROZEN_TOPS = ("__refrigerator", "do_freezer_trap", "do_signal_stop", "do_sigtimedwait")


def classify(frames: list[str], state: str, comm: str) -> str | None:
    if frames and (frames[0] in FROZEN_TOPS or (state == "D" and frames[0] in RUNQUEUE_TOPS)):
        return None  # frozen by the cgroup freezer (a sleeping task caught in D), not work
    for name, needles in STACK_RULES:
        if any(n in f for f in frames for n in needles):
            return name
    if state == "R" and frames and frames[0] in RUNQUEUE_TOPS:
        return "runnable, waiting for a CPU (woken or preempted)"
    if not frames:
        # The kernel shows no stack for a task that is running right now
        # (in user space or in the kernel).
        return f"on a CPU (a running task shows no stack), {comm}" if state == "R" else f"no stack ({state}), {comm}"
    return f"other kernel: {frames[0]} ({comm})"


def tasks_of(pid: int) -> list[tuple[int, int]]:
    """(pid, tid) of every thread of `pid` and of all its descendants
    (through /proc/<pid>/task/<tid>/children), bounded."""
    found, todo = [], [pid]
    while todo and len(found) < 512:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            found.append((p, int(tid)))
            try:
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    return found


def sample_stacks(pid: int, work, max_seconds: float = 300.0) -> dict:
    """Run `work()` in a thread while sampling the kernel stacks of `pid`'s
    threads and descendants; the time each busy task (state R or D) was
    seen in each kind of kernel work, in task-ms (time-weighted; tasks
    running at once add up). The sampler takes a core of its own: figures
    measured under it are not the benchmark's."""
    import collections
    import threading
    done: dict = {}

    def run() -> None:
        start = time.perf_counter()
        try:
            done["result"] = work()
        except Exception as e:  # reported, not raised from the thread
            done["error"] = repr(e)
        done["wall_s"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    by_kind: collections.Counter = collections.Counter()
    stacks: collections.Counter = collections.Counter()
    iterations, last = 0, time.perf_counter()
    deadline = time.monotonic() + max_seconds
    thread.start()
    while thread.is_alive() and time.monotonic() < deadline:
        now = time.perf_counter()
        dt, last = (now - last) * 1000, now
        iterations += 1
        for p, tid in tasks_of(pid):
            base = f"/proc/{p}/task/{tid}"
            try:
                stat = Path(f"{base}/stat").read_text()
                stack = Path(f"{base}/stack").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            state = stat[stat.rindex(")") + 2]
            if state not in ("R", "D"):
                continue
            # "poll_schedule_timeout.constprop.0+0x4d/0x90" -> "poll_schedule_timeout"
            frames = [line.split()[1].split("+")[0].split(".")[0] for line in stack.splitlines()
                      if len(line.split()) > 1]
            kind = classify(frames, state, comm)
            if kind is None:
                continue
            by_kind[kind] += dt
            stacks[f"{kind} | {state} {comm}: " + " <- ".join(frames[:8])] += dt
        time.sleep(0.001)
    thread.join(timeout=max_seconds)
    return {"wall_ms": done.get("wall_s", float("nan")) * 1000, "error": done.get("error"),
            "iterations": iterations, "by_kind_task_ms": dict(by_kind.most_common()),
            "top_stacks_task_ms": dict(stacks.most_common(30))}


def log_phases(log: Path, offset: int, end: int) -> dict:
    """Phases of the ephemeral runs and warm creations in the server's log
    (bytes `offset` to `end`), by the timestamps of its own lines: request
    received (tower_http, debug), session created, sandbox started, sandbox
    ended (killed, its disk unmounted), run finished (sandbox removed),
    response."""
    def ts(line: str) -> float:
        stamp = line.split()[0].rstrip("Z")
        return datetime.datetime.fromisoformat(stamp).timestamp() * 1000

    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read(max(0, end - offset)).decode(errors="replace").splitlines()
    runs, creates, cur = [], [], None
    for line in lines:
        if not line[:4].isdigit():
            continue
        if "started processing request" in line:
            kind = ("run" if "uri=/api/runs?wait=true" in line else
                    "create" if "method=POST uri=/api/sessions " in line else None)
            cur = {"kind": kind, "request": ts(line)} if kind else None
        elif cur is None:
            continue
        elif "session created" in line:
            cur["created"] = ts(line)
        elif "sandbox started" in line:
            cur["started"] = ts(line)
        elif "sandbox ended" in line and cur["kind"] == "run":
            cur["ended"] = ts(line)
        elif "run finished" in line:
            cur["finished"] = ts(line)
        elif "finished processing request" in line:
            cur["response"] = ts(line)
            (runs if cur["kind"] == "run" else creates).append(cur)
            cur = None

    def phases(rows: list[dict], steps: list[tuple[str, str, str]]) -> dict:
        out = {}
        for label, a, b in steps:
            vals = [r[b] - r[a] for r in rows if a in r and b in r]
            if vals:
                out[label] = {"p50_ms": statistics.median(vals), "mean_ms": statistics.fmean(vals), "n": len(vals)}
        return out

    return {
        "ephemeral_run": phases(runs, [
            ("request -> sandbox started (disk made from the template, sandbox started)", "request", "started"),
            ("sandbox started -> sandbox ended (`true` run, sandbox killed, its disk unmounted)", "started", "ended"),
            ("sandbox ended -> run finished (sandbox directory removed)", "ended", "finished"),
            ("run finished -> response", "finished", "response"),
            ("request -> response", "request", "response")]),
        "warm_create": phases([c for c in creates if "created" in c and "started" in c], [
            ("request -> session created (disk made, record written)", "request", "created"),
            ("session created -> sandbox started", "created", "started"),
            ("sandbox started -> response", "started", "response"),
            ("request -> response", "request", "response")]),
        "cold_create": phases([c for c in creates if "created" in c and "started" not in c], [
            ("request -> session created (disk made, record written)", "request", "created"),
            ("request -> response", "request", "response")]),
    }


def system_state(server_pid: int) -> dict:
    """What a copy competes with: dirty pages, load, the server's storage
    I/O so far, and the kernel's stall and reclaim counters."""
    vm = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        k, v = line.split()
        if k in ("nr_dirty", "nr_writeback", "pgpgin", "pgpgout", "allocstall_normal", "allocstall_movable",
                 "pgsteal_direct", "pgscan_direct"):
            vm[k] = int(v)
    io = dict(line.split(": ") for line in Path(f"/proc/{server_pid}/io").read_text().splitlines())
    psi = {}
    for what in ("io", "memory", "cpu"):
        try:
            some = Path(f"/proc/pressure/{what}").read_text().splitlines()[0]
            psi[f"psi_{what}_some_us"] = int(some.rsplit("total=", 1)[1])
        except (OSError, IndexError, ValueError):
            pass
    sched = {}
    for tid in os.listdir(f"/proc/{server_pid}/task"):
        try:
            fields = Path(f"/proc/{server_pid}/task/{tid}/schedstat").read_text().split()
        except OSError:
            continue
        sched[tid] = (int(fields[0]), int(fields[1]))  # ns on a CPU, ns runnable waiting for one
    return {"t": time.perf_counter(), "loadavg_1m": os.getloadavg()[0], **vm, **psi,
            "server_read_bytes": int(io["read_bytes"]), "server_write_bytes": int(io["write_bytes"]),
            "server_sched": sched}


def state_delta(before: dict, after: dict) -> dict:
    """Counters over an operation; levels (dirty pages, load) as before it."""
    out = {"loadavg_1m": before["loadavg_1m"], "dirty_mib_before": before.get("nr_dirty", 0) * 4096 / 2**20}
    for k in ("pgpgin", "pgpgout", "allocstall_normal", "allocstall_movable", "pgsteal_direct", "pgscan_direct",
              "server_read_bytes", "server_write_bytes", "psi_io_some_us", "psi_memory_some_us", "psi_cpu_some_us"):
        if k in before and k in after:
            out[k] = after[k] - before[k]
    # blink-server's threads: time on a CPU and waiting for one, over the
    # threads alive at the end (a thread that exited meanwhile is lost).
    pairs = [(a, before["server_sched"].get(tid, (0, 0))) for tid, a in after["server_sched"].items()]
    out["server_cpu_us"] = sum(a[0] - b[0] for a, b in pairs) // 1000
    out["server_runqueue_us"] = sum(a[1] - b[1] for a, b in pairs) // 1000
    return out


def pressure() -> dict:
    """Totals of the kernel's pressure stall counters (µs), and the time."""
    out = {"t": time.perf_counter()}
    for what in ("cpu", "io", "memory"):
        try:
            some = Path(f"/proc/pressure/{what}").read_text().splitlines()[0]
            out[what] = int(some.rsplit("total=", 1)[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def pressure_pct(before: dict) -> dict:
    """Share of the time since `before` during which some task on the
    machine waited for a CPU, for I/O, for memory (PSI `some`): how busy
    the shared machine was while something was measured."""
    after = pressure()
    span = (after["t"] - before["t"]) * 1e6
    return {f"{k}_some_pct": round(100 * (after[k] - before[k]) / span, 1) for k in ("cpu", "io", "memory")
            if k in before and k in after and span > 0}


def resident_bytes(path: Path) -> int | None:
    """Bytes of a file in the page cache (fincore)."""
    try:
        p = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                           capture_output=True, text=True, timeout=30)
        return int(p.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


# --- the run ----------------------------------------------------------------

def machine_facts(work: Path, bin_dir: Path) -> dict:
    m = machine()
    mem = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))

    def out(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    commit = out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {**m, "mem_gib": round(mem / 2**20, 1), "work_fs": out(["findmnt", "-no", "FSTYPE", "-T", str(work)]),
            "bwrap": out(["bwrap", "--version"]), "mkfs_ext4": out(["mkfs.ext4", "-V"]),
            "cp": out(["cp", "--version"]), "blink_commit": commit,
            "blink_server": str(bin_dir / "blink-server")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, default image only, to check the harness")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    parser.add_argument("--image", help="Debian suite for the bigger image, or 'none' (default bookworm; quick none)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work dir (server log, data dir)")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the profiling passes (kernel stacks sampled during extra operations)")
    args = parser.parse_args()
    quick = args.quick
    sizes = {
        "creations": 5 if quick else 30,
        "runs": 10 if quick else 50,
        "full_copies": 2 if quick else 5,
        "big_mib": 64 if quick else 1024,
        "small_files": 500 if quick else 10_000,
        "small_file_bytes": 4096,
        "repeats": 2 if quick else 3,
        "profiled_runs": 5 if quick else 20,
    }
    suite = args.image or ("none" if quick else "bookworm")
    if os.geteuid() != 0:
        print("disks.py needs root (copy-on-write disks are a root server's)", file=sys.stderr)
        return 2
    bin_dir = Path(args.bin_dir)
    os.environ["NO_COLOR"] = "1"
    # The server's own timestamps say where a request's time goes: its info
    # lines (sandbox started, ended, run finished) and, from tower_http, one
    # line when each request arrives and one when it is answered.
    os.environ["RUST_LOG"] = os.environ.get("RUST_LOG") or "info,tower_http=debug"
    work = Path(tempfile.mkdtemp(prefix="blink-disks-"))
    work.chmod(0o711)  # sandboxes run as an unprivileged uid that must reach the data dir
    key = work / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    data = work / "blink-data"
    log = work / "server.log"
    now = lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    results: dict = {"date": now(), "quick": quick, "sizes": sizes, "machine": machine_facts(work, bin_dir),
                     "loadavg_start": os.getloadavg()}
    debian = None
    if suite != "none":
        if not shutil.which("debootstrap"):
            print("debootstrap missing: no Debian image (bench/run.sh installs it)", file=sys.stderr)
        else:
            print(f"building blink/debian:{suite} with debootstrap (minutes)", flush=True)
            start = time.perf_counter()
            subprocess.run([str(bin_dir / "blink-cli"), "--data-dir", str(data), "image", "build",
                            "--debootstrap", suite], check=True, stdout=subprocess.DEVNULL)
            results["debian_build_s"] = time.perf_counter() - start
            debian = f"blink/debian:{suite}"
    proc, _, port = start_blink(work, key, bin_dir, limits=None, sandbox=f"id_base = {ID_BASE}", log=log,
                                bench_session=False)
    srv = Server(proc, port, data)
    images = [("default", None)] + ([("debian", debian)] if debian else [])
    try:
        results["server_rss_idle_kib"] = rss_kib(proc.pid)
        n = sizes["creations"]

        # 1 and 3: creation, and the disk untouched sessions take.
        create: dict = {}
        disk: dict = {}
        phases: dict = {}
        busy = results["pressure"] = {}
        for label, image in images:
            body = {"image": image} if image else {}
            took, _ = timed_http(port, "POST", "/api/sessions", {"name": f"first-{label}", **body})
            create[f"first_session_{label}_ms"] = took * 1000
            print(f"first session, {label} image: {took * 1000:.0f} ms", flush=True)
            log_start, p0 = log.stat().st_size, pressure()
            cold, cold_names = creations(srv, f"cold-{label}", n, body)
            warm, warm_names = creations(srv, f"warm-{label}", n, {**body, "warm": True})
            create[f"cold_{label}"], create[f"warm_{label}"] = cold, warm
            phases[f"create_{label}"] = log_phases(log, log_start, log.stat().st_size)
            busy[f"creations, {label} image"] = pressure_pct(p0)
            print(f"create cold {label}: p50 {cold['p50_ms']:.1f} p95 {cold['p95_ms']:.1f} ms; warm: "
                  f"p50 {warm['p50_ms']:.1f} p95 {warm['p95_ms']:.1f} ms", flush=True)
            tree = image_tree(srv, f"first-{label}")
            warm_started = time.monotonic()
            disk[label] = {**tree, "untouched_cold": per_session_disk(srv, cold_names),
                           "untouched_warm_just_started": per_session_disk(srv, warm_names)}
            if label == "default":
                then_run, then_names = create_then_run(srv, f"firstrun-{label}", n, body)
                create[f"cold_then_first_run_{label}"] = then_run
                disk[label]["after_one_run_true"] = per_session_disk(srv, then_names)
                for s in then_names:
                    remove_session(port, s)
            full = full_copies(srv.tree(f"first-{label}"), work, sizes["full_copies"])
            create[f"full_copy_{label}"] = full
            print(f"cp -a of the {label} tree ({tree['tree_bytes'] / 2**20:.1f} MiB): p50 {full['p50_ms']:.0f} ms",
                  flush=True)
            # Warm sessions a while later: what running alone wrote (journal,
            # lazy inode-table init).
            time.sleep(max(0.0, (5 if quick else 30) - (time.monotonic() - warm_started)))
            disk[label]["untouched_warm_running"] = {
                **per_session_disk(srv, warm_names), "running_s": round(time.monotonic() - warm_started, 1)}
            print(f"{label}: tree {tree['tree_bytes'] / 2**20:.1f} MiB; untouched session "
                  f"{disk[label]['untouched_cold']['box_dir_bytes_p50'] / 1024:.0f} KiB cold, "
                  f"{disk[label]['untouched_warm_running']['box_dir_bytes_p50'] / 1024:.0f} KiB warm", flush=True)
            rss = rss_kib(proc.pid)
            for s in cold_names + warm_names:
                remove_session(port, s)
            disk[label]["server_rss_with_warm_sessions_kib"] = rss
        results["create"], results["disk"] = create, disk

        # 2: ephemeral runs, and the floor.
        warmup = 3
        for _ in range(warmup):
            http(port, "POST", "/api/runs?wait=true", {"command": ["true"]})
        log_start, p0 = log.stat().st_size, pressure()
        runs = {"ephemeral_true": {**ephemeral_runs(srv, sizes["runs"]), "warmup_runs": warmup}}
        phases["ephemeral"] = log_phases(log, log_start, log.stat().st_size)
        busy["ephemeral runs"], p0 = pressure_pct(p0), pressure()
        runs |= {"bwrap_floor": bwrap_floor(sizes["runs"]), "containers": container_engines()}
        busy["bwrap floor"] = pressure_pct(p0)
        http(port, "POST", "/api/sessions", {"name": "warm-run", "warm": True})
        runs["warm_session_true"] = session_runs(srv, "warm-run", sizes["runs"])
        remove_session(port, "warm-run")
        results["runs"] = runs
        results["log_phases"] = phases
        if args.profile:
            # Where the time goes, under the stack sampler (a core of its own:
            # not the figures above).
            n_prof = sizes["profiled_runs"]
            prof = results["profile"] = {"runs": n_prof}
            prof["ephemeral_true"] = sample_stacks(proc.pid, lambda: [http(
                port, "POST", "/api/runs?wait=true", {"command": ["true"]}) for _ in range(n_prof)])
            prof["warm_create"] = sample_stacks(proc.pid, lambda: [http(
                port, "POST", "/api/sessions", {"name": f"prof-{i}", "warm": True}) for i in range(n_prof)])
            for i in range(n_prof):
                remove_session(port, f"prof-{i}")
            for k in ("ephemeral_true", "warm_create"):
                top = list(prof[k]["by_kind_task_ms"].items())[:3]
                print(f"profile {k}: {prof[k]['wall_ms'] / n_prof:.0f} ms each; " +
                      ", ".join(f"{name} {v / n_prof:.1f}" for name, v in top), flush=True)
        print(f"ephemeral true: p50 {runs['ephemeral_true']['p50_ms']:.1f} p95 {runs['ephemeral_true']['p95_ms']:.1f}"
              f" ms; bwrap floor p50 {runs['bwrap_floor']['p50_ms']:.1f} ms; warm session p50 "
              f"{runs['warm_session_true']['p50_ms']:.1f} ms; containers: {runs['containers']}", flush=True)

        # 4: written sessions.
        image = debian or None
        big, files, fbytes = sizes["big_mib"], sizes["small_files"], sizes["small_file_bytes"]
        written = {}
        rss_before, p0 = rss_kib(proc.pid), pressure()
        written["big_file"] = written_session(
            srv, work, "big", image,
            f"mkdir -p /root/big && dd if=/dev/urandom of=/root/big/file bs=1M count={big} 2>/dev/null && sync",
            "wc -c < /root/big/file", str(big * 2**20), "/root/big", sizes["repeats"], f"{big} MiB", args.profile)
        busy[f"{big} MiB session"], p0 = pressure_pct(p0), pressure()
        written["small_files"] = written_session(
            srv, work, "many", image,
            f"mkdir -p /root/many && cd /root/many && s=$(head -c {fbytes * 3 // 4} /dev/urandom | base64 | "
            f"tr -d '\\n') && i=0 && while [ $i -lt {files} ]; do printf %s \"$s\" > f$i; i=$((i+1)); done && sync",
            "ls /root/many | wc -l", str(files), "/root/many", sizes["repeats"], f"{files} files", args.profile)
        busy[f"{files} files session"] = pressure_pct(p0)
        written["server_rss_kib_before"], written["server_rss_kib_after"] = rss_before, rss_kib(proc.pid)
        results["written"] = written

        # 5: export and import.
        if export_available(bin_dir):
            # TODO: measure export and import throughput (MiB/s) and the
            # server's peak RSS once `blink-cli session export` has landed
            # (its interface is not known here); until then, not measured.
            results["export"] = {"measured": False, "why": "export exists in this build but the harness "
                                                          "does not measure it yet (TODO in bench/disks.py)"}
        else:
            # TODO: as above; this build has no `blink-cli session export`
            # (the REST routes answer 501).
            results["export"] = {"measured": False, "why": "not measured: export not in this build"}
        results["server_rss_end_kib"] = rss_kib(proc.pid)
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")[:500]
        raise RuntimeError(f"{e.code} from blink-server: {body}") from e
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        results["loadavg_end"] = os.getloadavg()
        if args.keep_work:
            print(f"kept {work} (server log: {log})")
        else:
            shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "disks.json").write_text(json.dumps(results, indent=1) + "\n")
    write_section(out / "RESULTS.md", DISKS_BEGIN, markdown(results))
    print(f"wrote {out / 'disks.json'} and the disks section of {out / 'RESULTS.md'}")
    return 0


# --- output -------------------------------------------------------------------

def mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB" if b >= 2**20 else f"{b / 1024:.0f} KiB"


def ms(row: dict, key: str = "p50_ms") -> str:
    return f"{row[key]:.1f}" if row.get(key) is not None else "-"


def markdown(r: dict) -> str:
    m = r["machine"]
    s = r["sizes"]
    lines = [DISKS_BEGIN, "", "## Session disks (bench/disks.py)", "",
             f"Measured {r['date']}{' (--quick)' if r['quick'] else ''} on {m['cpu']} ({m['cores']} cores, "
             f"{m['mem_gib']} GiB, Linux {m['kernel']}), data dir on {m['work_fs']}, {m['bwrap']}, "
             f"{m['mkfs_ext4']}; Blink {m['blink_commit']} (release), one blink-server as root over REST on "
             f"loopback, a fresh data dir, `[sandbox] id_base = {ID_BASE:#x}`, default disk size (10 GiB). "
             f"Load average {r['loadavg_start'][0]:.1f} at the start, {r['loadavg_end'][0]:.1f} at the end (the "
             "machine is shared). Times are wall clock at the client, end to end; p50/p95 by nearest rank. "
             "Figures from bench/disks.json; findings in bench/NOTES.md.", ""]
    if r.get("pressure"):
        lines += ["How busy the machine was while each part ran (PSI, share of the time some task waited for a "
                  "CPU / for I/O): " + "; ".join(f"{k} {v.get('cpu_some_pct', '-')}% / {v.get('io_some_pct', '-')}%"
                                                  for k, v in r["pressure"].items()) + ".", ""]
    c = r["create"]
    lines += ["### Creating a session (`POST /api/sessions`, a new name each time)", "",
              "| what | n | p50 ms | p95 ms | mean ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    labels = {"cold": "cold (created, not started)", "warm": "`\"warm\": true` (created and started)",
              "cold_then_first_run": "cold, then its first run `true`"}
    for key, row in c.items():
        if not isinstance(row, dict) or key.startswith("full_copy"):
            continue
        kind, _, image = key.rpartition("_")
        lines.append(f"| {labels.get(kind, kind)}, {image} image | {row['n']} | {ms(row)} | {ms(row, 'p95_ms')} | "
                     f"{ms(row, 'mean_ms')} | {ms(row, 'max_ms')} |")
    for key, row in c.items():
        if key.startswith("full_copy"):
            image = key.rsplit("_", 1)[1]
            lines.append(f"| alternative: `cp -a` of the {image} image's tree (a full copy per session) | "
                         f"{row['n']} | {ms(row)} | {ms(row, 'p95_ms')} | {ms(row, 'mean_ms')} | {ms(row, 'max_ms')} |")
    firsts = [f"{k[len('first_session_'):-3]} image {v:.0f} ms" for k, v in c.items() if k.startswith("first_session_")]
    lines += ["", "The first session of an image on a fresh data dir also unpacks the image's tree (and the first "
              "of a disk size makes its empty-disk template with mkfs.ext4), not counted above: "
              + ", ".join(firsts) + ". Target (issue 11): p50 ≤ 50 ms.", ""]

    ru = r["runs"]
    e, b, w = ru["ephemeral_true"], ru["bwrap_floor"], ru["warm_session_true"]
    lines += ["### Running `true`", "",
              "| what | n | p50 ms | p95 ms | mean ms | max ms |", "|---|---:|---:|---:|---:|---:|",
              f"| ephemeral run, `POST /api/runs?wait=true` (fresh sandbox and disk, removed after) | {e['n']} | "
              f"{ms(e)} | {ms(e, 'p95_ms')} | {ms(e, 'mean_ms')} | {ms(e, 'max_ms')} |",
              f"| floor: `{b['argv']}` (host, from Python) | {b['n']} | {ms(b)} | {ms(b, 'p95_ms')} | "
              f"{ms(b, 'mean_ms')} | {ms(b, 'max_ms')} |",
              f"| for scale: a run in a warm session, `POST /api/sessions/N/runs?wait=true` | {w['n']} | {ms(w)} | "
              f"{ms(w, 'p95_ms')} | {ms(w, 'mean_ms')} | {ms(w, 'max_ms')} |", "",
              f"Ephemeral: {e['warmup_runs']} unmeasured runs first; the server's own account (p50): "
              f"queued {e.get('server_queued_ms_p50', '-')} ms, ran {e.get('server_duration_ms_p50', '-')} ms, "
              f"created to finished {e.get('server_created_to_finished_ms_p50', '-')} ms. "
              "Containers: " + "; ".join(f"{k}: {v}" for k, v in ru["containers"].items()) +
              " (not measured). Target (issue 11): p50 ≤ 40 ms.", ""]

    lp = r.get("log_phases", {})
    eph = lp.get("ephemeral", {}).get("ephemeral_run")
    if eph:
        lines += ["Where an ephemeral run's time goes, by the server's own log lines (p50 and mean over the "
                  "measured runs; tower_http's request lines at debug, the rest at info):", "",
                  "| phase | p50 ms | mean ms |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['p50_ms']:.1f} | {v['mean_ms']:.1f} |" for k, v in eph.items()]
        lines += [""]
    wc = lp.get("create_default", {}).get("warm_create")
    if wc:
        lines += ["And a warm creation's (default image):", "", "| phase | p50 ms | mean ms |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['p50_ms']:.1f} | {v['mean_ms']:.1f} |" for k, v in wc.items()]
        lines += [""]
    prof = r.get("profile")
    if prof:
        n = prof["runs"]
        lines += [f"Kernel stacks sampled during {n} more ephemeral runs and {n} more warm creations "
                  "(`/proc/<pid>/task/<tid>/stack` of blink-server's threads and all their descendants, "
                  "bubblewrap, nsenter and the sandbox included, every ~1 ms; a task counts while running or "
                  "in uninterruptible sleep, by the first matching kind of kernel work; task-ms per operation, "
                  "tasks at once add up; the sampler takes a core, so these operations ran slower than the "
                  "measured ones):", "",
                  "| operation (wall per op under the sampler) | kind of work | task-ms per op |", "|---|---|---:|"]
        for key in ("ephemeral_true", "warm_create"):
            pr = prof[key]
            for i, (kind, v) in enumerate(list(pr["by_kind_task_ms"].items())[:8]):
                head = f"{key.replace('_', ' ')} ({pr['wall_ms'] / n:.0f} ms)" if i == 0 else ""
                lines.append(f"| {head} | {kind} | {v / n:.1f} |")
        lines += [""]

    lines += ["### Host disk per untouched session", "",
              "Allocated bytes (`du`) of the session's directory `<data>/sandboxes/<box_id>` (its sparse "
              "`disk.img` and the rest), median of the sessions above, beside the image's tree, which is what "
              "a full copy per session would take.", "",
              "| image | image tree (allocated / apparent) | cold, never started | warm, just started | "
              "warm, running a while | after one run `true` | `cp -a` copy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, d in r["disk"].items():
        run1 = d.get("after_one_run_true")
        full = c.get(f"full_copy_{label}", {})
        lines.append(f"| {label} | {mib(d['tree_bytes'])} / {mib(d['tree_apparent_bytes'])} | "
                     f"{mib(d['untouched_cold']['box_dir_bytes_p50'])} | "
                     f"{mib(d['untouched_warm_just_started']['box_dir_bytes_p50'])} | "
                     f"{mib(d['untouched_warm_running']['box_dir_bytes_p50'])} "
                     f"({d['untouched_warm_running']['running_s']:.0f} s) | {mib(run1['box_dir_bytes_p50']) if run1 else '-'} | "
                     f"{mib(full['copy_bytes']) if full else '-'} |")
    lines += [""]

    lines += ["### A session that wrote data: snapshot, restore, clone", "",
              f"Each a warm (running) session of `{next(iter(r['written'].values()))['image']}` with the default "
              f"10 GiB disk; one wrote one file of {s['big_mib']} MiB from /dev/urandom (`dd`), the other "
              f"{s['small_files']} files of {s['small_file_bytes']} bytes; {s['repeats']} of each operation, p50 "
              "(max). Snapshot: `POST …/checkpoints` while the session runs; restore: "
              "`POST …/checkpoints/s0/restore?force=true` (stops the session, puts a fresh disk over the "
              "snapshot's layers, starts it again); clone: `POST /api/sessions {\"from\": …}` of the running "
              "session, of its snapshot, and of the session stopped. In this order: the running snapshots and "
              "clones while what the session wrote is in its own disk, then the session stopped, snapshotted "
              "(its disk, data and all, becomes a layer; later ones find little new) and cloned, then the "
              "restores, then the clones of the snapshot. Host bytes added: the clone's directory plus what "
              "`disk-layers` grew by. Floors and by-hand alternatives: "
              "`cp --sparse=always` (read/write) and `cp` (coreutils 9 copies the data extents with "
              "copy_file_range, as Blink's copy does) of the session's `disk.img` on the host, each run right "
              "before or after a snapshot (alternating); inside the session, `tar cf` of "
              "the written directory to the session's disk (+`sync`), `tar cf - | wc -c` (reading and "
              "archiving alone), and `rm -rf` + `tar xf` (+`sync`) to put it back. Page cache warm, no fsync "
              "(as Blink's copy).", ""]
    lines += ["| | " + " | ".join(k.replace("_", " ") for k in r["written"] if isinstance(r["written"][k], dict))
              + " |", "|---|" + "---:|" * sum(isinstance(v, dict) for v in r["written"].values())]
    wr = {k: v for k, v in r["written"].items() if isinstance(v, dict)}

    def row(name: str, f) -> None:
        lines.append(f"| {name} | " + " | ".join(f(v) for v in wr.values()) + " |")

    pm = lambda x: f"{x['p50_ms']:.0f} ms ({x['max_ms']:.0f})"  # noqa: E731
    row("written (wall, inside)", lambda v: f"{v['write_wall_ms'] / 1000:.1f} s, {v['write_inside_ms'] / 1000:.1f} s")
    row("disk.img on the host after", lambda v: mib(v["disk_used_bytes_after"]))
    row("**snapshot** (running session), wall", lambda v: pm(v["snapshot"]))
    row("snapshot: frozen_ms reported", lambda v: f"{v['snapshot']['frozen_ms_p50']} ms ({v['snapshot']['frozen_ms_max']})")
    row("snapshot: size_bytes", lambda v: mib(v["snapshot"]["size_bytes"]))
    row("**restore**, wall", lambda v: pm(v["restore"]))
    row("**clone** of the running session (a copy, as a layer), wall", lambda v: pm(v["clone_live"]))
    row("clone of the running session: host bytes added", lambda v: mib(v["clone_live"]["host_bytes_added"]))
    row("**clone of the snapshot** (over its layers), wall", lambda v: pm(v["clone_snapshot"]))
    row("clone of the snapshot: host bytes added", lambda v: mib(v["clone_snapshot"]["host_bytes_added"]))
    row("**snapshot of the stopped session** (its disk becomes a layer), wall",
        lambda v: pm(v["snapshot_stopped"]))
    row("snapshot of the stopped session: the first one's layer (size_bytes) / host bytes it added",
        lambda v: f"{mib(v['snapshot_stopped']['first_size_bytes'])} / "
        f"{mib(v['snapshot_stopped']['host_bytes_added_first'])}")
    row("**clone of the stopped session** (its disk becomes a layer), wall", lambda v: pm(v["clone_stopped"]))
    row("clone of the stopped session: host bytes added", lambda v: mib(v["clone_stopped"]["host_bytes_added"]))
    row("a clone's directory on the host", lambda v: mib(v["clone_live"]["box_dir_bytes"]))
    row("floor: `cp --sparse=always disk.img` (read/write)", lambda v: pm(v["cp_sparse"]))
    row("floor: `cp disk.img` (copy_file_range, as Blink)", lambda v: pm(v["cp_auto"]))
    med = lambda runs, k: statistics.median(x.get(k) or 0 for x in runs)  # noqa: E731
    row("around the snapshots (p50): load average, dirty pages before, disk.img cached before, server's "
        "storage reads", lambda v: f"{med(v['snapshot']['runs'], 'loadavg_1m'):.1f}, "
        f"{mib(med(v['snapshot']['runs'], 'dirty_mib_before') * 2**20)}, "
        f"{mib(med(v['snapshot']['runs'], 'disk_img_resident_bytes_before'))}, "
        f"{mib(med(v['snapshot']['runs'], 'server_read_bytes'))}")
    row("snapshots (p50): blink-server's threads on a CPU / waiting for one (schedstat)",
        lambda v: f"{med(v['snapshot']['runs'], 'server_cpu_us') / 1000:.0f} ms / "
        f"{med(v['snapshot']['runs'], 'server_runqueue_us') / 1000:.0f} ms")
    row("`cp` (p50): CPU time (rusage)", lambda v: f"{med(v['cp_auto']['runs'], 'cp_cpu_us') / 1000:.0f} ms")
    row("by hand: `tar cf` to the disk (wall; inside)",
        lambda v: f"{pm(v['tar']['tar_to_disk'])}; {v['tar']['tar_to_disk']['inside_ms_p50']:.0f} ms")
    row("by hand: `tar cf - \\| wc -c` (wall)", lambda v: pm(v["tar"]["tar_to_null"]))
    row("by hand: tar size", lambda v: mib(v["tar"]["tar_bytes"]))
    row("by hand: `rm -rf` + `tar xf` (wall)", lambda v: pm(v["tar"]["untar_restore"]))
    lines += [""]

    profs = {k: v["profile"] for k, v in wr.items() if v.get("profile")}
    if profs:
        lines += ["Kernel stacks sampled during one more snapshot, restore and clone of each (as above; task-ms, "
                  "top kinds):", "", "| session | operation (wall under the sampler) | kind of work | task-ms |",
                  "|---|---|---|---:|"]
        for sess, ops in profs.items():
            for op, pr in ops.items():
                for i, (kind, v) in enumerate(list(pr["by_kind_task_ms"].items())[:4]):
                    who = sess.replace("_", " ") if i == 0 else ""
                    what = f"{op.replace('_', ' ')} ({pr['wall_ms']:.0f} ms)" if i == 0 else ""
                    lines.append(f"| {who} | {what} | {kind} | {v:.0f} |")
        lines += [""]

    x = r["export"]
    lines += ["### Export and import", "",
              "| figure | value |", "|---|---|",
              f"| export throughput (MiB/s) | {x['why'] if not x['measured'] else x.get('export_mib_s')} |",
              f"| import throughput (MiB/s) | {x['why'] if not x['measured'] else x.get('import_mib_s')} |",
              f"| blink-server peak RSS during export/import | {x['why'] if not x['measured'] else x.get('peak_rss')} |",
              ""]
    lines += [f"blink-server RSS: {r['server_rss_idle_kib'] / 1024:.1f} MiB idle at the start, "
              f"{r['server_rss_end_kib'] / 1024:.1f} MiB at the end. Sizes: "
              + ", ".join(f"{k}={v}" for k, v in s.items()) + "."]
    if r.get("debian_build_s"):
        lines[-1] += f" Building the Debian image (debootstrap, network) took {r['debian_build_s']:.0f} s."
    lines += ["", DISKS_END]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
