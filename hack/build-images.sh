#!/usr/bin/env bash
# Builds the project's images without Docker or a registry: a Debian bookworm Python base
# made by mmdebstrap from Debian's packages, then the real Dockerfile(s) built on it by
# buildah (daemonless) with --build-arg BASE_IMAGE. Each image is rebuilt only when its
# inputs change, and saved as a docker-archive that `ctr images import` (and so
# `gaudi3 cluster import-image`) loads into the real nodes' containerd.
#
#   bash hack/build-images.sh            # the operator image (and the base it needs)
#   bash hack/build-images.sh base       # just the base
#
# Output: ~/.cache/gaudi3/images/<name>.tar, tagged gaudi3.local/<name>:dev.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${GAUDI3_CACHE:-$HOME/.cache/gaudi3}"
IMAGES="$CACHE/images"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE="gaudi3.local/debian-python:$SUITE"
# The packages that make the base behave like python:3.11-slim-bookworm for our Dockerfiles.
BASE_PACKAGES="python3,python3-pip,python3-venv,python-is-python3,ca-certificates,passwd"
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
  grep -o " $IMAGES/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT

has_image() { buildah "${ST[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# key FILE... : one hash over the given files' paths and contents
key() { (cd "$ROOT" && find "$@" -type f -not -path '*/__pycache__/*' -print0 | sort -z \
          | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1; }

build_base() {
  local k
  k=$(printf '%s\n' "$SUITE" "$MIRROR" "$BASE_PACKAGES" "$(sha256sum "$CA_BUNDLE")" base-v1 | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$IMAGES/base.key" 2>/dev/null)" = "$k" ] && has_image "$BASE"; then
    say "base $BASE is up to date"; return
  fi
  say "making $BASE from Debian's packages with mmdebstrap (about 2 minutes)"
  local tar="$IMAGES/base-rootfs.tar"
  mmdebstrap --variant=minbase --mode=root --format=tar --include="$BASE_PACKAGES" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    "$SUITE" "$tar" "$MIRROR" >"$IMAGES/mmdebstrap.log" 2>&1 \
    || die "mmdebstrap failed: see $IMAGES/mmdebstrap.log"
  local c
  c=$(buildah "${ST[@]}" from scratch)
  buildah "${ST[@]}" add "$c" "$tar" / >/dev/null
  buildah "${ST[@]}" copy "$c" "$CA_BUNDLE" /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah "${ST[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$c"
  buildah "${ST[@]}" commit -q --rm "$c" "$BASE" >/dev/null
  rm -f "$tar"
  echo "$k" >"$IMAGES/base.key"
}

# build_dockerfile NAME DOCKERFILE CONTEXT INPUT...: build and save gaudi3.local/NAME:dev
build_dockerfile() {
  local name=$1 dockerfile=$2 context=$3; shift 3
  local tag="gaudi3.local/$name:dev" out="$IMAGES/$name.tar" k
  k=$(printf '%s\n' "$(cat "$IMAGES/base.key")" "$(key "$@")" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$IMAGES/$name.key" 2>/dev/null)" = "$k" ] && [ -f "$out" ]; then
    say "$tag is up to date: $out"; return
  fi
  say "building $tag from $dockerfile with buildah"
  # chroot isolation: runc would need CAP_SYS_RESOURCE for oom_score_adj on this kind of
  # machine; host network: build steps reach the package registries as the host does.
  buildah "${ST[@]}" bud --isolation chroot --network host --layers -q \
    -f "$ROOT/$dockerfile" --build-arg BASE_IMAGE="$BASE" -t "$tag" "$ROOT/$context" \
    >"$IMAGES/$name.build.log" 2>&1 || { tail -20 "$IMAGES/$name.build.log" >&2; die "building $tag failed: see $IMAGES/$name.build.log"; }
  rm -f "$out"
  buildah "${ST[@]}" push -q "$tag" "docker-archive:$out:$tag" >/dev/null
  echo "$k" >"$IMAGES/$name.key"
  say "$tag: $out"
}

want="${*:-operator}"
for t in $want; do
  case $t in
    base) build_base ;;
    operator)
      build_base
      build_dockerfile gaudi-operator Dockerfile . \
        Dockerfile pyproject.toml README.md operator training-image/gaudi_train crds ;;
    *) die "unknown image '$t' (known: base operator)" ;;
  esac
done
