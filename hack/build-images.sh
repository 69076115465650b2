#!/usr/bin/env bash
# Builds the project's images without Docker or a registry: a Debian bookworm Python base
# made by mmdebstrap from Debian's packages, then the real Dockerfile(s) built on it by
# buildah (daemonless) with --build-arg BASE_IMAGE. Each image is rebuilt only when its
# inputs change, and saved as a docker-archive that `ctr images import` (and so
# `gaudi3 cluster import-image`) loads into the real nodes' containerd.
#
#   bash hack/build-images.sh                 # both images (and the bases they need)
#   bash hack/build-images.sh operator        # gaudi3.local/gaudi-operator:dev
#   bash hack/build-images.sh training-cpu    # gaudi3.local/gaudi-train-cpu:dev
#
# Output: ~/.cache/gaudi3/images/<name>.tar, tagged gaudi3.local/<name>:dev.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${GAUDI3_CACHE:-$HOME/.cache/gaudi3}"
IMAGES="$CACHE/images"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bases, each from Debian's packages. The operator's behaves like python:3.11-slim-bookworm;
# the CPU training base stands in for Intel's Gaudi PyTorch image with Debian's own torch
# (trixie: torch 2.6, CPU only) and numpy, which the training Dockerfile expects there.
PY_BASE="gaudi3.local/debian-python:bookworm"
PY_SUITE=bookworm
PY_PACKAGES="python3,python3-pip,python3-venv,python-is-python3,ca-certificates,passwd"
TORCH_BASE="gaudi3.local/debian-torch:trixie"
TORCH_SUITE=trixie
TORCH_PACKAGES="$PY_PACKAGES,python3-torch,python3-numpy"
mkdir -p "$IMAGES"
ST=(--root "$IMAGES/storage" --runroot "$IMAGES/run" --storage-driver overlay)

say() { printf '\033[1m[images]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[images] error:\033[0m %s\n' "$*" >&2; exit 1; }

for t in buildah mmdebstrap; do
  command -v $t >/dev/null 2>&1 || die "$t is missing: run \`bash hack/toolchain.sh image-tools\`"
done
[ "$(id -u)" -eq 0 ] || die "building images needs root (mmdebstrap --mode=root, buildah's overlay storage)"

# The host's CA bundle goes into the base: pip in a build step must trust what this
# machine trusts (a TLS-intercepting proxy's CA, for example).
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# No working container or storage mount is left behind, whatever happens.
cleanup() {
  buildah "${ST[@]}" rm --all >/dev/null 2>&1 || true
  { grep -o " $IMAGES/[^ ]*" /proc/mounts || true; } | sort -r \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  return 0
}
trap cleanup EXIT

has_image() { buildah "${ST[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# key FILE... : one hash over the given files' paths and contents
key() { (cd "$ROOT" && find "$@" -type f -not -path '*/__pycache__/*' -print0 | sort -z \
          | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1; }

# build_base TAG SUITE PACKAGES: a root filesystem by mmdebstrap, committed as TAG
build_base() {
  local tag=$1 suite=$2 packages=$3 name k
  name=$(echo "$tag" | sed -E 's#.*/##; s#:#-#')
  k=$(printf '%s\n' "$suite" "$MIRROR" "$packages" "$(sha256sum "$CA_BUNDLE")" base-v1 | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$IMAGES/$name.key" 2>/dev/null)" = "$k" ] && has_image "$tag"; then
    say "base $tag is up to date"; return
  fi
  say "making $tag from Debian $suite packages with mmdebstrap (minutes)"
  local tar="$IMAGES/$name-rootfs.tar"
  mmdebstrap --variant=minbase --mode=root --format=tar --include="$packages" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    "$suite" "$tar" "$MIRROR" >"$IMAGES/$name.mmdebstrap.log" 2>&1 \
    || die "mmdebstrap failed: see $IMAGES/$name.mmdebstrap.log"
  local c
  c=$(buildah "${ST[@]}" from scratch)
  buildah "${ST[@]}" add "$c" "$tar" / >/dev/null
  buildah "${ST[@]}" copy "$c" "$CA_BUNDLE" /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah "${ST[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$c"
  buildah "${ST[@]}" commit -q --rm "$c" "$tag" >/dev/null
  rm -f "$tar"
  echo "$k" >"$IMAGES/$name.key"
}

# build_dockerfile NAME BASE DOCKERFILE CONTEXT INPUT...: build and save gaudi3.local/NAME:dev
build_dockerfile() {
  local name=$1 base=$2 dockerfile=$3 context=$4; shift 4
  local tag="gaudi3.local/$name:dev" out="$IMAGES/$name.tar" k
  k=$(printf '%s\n' "$(buildah "${ST[@]}" inspect --type image --format '{{.FromImageID}}' "$base")" \
        "$(key "$@")" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$IMAGES/$name.key" 2>/dev/null)" = "$k" ] && [ -f "$out" ]; then
    say "$tag is up to date: $out"; return
  fi
  say "building $tag from $dockerfile with buildah"
  # chroot isolation: runc would need CAP_SYS_RESOURCE for oom_score_adj on this kind of
  # machine; host network: build steps reach the package registries as the host does.
  buildah "${ST[@]}" bud --isolation chroot --network host --layers -q \
    -f "$ROOT/$dockerfile" --build-arg BASE_IMAGE="$base" -t "$tag" "$ROOT/$context" \
    >"$IMAGES/$name.build.log" 2>&1 || { tail -20 "$IMAGES/$name.build.log" >&2; die "building $tag failed: see $IMAGES/$name.build.log"; }
  rm -f "$out"
  buildah "${ST[@]}" push -q "$tag" "docker-archive:$out:$tag" >/dev/null
  echo "$k" >"$IMAGES/$name.key"
  say "$tag: $out"
}

want="${*:-operator training-cpu}"
for t in $want; do
  case $t in
    operator)
      build_base "$PY_BASE" "$PY_SUITE" "$PY_PACKAGES"
      build_dockerfile gaudi-operator "$PY_BASE" Dockerfile . \
        Dockerfile pyproject.toml README.md operator training-image/gaudi_train crds ;;
    training-cpu)
      build_base "$TORCH_BASE" "$TORCH_SUITE" "$TORCH_PACKAGES"
      build_dockerfile gaudi-train-cpu "$TORCH_BASE" training-image/Dockerfile training-image \
        training-image/Dockerfile training-image/pyproject.toml training-image/gaudi_train ;;
    *) die "unknown image '$t' (known: operator training-cpu)" ;;
  esac
done
