"""Images already unpacked in a new real node's containerd, instead of an import per node.

`ctr images import` of the 1.2 GB CPU training image writes its blobs and unpacks them
into the overlay snapshotter: about 50 s per node here. Instead, a seed is made once
per set of image archives (keyed by their sha256): a throw-away containerd (no CRI, no
containers) imports them into its own root and stops. Each real node's containerd root
then starts as hard links to the seed's files, with private copies of the two bolt
databases (the only files containerd writes in place). Content blobs and unpacked layers
are immutable, and containers write to their own upper directories, so nodes sharing
these files never see each other's changes; deleting a node's root only drops links.

Seeds live in `~/.cache/gaudi3/containerd-seeds/<key>/root`; nothing runs or stays
mounted once a seed is made, and `gaudi3 cluster down` is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# A unix socket's path has at most 104 bytes for containerd (its ttrpc socket adds
# ".ttrpc"); a folder under the user's cache can be longer than that (a cache in /home/<user>
# is, with the cluster and node names), so containerd's socket lives in a short folder named
# for the containerd's own folder.
SOCKETS = Path("/run/gaudi3")


def short_folder(base: Path, d: Path) -> Path:
    """A folder under `base` with a short name that stands for folder `d`."""
    return base / hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:16]


def socket_for(d: Path) -> Path:
    """The grpc socket of the containerd whose files are in `d`."""
    return short_folder(SOCKETS, d) / "containerd.sock"


def make_socket_folder(d: Path) -> None:
    socket_for(d).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def remove_socket_folder(d: Path) -> None:
    """The short folder of `d`'s containerd socket, once that containerd has stopped."""
    shutil.rmtree(socket_for(d).parent, ignore_errors=True)
    with contextlib.suppress(OSError):
        SOCKETS.rmdir()  # only when empty: another cluster's nodes may still run


SEEDS = "containerd-seeds"
SEED_VERSION = "seed-v1"  # bump when the seed's layout or import options change
KEEP = 3  # newest seeds kept; older ones are removed when a new one is made


def archive_hash(path: Path, cache: Path) -> str:
    """sha256 of an archive, remembered by (path, size, mtime) so a warm run does not
    read 1.2 GB again."""
    st = path.stat()
    memo = cache / "hashes.json"
    known: dict[str, str] = json.loads(memo.read_text()) if memo.exists() else {}
    stamp = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if stamp not in known:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        known = {k: v for k, v in known.items() if not k.startswith(f"{path.resolve()}:")}
        known[stamp] = h.hexdigest()
        cache.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(memo)
    return known[stamp]


def seed_key(hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join([SEED_VERSION, *hashes]).encode()).hexdigest()[:32]


def _config(d: Path) -> Path:
    text = f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket_for(d)}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
"""
    path = d / "containerd.toml"
    path.write_text(text)
    return path


def ensure_seed(
    cache: Path,
    archives: Sequence[Path],
    containerd: str,
    ctr: str,
    say: Callable[[str], None] = lambda _m: None,
) -> Path:
    """The root of a containerd that holds `archives` unpacked (made if missing)."""
    seeds = cache / SEEDS
    key = seed_key([archive_hash(a, seeds) for a in archives])
    final = seeds / key
    if (final / "COMPLETE").exists():
        return final / "root"
    say(f"unpacking {', '.join(a.name for a in archives)} once for every real node")
    tmp = seeds / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "root").mkdir(parents=True)
    (tmp / "state").mkdir()
    sock = socket_for(tmp)
    make_socket_folder(tmp)
    with (tmp / "containerd.log").open("wb") as log:
        proc = subprocess.Popen(
            [containerd, "--config", str(_config(tmp))], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = [ctr, "--address", str(sock), "--namespace", "k8s.io"]
        deadline = time.monotonic() + 30
        while subprocess.run([*base, "version"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seed containerd did not start: see {tmp}/containerd.log")
            time.sleep(0.2)
        for archive in archives:
            out = subprocess.run(
                [*base, "images", "import", str(archive)],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if out.returncode != 0:
                raise RuntimeError(f"importing {archive} into the seed failed: {out.stderr}")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        remove_socket_folder(tmp)
    shutil.rmtree(tmp / "state", ignore_errors=True)
    (tmp / "COMPLETE").write_text(json.dumps([str(a) for a in archives]))
    try:
        tmp.rename(final)
    except OSError:  # another process made the same seed meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(seeds, keep=final)
    return final / "root"


def _prune(seeds: Path, keep: Path) -> None:
    done = sorted(
        (d for d in seeds.iterdir() if (d / "COMPLETE").exists() and d != keep),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for old in done[KEEP - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def plant(seed_root: Path, node_root: Path) -> None:
    """Start `node_root` (empty) as hard links to the seed, with private databases."""
    node_root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", f"{seed_root}/.", str(node_root)], check=True)
    for db in node_root.glob("*/*.db"):
        private = db.with_name(db.name + ".copy")
        shutil.copy2(db, private)  # a new inode: bolt writes this file in place
        private.replace(db)
