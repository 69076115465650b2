"""Single-layer OCI image archives built from files on this machine (no registry, no Docker).

The real nodes' containerd needs a sandbox ("pause") image and the tests need a tiny
shell image; both are made from Debian's static busybox and imported with
``ctr images import``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
# The name under which local images (these, and hack/build-images.sh's) live on the nodes.
LOCAL_REGISTRY = "gaudi3.local"
PAUSE_IMAGE = f"{LOCAL_REGISTRY}/pause:1"
BUSYBOX_IMAGE = f"{LOCAL_REGISTRY}/busybox:1"


def _blob(out: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def busybox_layer(busybox: Path = BUSYBOX) -> bytes:
    """A layer with /bin/busybox and /bin/<applet> links for every applet it has."""
    if not busybox.exists():
        raise FileNotFoundError(
            f"{busybox} is missing: run `bash hack/toolchain.sh node-runtime` (busybox-static)"
        )

    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for name in applets:
            if name == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buf.getvalue()


def write_archive(path: Path, images: dict[str, dict[str, Any]], layer: bytes) -> None:
    """Write an OCI image-layout tar holding one image per tag, all sharing ``layer``;
    each value is the image's OCI ``config`` section (Entrypoint, Cmd, Env...)."""
    diff_id = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two clusters may start at once
    with tarfile.open(tmp, "w") as out:
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        info = tarfile.TarInfo("oci-layout")
        info.size = len(layout)
        out.addfile(info, io.BytesIO(layout))
        layer_digest = _blob(out, layer)
        manifests = []
        for tag, config in images.items():
            cfg = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Env": ["PATH=/bin"], **config},
                    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                },
                sort_keys=True,
            ).encode()
            cfg_digest = _blob(out, cfg)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": cfg_digest,
                        "size": len(cfg),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer_digest,
                            "size": len(layer),
                        }
                    ],
                },
                sort_keys=True,
            ).encode()
            manifests.append(
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _blob(out, manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    # containerd's import names the image after this annotation.
                    "annotations": {"io.containerd.image.name": tag},
                }
            )
        index = json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        out.addfile(info, io.BytesIO(index))
    shutil.move(tmp, path)


def node_images(path: Path) -> Path:
    """The archive every real node imports: the sandbox image and a busybox shell image.
    Rebuilt only when busybox changes."""
    stamp = path.with_suffix(".stamp")
    key = f"{BUSYBOX.stat().st_mtime_ns}:{BUSYBOX.stat().st_size}:2"
    if path.exists() and stamp.exists() and stamp.read_text() == key:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_archive(
        path,
        {
            # PID 1 of a pod's sandbox only has to exist; containerd kills it with SIGKILL.
            PAUSE_IMAGE: {"Entrypoint": ["/bin/sleep", "2147483647"]},
            BUSYBOX_IMAGE: {"Cmd": ["/bin/sh"]},
        },
        busybox_layer(),
    )
    stamp.write_text(key)
    return path
