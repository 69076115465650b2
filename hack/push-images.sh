#!/usr/bin/env bash
# Pushes the project's images to a registry with skopeo, no Docker: the operator image and
# the CPU training image, as hack/build-images.sh builds them (each rebuilt first when its
# inputs changed; a no-op otherwise).
#
#   bash hack/push-images.sh REGISTRY [TAG]     # what `make push REGISTRY=... [TAG=...]` runs
#
# REGISTRY is host[:port][/namespace]: ghcr.io/gaudi-scale-starter, or the local cluster's
# 127.0.0.1:PORT (`gaudi3 cluster up --registry`; `gaudi3 cluster env` exports it as
# GAUDI3_REGISTRY). Pushed as REGISTRY/gaudi-operator:TAG and REGISTRY/gaudi-train-cpu:TAG;
# TAG defaults to the chart's appVersion, the tag the chart's image defaults to.
# A registry on loopback (127.0.0.0/8, localhost) speaks plain HTTP: skopeo needs
# --dest-tls-verify=false for it, which this script adds (with gzip's fastest level); any
# other is pushed over TLS.
# Credentials: `skopeo login HOST` beforehand (or REGISTRY_AUTH_FILE).
# IMAGES="operator" (or "training-cpu") pushes one of them.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${GAUDI3_CACHE:-$HOME/.cache/gaudi3}"
say() { printf '\033[1m[push]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[push] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] && [ -n "$1" ] || die "usage: $0 REGISTRY [TAG] (REGISTRY: host[:port][/namespace])"
registry=${1%/}
tag=${2:-$(sed -nE 's/^appVersion: *"?([^"]*)"?.*/\1/p' "$ROOT/charts/gaudi-operator/Chart.yaml")}
[ -n "$tag" ] || die "no TAG given and no appVersion in charts/gaudi-operator/Chart.yaml"
command -v skopeo >/dev/null 2>&1 || die "skopeo is missing: run \`bash hack/toolchain.sh skopeo\`"

tls=()
case ${registry%%/*} in
  # On loopback, bytes cost nothing and gzip is most of the push: its fastest level
  # (1.23 GB training image: 14 s of CPU instead of 21 s, 444 MB instead of 395 MB).
  127.*|localhost|localhost:*) tls=(--dest-tls-verify=false --dest-compress-level 1) ;;
esac

for image in ${IMAGES:-operator training-cpu}; do
  case $image in
    operator) name=gaudi-operator ;;
    training-cpu) name=gaudi-train-cpu ;;
    *) die "unknown image '$image' (known: operator training-cpu)" ;;
  esac
  bash "$ROOT/hack/build-images.sh" "$image"
  start=$SECONDS
  say "pushing $name to $registry/$name:$tag${tls:+ (plain HTTP, gzip -1)}"
  # Layers are gzip-compressed on the way (the docker-archive holds them uncompressed).
  skopeo copy --quiet "${tls[@]}" "docker-archive:$CACHE/images/$name.tar" \
    "docker://$registry/$name:$tag" || die "pushing $name to $registry failed (see above)"
  say "$registry/$name:$tag pushed in $((SECONDS - start))s"
done
