#!/usr/bin/env python3
"""Write the seed inputs of the archive fuzz targets (small valid layers
and image archives). Run from anywhere: python3 fuzz/seeds/make_seeds.py"""
import gzip
import hashlib
import io
import json
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def tar_of(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for kind, name, arg in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            data = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "file":
                info.mode, info.size, data = 0o644, len(arg), io.BytesIO(arg)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, arg
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, arg
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            t.addfile(info, data)
    return buf.getvalue()


def gz(data):
    return gzip.compress(data, mtime=0)


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = tar_of([
    ("dir", "etc/", None),
    ("file", "etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
    ("sym", "bin", "/usr/bin"),
    ("sym", "up", "../../.."),
    ("hard", "etc/passwd2", "etc/passwd"),
    ("file", ".wh.gone", b""),
    ("dir", "opq/", None),
    ("file", "opq/.wh..wh..opq", b""),
    ("fifo", "pipe", None),
    ("file", "a" * 120, b"long name"),
])


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def oci_archive():
    layer = gz(LAYER)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(LAYER)]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(layer), "size": len(layer)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest(manifest), "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": "seed/app:1"}}],
    }).encode()
    entries = [("file", "oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
               ("file", "index.json", index), ("dir", "blobs/sha256/", None)]
    for blob in (layer, config, manifest):
        entries.append(("file", "blobs/sha256/" + digest(blob)[7:], blob))
    return tar_of(entries)


def docker_save():
    config = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest(LAYER)]}}).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["seed/docker:2"],
                            "Layers": ["l/layer.tar"]}]).encode()
    return tar_of([("file", "manifest.json", manifest), ("file", "config.json", config),
                   ("file", "l/layer.tar", LAYER), ("sym", "l/alias.tar", "layer.tar")])


write("layer_unpack", "layer.tar", LAYER)
write("layer_unpack", "layer.tar.gz", gz(LAYER))
write("image_import", "oci.tar", oci_archive())
write("image_import", "oci.tar.gz", gz(oci_archive()))
write("image_import", "docker.tar", docker_save())
