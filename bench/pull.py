#!/usr/bin/env python3
"""Image pulls from a registry: `blink-cli image pull` beside `skopeo copy`
(registry to an OCI layout, what a user would otherwise run) from the same
local registry, and a second pull of an image sharing layers with the first
(only the new blobs should come). Loopback only: Debian's docker-registry
on 127.0.0.1, fed by skopeo from an OCI layout this script builds (random
bytes, so the layers are as large compressed as not). Peak RSS is the
process's own (GNU time): it must not grow with the image.

    python3 bench/pull.py [--quick] [--bin-dir target/release]

Writes bench/pull.json and its section of bench/RESULTS.md.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, wait_port  # noqa: E402
from bench import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BEGIN, END = "<!-- pull:begin -->", "<!-- pull:end -->"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def timed(argv: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of one command."""
    t = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env)
    took = time.monotonic() - t
    if out.returncode != 0:
        raise SystemExit(f"{argv} failed: {out.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return took, rss, out.stdout


class Layout:
    """An OCI image layout on disk."""

    def __init__(self, path: Path):
        self.path = path
        (path / "blobs/sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.index: list[dict] = []

    def blob(self, media_type: str, data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs/sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def random_layer(self, name: str, size: int) -> tuple[dict, str]:
        """A gzip'd tar (stored, level 0: random bytes do not shrink) of one
        random file; its descriptor and diff_id."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
        raw = raw.getvalue()
        blob = gzip.compress(raw, compresslevel=0, mtime=0)
        return (self.blob("application/vnd.oci.image.layer.v1.tar+gzip", blob),
                f"sha256:{hashlib.sha256(raw).hexdigest()}")

    def image(self, tag: str, layers: list[tuple[dict, str]]) -> None:
        config = json.dumps({"architecture": ARCH, "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": self.blob("application/vnd.oci.image.config.v1+json", config),
            "layers": [desc for desc, _ in layers],
        }).encode()
        desc = self.blob("application/vnd.oci.image.manifest.v1+json", manifest)
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.index.append(desc)
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.index}))


def blob_bytes_served(log: Path) -> int:
    """Bytes the registry wrote for blob GETs, from its log."""
    total = 0
    for line in log.read_text().splitlines():
        if "response completed" in line and "http.request.method=GET" in line and "/blobs/" in line:
            m = re.search(r"http\.response\.written=(\d+)", line)
            total += int(m.group(1)) if m else 0
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    parser.add_argument("--out", default=str(BENCH))
    args = parser.parse_args()
    layer_mib = 8 if args.quick else 64
    layers = 4
    rounds = 1 if args.quick else 3
    for tool in ("docker-registry", "skopeo"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (scripts/install-deps.sh)")
    cli = str(Path(args.bin_dir) / "blink-cli")

    work = Path(tempfile.mkdtemp(prefix="blink-pull-bench-"))
    port = free_port()
    host = f"127.0.0.1:{port}"
    (work / "registry.yml").write_text(
        f"version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {work / 'storage'}\nhttp:\n  addr: {host}\n")
    reg_log = work / "registry.log"
    registry = subprocess.Popen(["docker-registry", "serve", str(work / "registry.yml")],
                                stdout=subprocess.DEVNULL, stderr=open(reg_log, "wb"))
    results: dict = {"machine": {"cores": os.cpu_count()}, "layers": layers, "layer_mib": layer_mib,
                     "rounds": rounds}
    try:
        wait_port(port)
        layout = Layout(work / "layout")
        shared = [layout.random_layer(f"l{i}", layer_mib << 20) for i in range(layers - 1)]
        layout.image("a", [*shared, layout.random_layer("a", layer_mib << 20)])
        layout.image("b", [*shared, layout.random_layer("b", layer_mib << 20)])
        for tag in ("a", "b"):
            subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                            f"oci:{layout.path}:{tag}", f"docker://{host}/bench/img:{tag}"], check=True)
        image_bytes = layers * (layer_mib << 20)
        config = work / "blink.toml"
        config.write_text(f'[images]\ninsecure_registries = ["{host}"]\nallowed_registries = ["{host}"]\n')
        env = {**os.environ, "BLINK_CONFIG": str(config)}
        env.pop("BLINK_DATA_DIR", None)

        def blink_pull(data: Path, tag: str) -> tuple[float, int, dict]:
            took, rss, out = timed([cli, "--json", "--data-dir", str(data), "image", "pull",
                                    f"{host}/bench/img:{tag}"], env)
            return took, rss, json.loads(out)

        def skopeo_pull(dest: Path, tag: str) -> tuple[float, int]:
            took, rss, _ = timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                  f"docker://{host}/bench/img:{tag}", f"oci:{dest}:{tag}"])
            return took, rss

        first = {"blink": [], "skopeo": [], "blink_rss": [], "skopeo_rss": []}
        second = {"blink": [], "skopeo": [], "blink_fetched": [], "served": []}
        for r in range(rounds):
            # Alternate who goes first: the page cache favours the second.
            for who in (("blink", "skopeo") if r % 2 == 0 else ("skopeo", "blink")):
                target = work / f"{who}-{r}"
                if who == "blink":
                    took, rss, report = blink_pull(target, "a")
                    assert report["fetched_blobs"] == layers + 1, report
                    first["blink"].append(took)
                    first["blink_rss"].append(rss)
                    before = blob_bytes_served(reg_log)
                    took, _, report = blink_pull(target, "b")
                    second["blink"].append(took)
                    second["blink_fetched"].append(report["fetched_bytes"])
                    second["served"].append(blob_bytes_served(reg_log) - before)
                else:
                    took, rss = skopeo_pull(target, "a")
                    first["skopeo"].append(took)
                    first["skopeo_rss"].append(rss)
                    took, _ = skopeo_pull(target, "b")
                    second["skopeo"].append(took)
                shutil.rmtree(target, ignore_errors=True)
        mib = image_bytes / 2**20
        b, s = statistics.median(first["blink"]), statistics.median(first["skopeo"])
        results["first_pull"] = {
            "image_mib": mib,
            "blink_mib_s": mib / b, "skopeo_mib_s": mib / s, "ratio": s / b,
            "blink_seconds": first["blink"], "skopeo_seconds": first["skopeo"],
            "blink_peak_rss_mib": max(first["blink_rss"]) / 1024,
            "skopeo_peak_rss_mib": max(first["skopeo_rss"]) / 1024,
        }
        results["second_pull_shared_layers"] = {
            "new_blob_mib": layer_mib,
            "blink_fetched_mib": statistics.median(second["blink_fetched"]) / 2**20,
            "registry_served_mib": statistics.median(second["served"]) / 2**20,
            "blink_seconds": statistics.median(second["blink"]),
            "skopeo_seconds": statistics.median(second["skopeo"]),
        }
    finally:
        registry.terminate()
        registry.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    (out / "pull.json").write_text(json.dumps(results, indent=2) + "\n")
    f, s2 = results["first_pull"], results["second_pull_shared_layers"]
    section = "\n".join([
        BEGIN,
        "## Image pulls (bench/pull.py)",
        "",
        f"An image of {layers} layers of {layer_mib} MiB (random bytes, gzip level 0) from Debian's "
        f"docker-registry on 127.0.0.1, into a fresh store each time; median of {rounds}, the two tools "
        "taking turns to go first. skopeo copies into an OCI layout (`skopeo copy docker://... oci:...`).",
        "",
        "| Measurement | blink-cli image pull | skopeo copy | Ratio | Target |",
        "|---|---|---|---|---|",
        f"| throughput, {f['image_mib']:.0f} MiB image | {f['blink_mib_s']:.0f} MiB/s | "
        f"{f['skopeo_mib_s']:.0f} MiB/s | {f['ratio']:.2f} | >= 1.0 |",
        f"| peak RSS | {f['blink_peak_rss_mib']:.0f} MiB | {f['skopeo_peak_rss_mib']:.0f} MiB | | bounded |",
        f"| second image sharing {layers - 1} of {layers} layers: time | {s2['blink_seconds']:.2f} s | "
        f"{s2['skopeo_seconds']:.2f} s | | |",
        f"| second image: bytes fetched | {s2['blink_fetched_mib']:.1f} MiB "
        f"(the registry served {s2['registry_served_mib']:.1f} MiB) | | | only the new "
        f"{s2['new_blob_mib']} MiB layer and the config |",
        END,
        "",
    ])
    write_section(out / "RESULTS.md", BEGIN, section)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
