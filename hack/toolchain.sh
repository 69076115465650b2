#!/usr/bin/env bash
# Builds (once) and caches the local cluster's toolchain under ~/.cache/gaudi3:
# Kubernetes control-plane binaries, kubectl and the real nodes' kubelet from the official
# Go modules, with kwok built in the same module (one `go build`: kwok reuses the compiled
# Kubernetes libraries), etcd, helm, helm-docs, kubeconform, kstatus (Flux's status
# library), Kueue, CoreDNS, CNCF distribution's registry and actionlint via the Go module
# proxy, Prometheus, containerd, runc, the CNI plugins, the image tools and skopeo from
# Debian, kubeconform's JSON schemas from the pinned modules' OpenAPI documents, and
# Kubernetes' OpenAPI documents for `make crd`.
# Every tool lives in a versioned folder; changing a pin rebuilds only that tool.
#
#   bash hack/toolchain.sh              # everything `make test` needs (the `all` set)
#   bash hack/toolchain.sh demo         # only what `make demo` needs
#   bash hack/toolchain.sh helm kueue   # these tools
#   bash hack/toolchain.sh --list demo  # what a set holds, without building
#
# Missing tools build in parallel, at most TOOLCHAIN_JOBS (2) Go builds at once (they are
# CPU-bound); each prints a line when it starts and when it is done, with its time, and
# keeps its output in ~/.cache/gaudi3/logs/toolchain/<job>.log.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v4.3.1}"
HELM_DOCS_VERSION="${HELM_DOCS_VERSION:-v1.14.2}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-v0.8.0}"
# Only its CRDs are used: the ServiceMonitor and PrometheusRule schemas the chart renders.
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
FLUX_KSTATUS_VERSION="${FLUX_KSTATUS_VERSION:-v1.3.0}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
# The local cluster's OCI registry (`gaudi3 cluster up --registry`).
REGISTRY_VERSION="${REGISTRY_VERSION:-v3.1.2}"
# Checks .github/workflows/ in `make lint` and a unit test.
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
# Only `gaudi3 benchmark reconcile --versus kubeflow` runs it: built on demand, not by default.
KUBEFLOW_TRAINING_OPERATOR_VERSION="${KUBEFLOW_TRAINING_OPERATOR_VERSION:-v1.9.3}"
TOOLCHAIN_JOBS="${TOOLCHAIN_JOBS:-2}"

CACHE="${GAUDI3_CACHE:-$HOME/.cache/gaudi3}"
BIN="$CACHE/bin"
TOOLS="$CACHE/tools"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$BIN" "$TOOLS"

LOGS="$CACHE/logs/toolchain"
mkdir -p "$LOGS"
exec 3>&2 # the terminal: a job's own stderr goes to its log
say() { printf '\033[1m[toolchain]\033[0m %s\n' "$*" >&2; [ -z "${IN_JOB:-}" ] || printf '\033[1m[toolchain]\033[0m %s\n' "$*" >&3; }
die() { printf '\033[31m[toolchain] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Go is needed only when something must be built: a warm cache works without it.
need_go() {
  [ -n "${_go_checked:-}" ] && return
  command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH: install Go 1.24 or newer (https://go.dev/doc/install) and run again"
  local minor
  minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  [ "${minor:-0}" -ge 24 ] 2>/dev/null || die "Go $(go env GOVERSION) is too old: these builds need Go 1.24 or newer"
  export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
  _go_checked=1
}

# link NAME DIR: point $BIN/NAME at DIR/NAME
link() { ln -sfn "$2/$1" "$BIN/$1"; }

have() { # have DIR NAME...: all binaries present in DIR
  local d=$1; shift
  for n in "$@"; do [ -x "$d/$n" ] || return 1; done
}

# k8s_build DIR PKG...: build Kubernetes commands (and kwok's, when asked) into DIR/out
# from one wrapper module that requires the pinned k8s.io/kubernetes, with the same version
# ldflags for every binary. One `go build` of several commands compiles each shared
# package once and links the binaries in parallel.
k8s_build() {
  local dir=$1; shift
  local src="$dir/src"
  rm -rf "$src"; mkdir -p "$src"
  local staging_v="v0.${K8S_VERSION#v1.}"
  # The kubernetes module replaces its staging modules with ./staging paths, which do
  # not apply to a dependent module: replace each with its published v0.x.y twin.
  local kmod
  kmod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -nE 's/.*"GoMod": "(.*)".*/\1/p')
  [ -f "$kmod" ] || die "could not download k8s.io/kubernetes@${K8S_VERSION} from the Go module proxy"
  local with_kwok=""
  case " $* " in *" sigs.k8s.io/kwok/"*) with_kwok=1 ;; esac
  {
    echo "module gaudi3.local/kubernetes-build"
    echo
    echo "go $(sed -nE 's/^go ([0-9.]+)$/\1/p' "$kmod")"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    [ -z "$with_kwok" ] || echo "require sigs.k8s.io/kwok ${KWOK_VERSION}"
    echo
    echo "replace ("
    sed -nE 's#^\s*(k8s\.io/[a-z0-9-]+) => \./staging/.*#\1#p' "$kmod" | while read -r m; do
      echo "	$m => $m $staging_v"
    done
    # Every other module at the version Kubernetes pins: kwok (an older Kubernetes
    # client) builds against these, and the Kubernetes binaries stay exactly as their
    # own go.mod has them whatever kwok asks for.
    if [ -n "$with_kwok" ]; then
      awk '/^require \($/ {r=1; next} r && /^\)/ {r=0} r && NF >= 2 && $1 !~ /^\/\// && $2 != "v0.0.0" {print "\t" $1 " => " $1 " " $2}' "$kmod"
    fi
    echo ")"
  } >"$src/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for p in "$@"; do printf '\t_ "%s"\n' "$p"; done
    printf ')\n'
  } >"$src/tools.go"
  (cd "$src" && go mod tidy) || die "resolving Kubernetes ${K8S_VERSION} modules failed (see above)"
  local major minor
  major=$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')
  minor=$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=${K8S_VERSION} -X $p.gitMajor=${major} -X $p.gitMinor=${minor}"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=${date}"
  done
  ld+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION}"
  mkdir -p "$dir/out"
  (cd "$src" && go build -trimpath -ldflags "-s -w $ld" -o "$dir/out/" "$@") \
    || die "building Kubernetes ${K8S_VERSION} failed (see above)"
}

# The control plane and kubectl, the real nodes' kubelet and kwok: what is wanted and not
# built yet, in one k8s_build. kwok is built against the pinned Kubernetes' libraries
# (its own go.mod asks for an older client), so it adds about a minute instead of
# compiling a second copy of them: its folder names both versions.
build_k8s() {
  local kdir="$TOOLS/kubernetes-$K8S_VERSION" ldir="$TOOLS/kubelet-$K8S_VERSION"
  local wdir="$TOOLS/kwok-$KWOK_VERSION-k8s-$K8S_VERSION"
  local control=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local pkgs=() what=()
  if wanted kubernetes; then
    if have "$kdir" "${control[@]}"; then for n in "${control[@]}"; do link "$n" "$kdir"; done
    else for n in "${control[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$n"); done; what+=("${control[@]}"); fi
  fi
  if wanted kubelet; then
    if have "$ldir" kubelet; then link kubelet "$ldir"
    else pkgs+=(k8s.io/kubernetes/cmd/kubelet); what+=(kubelet); fi
  fi
  if wanted kwok; then
    if have "$wdir" kwok; then link kwok "$wdir"
    else pkgs+=(sigs.k8s.io/kwok/cmd/kwok); what+=("kwok ${KWOK_VERSION}"); fi
  fi
  [ ${#pkgs[@]} -gt 0 ] || return 0
  need_go
  say "building ${what[*]} from the Kubernetes ${K8S_VERSION} Go modules in one go build (the longest job: minutes on 2 cores)"
  local build="$TOOLS/kubernetes-build-$K8S_VERSION"
  k8s_build "$build" "${pkgs[@]}"
  local n
  for n in "${control[@]}"; do
    [ -x "$build/out/$n" ] || continue
    mkdir -p "$kdir"; mv "$build/out/$n" "$kdir/$n"; link "$n" "$kdir"
  done
  if [ -x "$build/out/kubelet" ]; then mkdir -p "$ldir"; mv "$build/out/kubelet" "$ldir/"; link kubelet "$ldir"; fi
  if [ -x "$build/out/kwok" ]; then mkdir -p "$wdir"; mv "$build/out/kwok" "$wdir/"; link kwok "$wdir"; fi
  rm -rf "$build"
  if [ -x "$kdir/kubectl" ]; then say "Kubernetes: $("$kdir/kubectl" version --client 2>/dev/null | head -1)"; fi
}

build_etcd() {
  local dir="$TOOLS/etcd-$ETCD_VERSION"
  if have "$dir" etcd; then link etcd "$dir"; return; fi
  need_go
  say "building etcd ${ETCD_VERSION} from the Go modules"
  local src="$dir/src"
  rm -rf "$src"; mkdir -p "$src"
  local v=$ETCD_VERSION
  # etcd's server module replaces its sibling modules with relative paths; pin them instead.
  cat >"$src/go.mod" <<GOMOD
module gaudi3.local/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 $v

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $v
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $v
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $v
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $v
)
GOMOD
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$src" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$dir/etcd" go.etcd.io/etcd/server/v3) \
    || die "building etcd ${ETCD_VERSION} failed (see above)"
  link etcd "$dir"
}

go_install() { # go_install NAME VERSION PKG LDFLAGS
  local name=$1 version=$2 pkg=$3 ld=$4
  local dir="$TOOLS/$name-$version"
  if have "$dir" "$name"; then link "$name" "$dir"; return; fi
  need_go
  say "installing $name ${version} with go install"
  mkdir -p "$dir"
  GOBIN="$dir" go install -trimpath -ldflags "-s -w $ld" "$pkg@$version" \
    || die "go install $pkg@$version failed (see above)"
  link "$name" "$dir"
}

module_dir() { # module_dir MODULE@VERSION: its folder in the Go module cache (downloaded if missing)
  need_go
  local json d
  json=$(cd "$TOOLS" && go mod download -json "$1") \
    || die "could not download $1 from the Go module proxy: $(sed -nE 's/.*"Error": "(.*)".*/\1/p' <<<"$json")"
  d=$(sed -nE 's/.*"Dir": "(.*)".*/\1/p' <<<"$json")
  [ -d "$d" ] || die "no folder for $1 in the Go module cache"
  echo "$d"
}

# kubeconform cannot fetch its schemas here: make them from the Kubernetes module's own
# OpenAPI document and from the Prometheus Operator's CRDs, once per pinned version, and
# link the current ones as $CACHE/kubeconform/{kubernetes,prometheus-operator}.
build_kubeschemas() {
  local dir="$CACHE/kubeconform/kubernetes-$K8S_VERSION"
  if [ ! -f "$dir/.complete" ]; then
    say "making kubeconform schemas for Kubernetes ${K8S_VERSION} from its OpenAPI document"
    local kdir; kdir=$(module_dir "k8s.io/kubernetes@${K8S_VERSION}")
    rm -rf "$dir"
    python3 "$HERE/kubeschemas.py" kubernetes "$kdir/api/openapi-spec/swagger.json" "$dir" \
      || die "making the Kubernetes schemas failed"
    touch "$dir/.complete"
  fi
  ln -sfn "kubernetes-$K8S_VERSION" "$CACHE/kubeconform/kubernetes"
  dir="$CACHE/kubeconform/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  if [ ! -f "$dir/.complete" ]; then
    say "making kubeconform schemas for the Prometheus Operator ${PROMETHEUS_OPERATOR_VERSION} CRDs"
    local pdir; pdir=$(module_dir "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}")
    rm -rf "$dir"
    python3 "$HERE/kubeschemas.py" crd "$dir" "$pdir"/jsonnet/prometheus-operator/*-crd.json \
      || die "making the Prometheus Operator schemas failed"
    touch "$dir/.complete"
  fi
  ln -sfn "prometheus-operator-$PROMETHEUS_OPERATOR_VERSION" "$CACHE/kubeconform/prometheus-operator"
}

# The pinned Kubernetes' own OpenAPI documents, for hack/crdgen.py (`make crd`): the
# PodTemplateSpec schema of the CRD's spec.template is generated from them.
install_openapi() {
  local dir="$CACHE/openapi/kubernetes-$K8S_VERSION"
  if [ ! -f "$dir/VERSION" ]; then
    say "copying the OpenAPI documents of Kubernetes ${K8S_VERSION}"
    local kdir; kdir=$(module_dir "k8s.io/kubernetes@${K8S_VERSION}")
    rm -rf "$dir"; mkdir -p "$dir/v3"
    cp "$kdir/api/openapi-spec/swagger.json" "$dir/"
    cp "$kdir/api/openapi-spec/v3/api__v1_openapi.json" "$dir/v3/"
    chmod -R u+w "$dir"
    echo "$K8S_VERSION" >"$dir/VERSION"
  fi
  ln -sfn "kubernetes-$K8S_VERSION" "$CACHE/openapi/kubernetes"
}

# kstatus: what Flux's health checks compute (Current, InProgress, Failed) for each JSON
# object on stdin, one line each; the GitOps tests check the operator's status with it.
build_kstatus() {
  local dir="$TOOLS/kstatus-$FLUX_KSTATUS_VERSION"
  if have "$dir" kstatus; then link kstatus "$dir"; return; fi
  need_go
  say "building kstatus from github.com/fluxcd/cli-utils ${FLUX_KSTATUS_VERSION}"
  local src="$dir/src"
  rm -rf "$src"; mkdir -p "$src"
  cat >"$src/go.mod" <<GOMOD
module gaudi3.local/kstatus

go 1.26

require github.com/fluxcd/cli-utils $FLUX_KSTATUS_VERSION
GOMOD
  cat >"$src/main.go" <<'GO'
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func main() {
	in, out := json.NewDecoder(os.Stdin), json.NewEncoder(os.Stdout)
	for in.More() {
		var raw json.RawMessage
		if err := in.Decode(&raw); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
		// Unstructured's own decoder keeps integers as int64, as kstatus expects.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
		_ = out.Encode(map[string]string{"status": string(res.Status), "message": res.Message})
	}
}
GO
  (cd "$src" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$dir/kstatus" .) \
    || die "building kstatus ${FLUX_KSTATUS_VERSION} failed (see above)"
  link kstatus "$dir"
}

# promtool ships in the same package: the alert rules' tests run it.
link_prometheus() {
  ln -sfn "$(command -v prometheus)" "$BIN/prometheus"
  if command -v promtool >/dev/null 2>&1; then ln -sfn "$(command -v promtool)" "$BIN/promtool"; fi
}

# Kueue's manager, plus the CRDs and webhook manifests of the same module version: the
# local cluster installs those from here, so nothing at run time needs the module cache.
build_kueue() {
  local dir="$TOOLS/kueue-$KUEUE_VERSION"
  if have "$dir" kueue && [ -f "$dir/config/webhook/manifests.yaml" ]; then
    link kueue "$dir"; return
  fi
  go_install kueue "$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}"
  local src
  src=$(cd "$dir" && go mod download -json "sigs.k8s.io/kueue@${KUEUE_VERSION}" | sed -nE 's/.*"Dir": "(.*)".*/\1/p')
  [ -d "$src/config/components" ] || die "could not find sigs.k8s.io/kueue@${KUEUE_VERSION} in the Go module cache"
  rm -rf "$dir/config"; mkdir -p "$dir/config/crd" "$dir/config/webhook"
  cp "$src"/config/components/crd/bases/*.yaml "$dir/config/crd/"
  cp "$src/config/components/webhook/manifests.yaml" "$dir/config/webhook/"
  chmod -R u+w "$dir/config"
}

# The Kubeflow Training Operator (v1, PyTorchJob), the reconcile benchmark's peer, and the
# CRDs of the same module version (applied at run time from here). The module has no
# version variable to set; the binary is renamed from training-operator.v1.
build_kubeflow_training_operator() {
  local v=$KUBEFLOW_TRAINING_OPERATOR_VERSION
  local dir="$TOOLS/kubeflow-training-operator-$v"
  if have "$dir" kubeflow-training-operator && [ -f "$dir/crds/kubeflow.org_pytorchjobs.yaml" ]; then
    link kubeflow-training-operator "$dir"; return
  fi
  need_go
  say "installing the Kubeflow Training Operator ${v} with go install"
  mkdir -p "$dir"
  GOBIN="$dir" go install -trimpath -ldflags "-s -w" \
    "github.com/kubeflow/training-operator/cmd/training-operator.v1@${v}" \
    || die "go install github.com/kubeflow/training-operator/cmd/training-operator.v1@${v} failed (see above)"
  mv "$dir/training-operator.v1" "$dir/kubeflow-training-operator"
  local src; src=$(module_dir "github.com/kubeflow/training-operator@${v}")
  rm -rf "$dir/crds"; mkdir -p "$dir/crds"
  cp "$src"/manifests/base/crds/kubeflow.org_*.yaml "$dir/crds/"
  chmod -R u+w "$dir/crds"
  link kubeflow-training-operator "$dir"
}

install_prometheus() {
  if ! command -v prometheus >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 \
      || die "prometheus is not installed and there is no apt-get: install Prometheus 2.x or 3.x and put it on PATH"
    apt_install prometheus
    # The package's own service is not used: the cluster runs Prometheus on a free port.
    if command -v service >/dev/null 2>&1; then $(sudo_cmd) service prometheus stop >/dev/null 2>&1 || true; fi
  fi
  link_prometheus
}

sudo_cmd() { [ "$(id -u)" -eq 0 ] || echo sudo; }

# apt_install PKG...: install Debian packages (one apt-get update per run). Under a lock:
# dpkg allows one install at a time, and `make -j` may run two toolchain.sh at once.
apt_install() {
  command -v apt-get >/dev/null 2>&1 \
    || die "$* missing and there is no apt-get: install $* by hand"
  local sudo; sudo=$(sudo_cmd)
  exec 9>"$CACHE/.apt.lock"
  flock 9
  if [ -z "${_apt_updated:-}" ]; then
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
    _apt_updated=1
  fi
  say "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
  flock -u 9
}

# Real nodes: containerd + runc, the CNI loopback plugin and a static busybox (the
# locally built sandbox and test images are made from it). Each node runs its own
# containerd, so the package's service is stopped.
install_node_runtime() {
  local want=()
  command -v containerd >/dev/null 2>&1 || want+=(containerd)
  command -v runc >/dev/null 2>&1 || want+=(runc)
  [ -x /usr/lib/cni/loopback ] || want+=(containernetworking-plugins)
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || want+=(busybox-static)
  if [ ${#want[@]} -gt 0 ]; then
    apt_install "${want[@]}"
    if command -v service >/dev/null 2>&1; then $(sudo_cmd) service containerd stop >/dev/null 2>&1 || true; fi
  fi
  for n in containerd ctr runc; do ln -sfn "$(command -v $n)" "$BIN/$n"; done
}

# Daemonless image builds (hack/build-images.sh): buildah and mmdebstrap from Debian.
install_image_tools() {
  local want=()
  command -v buildah >/dev/null 2>&1 || want+=(buildah)
  command -v mmdebstrap >/dev/null 2>&1 || want+=(mmdebstrap)
  [ ${#want[@]} -eq 0 ] || apt_install "${want[@]}"
}

# `make push` and the registry test copy image archives to a registry with skopeo.
install_skopeo() {
  command -v skopeo >/dev/null 2>&1 || apt_install skopeo
  ln -sfn "$(command -v skopeo)" "$BIN/skopeo"
}

# actionlint runs shellcheck on the workflows' `run:` scripts when it is on PATH.
install_shellcheck() {
  command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck
}

# CoreDNS with the plugins the real nodes' Corefile uses (realnodes.py: bind, ready, errors,
# hosts, kubernetes), compiled in as CoreDNS documents for custom builds: a main that
# imports coremain and those plugins and sets their order (the order of CoreDNS's own
# plugin.cfg). The full plugin set (every cloud DNS API, etcd, dnstap, ...) costs 60 % more
# CPU to build. A directive the Corefile gains must be added here.
build_coredns() {
  local dir="$TOOLS/coredns-$COREDNS_VERSION-slim"
  if have "$dir" coredns; then link coredns "$dir"; return; fi
  need_go
  say "building CoreDNS ${COREDNS_VERSION} (bind, ready, errors, hosts, kubernetes) from the Go modules"
  local src="$dir/src"
  rm -rf "$src"; mkdir -p "$src"
  cat >"$src/go.mod" <<GOMOD
module gaudi3.local/coredns

go 1.25

require github.com/coredns/coredns $COREDNS_VERSION
GOMOD
  cat >"$src/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"bind", "ready", "errors", "hosts", "kubernetes"}
}

func main() { coremain.Run() }
GO
  (cd "$src" && go mod tidy && go build -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" -o "$dir/coredns" .) \
    || die "building CoreDNS ${COREDNS_VERSION} failed (see above)"
  link coredns "$dir"
}

# CNCF distribution's registry: the local cluster's OCI registry (`--registry`).
build_registry() {
  go_install registry "$REGISTRY_VERSION" github.com/distribution/distribution/v3/cmd/registry \
    "-X github.com/distribution/distribution/v3/version.version=${REGISTRY_VERSION}"
}

build_actionlint() {
  go_install actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint \
    "-X github.com/rhysd/actionlint.version=${ACTIONLINT_VERSION#v}"
}

# -- what to build, and the jobs that build it --------------------------------------------

# `make demo`: the control plane, kwok, etcd, Prometheus and the real nodes' parts.
DEMO_SET="kubernetes etcd kwok kubelet coredns prometheus node-runtime image-tools"
# `make test` (and `make setup`): everything the suite and `make lint` use.
ALL_SET="$DEMO_SET helm helm-docs kubeconform kubeschemas openapi kstatus kueue registry actionlint skopeo"
KNOWN="$ALL_SET kubeflow-training-operator"

LIST_ONLY=""
if [ "${1:-}" = "--list" ]; then LIST_ONLY=1; shift; fi
WANTED=" "
# shellcheck disable=SC2048 # tool names are single words; no arguments means `all`
for t in ${*:-all}; do
  case $t in
    all) WANTED+="$ALL_SET " ;;
    demo) WANTED+="$DEMO_SET " ;;
    *) case " $KNOWN " in
         *" $t "*) WANTED+="$t " ;;
         *) die "unknown tool '$t' (known: $KNOWN; sets: all, demo)" ;;
       esac ;;
  esac
done
wanted() { case "$WANTED" in *" $1 "*) return 0 ;; esac; return 1; }
if [ -n "$LIST_ONLY" ]; then # `--list SET|TOOL…`: the tools it names, one a line
  for t in $KNOWN; do if wanted "$t"; then echo "$t"; fi; done
  exit 0
fi

# One job per Go build (kubernetes, kubelet and kwok share one), one for Debian's packages
# and one per module-cache copy. Go jobs are listed longest first (cold times in
# docs/development.md), so the long pole starts at once.
job_k8s() { build_k8s; }
job_etcd() { build_etcd; }
job_kueue() { build_kueue; }
job_kubeflow_training_operator() { build_kubeflow_training_operator; }
job_coredns() { build_coredns; }
job_helm() {
  go_install helm "$HELM_VERSION" helm.sh/helm/v4/cmd/helm \
    "-X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}"
}
job_helm_docs() {
  go_install helm-docs "$HELM_DOCS_VERSION" github.com/norwoodj/helm-docs/cmd/helm-docs \
    "-X main.version=${HELM_DOCS_VERSION#v}"
}
job_kubeconform() {
  go_install kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform \
    "-X main.version=${KUBECONFORM_VERSION}"
}
job_kstatus() { build_kstatus; }
job_registry() { build_registry; }
job_actionlint() { build_actionlint; }
job_kubeschemas() { build_kubeschemas; }
job_openapi() { install_openapi; }
job_debian() {
  if wanted prometheus; then install_prometheus; fi
  if wanted node-runtime; then install_node_runtime; fi
  if wanted image-tools; then install_image_tools; fi
  if wanted skopeo; then install_skopeo; fi
  if wanted actionlint; then install_shellcheck; fi
}

GO_JOBS=()
for j in k8s kueue kubeflow-training-operator coredns helm etcd registry actionlint kstatus helm-docs kubeconform; do
  case $j in
    k8s) { wanted kubernetes || wanted kubelet || wanted kwok; } && GO_JOBS+=(k8s) ;;
    *) if wanted "$j"; then GO_JOBS+=("$j"); fi ;;
  esac
done
OTHER_JOBS=()
for t in prometheus node-runtime image-tools skopeo actionlint; do
  if wanted "$t"; then OTHER_JOBS+=(debian); break; fi
done
for j in kubeschemas openapi; do if wanted "$j"; then OTHER_JOBS+=("$j"); fi; done

duration() { local s=$1; if [ "$s" -ge 60 ]; then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi; }
# A job's CPU time (its processes' user + sys, from `times`): what it costs whatever else
# shares the machine.
cpu_seconds() { awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }; printf "%d", n }' "$1" 2>/dev/null || echo 0; }

declare -A PID_OF=() START_OF=()
FAILED=()
BUILT=0
T0=$SECONDS

start_job() { # in the background, its output in its log, its CPU time in NAME.times
  local name=$1
  rm -f "$LOGS/$name.times"
  ( IN_JOB=1; "job_${name//-/_}"; times >"$LOGS/$name.times" ) >"$LOGS/$name.log" 2>&1 &
  PID_OF[$name]=$!
  START_OF[$name]=$SECONDS
}

# A job that built something wrote to its log (a cached tool is only linked, silently).
finish_job() { # NAME EXIT_CODE
  local name=$1 rc=$2 took
  took=$(duration $((SECONDS - START_OF[$name])))
  unset "PID_OF[$name]"
  if [ "$rc" -ne 0 ]; then
    FAILED+=("$name")
    printf '\033[31m[toolchain] error:\033[0m %s failed after %s; the end of %s:\n' "$name" "$took" "$LOGS/$name.log" >&2
    tail -25 "$LOGS/$name.log" >&2
  elif [ -s "$LOGS/$name.log" ]; then
    BUILT=$((BUILT + 1))
    say "$name: done in $took ($(duration "$(cpu_seconds "$LOGS/$name.times")") of CPU)"
  fi
}

running_go() { local n=0 j; for j in "${GO_JOBS_STARTED[@]}"; do [ -z "${PID_OF[$j]:-}" ] || n=$((n + 1)); done; echo "$n"; }

GO_JOBS_STARTED=()
if [ "$TOOLCHAIN_JOBS" -le 1 ] || ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  # One at a time (bash before 5.1 has no `wait -n -p`).
  for j in "${GO_JOBS[@]}" "${OTHER_JOBS[@]}"; do
    start_job "$j"
    rc=0; wait "${PID_OF[$j]}" || rc=$?
    finish_job "$j" "$rc"
    [ ${#FAILED[@]} -eq 0 ] || break
  done
else
  for j in "${OTHER_JOBS[@]}"; do start_job "$j"; done
  next=0
  while :; do
    while [ ${#FAILED[@]} -eq 0 ] && [ "$next" -lt ${#GO_JOBS[@]} ] && [ "$(running_go)" -lt "$TOOLCHAIN_JOBS" ]; do
      GO_JOBS_STARTED+=("${GO_JOBS[$next]}")
      start_job "${GO_JOBS[$next]}"
      next=$((next + 1))
    done
    [ ${#PID_OF[@]} -gt 0 ] || break
    done_pid=""; rc=0
    wait -n -p done_pid "${PID_OF[@]}" || rc=$?
    for j in "${!PID_OF[@]}"; do
      if [ "${PID_OF[$j]}" = "$done_pid" ]; then finish_job "$j" "$rc"; fi
    done
  done
fi
[ ${#FAILED[@]} -eq 0 ] || die "failed: ${FAILED[*]} (logs in $LOGS)"
if [ "$BUILT" -gt 0 ]; then
  say "ready: $BIN (built by $BUILT job(s) in $(duration $((SECONDS - T0))))"
else
  say "ready: $BIN"
fi
