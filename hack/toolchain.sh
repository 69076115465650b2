#!/usr/bin/env bash
# Builds (once) and caches the local cluster's toolchain under ~/.cache/gaudi3:
# Kubernetes control-plane binaries and kubectl from the official Go modules, etcd,
# kwok, helm, helm-docs, kubeconform, kstatus (Flux's status library), Kueue and CoreDNS via
# the Go module proxy, kubelet for the real nodes from the same Kubernetes modules,
# Prometheus, containerd, runc, the CNI plugins and the image tools from Debian,
# kubeconform's JSON schemas from the pinned modules' OpenAPI documents, and
# Kubernetes' OpenAPI documents for `make crd`.
# Every tool lives in a versioned folder; changing a pin rebuilds only that tool.
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
# Only `gaudi3 benchmark reconcile --versus kubeflow` runs it: built on demand, not by default.
KUBEFLOW_TRAINING_OPERATOR_VERSION="${KUBEFLOW_TRAINING_OPERATOR_VERSION:-v1.9.3}"

CACHE="${GAUDI3_CACHE:-$HOME/.cache/gaudi3}"
BIN="$CACHE/bin"
TOOLS="$CACHE/tools"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$BIN" "$TOOLS"

say() { printf '\033[1m[toolchain]\033[0m %s\n' "$*" >&2; }
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

# k8s_build DIR PKG...: build Kubernetes commands into DIR/out from a wrapper module that
# requires the pinned k8s.io/kubernetes, with the same version ldflags for every binary.
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
  {
    echo "module gaudi3.local/kubernetes-build"
    echo
    echo "go $(sed -nE 's/^go ([0-9.]+)$/\1/p' "$kmod")"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    echo "replace ("
    sed -nE 's#^\s*(k8s\.io/[a-z0-9-]+) => \./staging/.*#\1#p' "$kmod" | while read -r m; do
      echo "	$m => $m $staging_v"
    done
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
  mkdir -p "$dir/out"
  (cd "$src" && go build -trimpath -ldflags "-s -w $ld" -o "$dir/out/" "$@") \
    || die "building Kubernetes ${K8S_VERSION} failed (see above)"
}

build_kubernetes() {
  local dir="$TOOLS/kubernetes-$K8S_VERSION"
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  if have "$dir" "${names[@]}"; then
    for n in "${names[@]}"; do link "$n" "$dir"; done
    return
  fi
  need_go
  say "building Kubernetes ${K8S_VERSION} (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) from the Go modules; this takes several minutes on 2 cores"
  k8s_build "$dir" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  for n in "${names[@]}"; do mv "$dir/out/$n" "$dir/$n"; link "$n" "$dir"; done
  rmdir "$dir/out"
  say "Kubernetes: $("$dir/kubectl" version --client 2>/dev/null | head -1)"
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
  if command -v prometheus >/dev/null 2>&1; then
    link_prometheus; return
  fi
  command -v apt-get >/dev/null 2>&1 \
    || die "prometheus is not installed and there is no apt-get: install Prometheus 2.x or 3.x and put it on PATH"
  say "installing Prometheus from Debian's package"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
  # The package's own service is not used: the cluster runs Prometheus on a free port.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || die "apt-get install prometheus failed"
  if command -v service >/dev/null 2>&1; then $sudo service prometheus stop >/dev/null 2>&1 || true; fi
  link_prometheus
}

# The real nodes' kubelet, from the same pinned module and ldflags as the control plane.
build_kubelet() {
  local dir="$TOOLS/kubelet-$K8S_VERSION"
  if have "$dir" kubelet; then link kubelet "$dir"; return; fi
  need_go
  say "building kubelet ${K8S_VERSION} from the Go modules; this takes a few minutes on 2 cores"
  k8s_build "$dir" k8s.io/kubernetes/cmd/kubelet
  mv "$dir/out/kubelet" "$dir/kubelet"; rmdir "$dir/out"
  link kubelet "$dir"
}

# apt_install PKG...: install Debian packages (one apt-get update per run).
apt_install() {
  command -v apt-get >/dev/null 2>&1 \
    || die "$* missing and there is no apt-get: install $* by hand"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${_apt_updated:-}" ]; then
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
    _apt_updated=1
  fi
  say "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
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
    if command -v service >/dev/null 2>&1; then service containerd stop >/dev/null 2>&1 || true; fi
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

want="${*:-kubernetes etcd kwok helm helm-docs kubeconform kubeschemas openapi kstatus kueue prometheus kubelet coredns node-runtime image-tools}"
for t in $want; do
  case $t in
    kubernetes) build_kubernetes ;;
    etcd) build_etcd ;;
    kwok) go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
            "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION}" ;;
    helm) go_install helm "$HELM_VERSION" helm.sh/helm/v4/cmd/helm \
            "-X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}" ;;
    helm-docs) go_install helm-docs "$HELM_DOCS_VERSION" github.com/norwoodj/helm-docs/cmd/helm-docs \
            "-X main.version=${HELM_DOCS_VERSION#v}" ;;
    kubeconform) go_install kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform \
            "-X main.version=${KUBECONFORM_VERSION}" ;;
    kubeschemas) build_kubeschemas ;;
    kstatus) build_kstatus ;;
    openapi) install_openapi ;;
    kueue) build_kueue ;;
    prometheus) install_prometheus ;;
    kubelet) build_kubelet ;;
    coredns) go_install coredns "$COREDNS_VERSION" github.com/coredns/coredns \
               "-X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" ;;
    node-runtime) install_node_runtime ;;
    image-tools) install_image_tools ;;
    kubeflow-training-operator) build_kubeflow_training_operator ;;
    *) die "unknown tool '$t' (known: kubernetes etcd kwok helm helm-docs kubeconform kubeschemas openapi kstatus kueue prometheus kubelet coredns node-runtime image-tools kubeflow-training-operator)" ;;
  esac
done
say "ready: $BIN"
