#!/usr/bin/env bash
# For users with Docker: a kind cluster whose worker nodes advertise fake Intel Gaudi
# capacity, so GaudiTrainingJobs schedule exactly as on real Gaudi 3 nodes (the pods run
# the training image's CPU/gloo fallback, since there is no HPU inside kind).
#
#   hack/kind-up.sh [--name gaudi3] [--workers 2] [--hpus 8]
#   export KUBECONFIG="$(kind get kubeconfig-path 2>/dev/null || echo ~/.kube/config)"
#   helm install gaudi-operator charts/gaudi-operator -n gaudi-system --create-namespace
#
# Not run by the test suite (kind needs a Docker engine); the suite uses the embedded
# local cluster from `gaudi3 cluster up` instead.
set -euo pipefail

name=gaudi3 workers=2 hpus=8
while [ $# -gt 0 ]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --hpus) hpus=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

for t in docker kind kubectl; do
  command -v "$t" >/dev/null || { echo "error: $t is not installed (kind needs Docker, kind and kubectl)" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers: start Docker first" >&2; exit 1; }

if ! kind get clusters | grep -qx "$name"; then
  cfg=$(mktemp)
  { echo "kind: Cluster"; echo "apiVersion: kind.x-k8s.io/v1alpha4"; echo "nodes:"
    echo "- role: control-plane"
    for _ in $(seq "$workers"); do echo "- role: worker"; done; } >"$cfg"
  kind create cluster --name "$name" --config "$cfg" --wait 120s
  rm -f "$cfg"
fi

ctx="kind-$name"
for node in $(kubectl --context "$ctx" get nodes -l '!node-role.kubernetes.io/control-plane' -o name); do
  n=${node#node/}
  kubectl --context "$ctx" label node "$n" --overwrite \
    habana.ai/device.family=gaudi habana.ai/device.type=gaudi3 \
    habana.ai/device.count="$hpus" habana.ai/gaudi.present=true >/dev/null
  kubectl --context "$ctx" taint node "$n" habana.ai/gaudi=present:NoSchedule --overwrite >/dev/null
  # Extended resources the kubelet does not manage are kept as patched (Kubernetes docs:
  # "Advertise Extended Resources for a Node").
  kubectl --context "$ctx" patch node "$n" --subresource=status --type=json -p "[
    {\"op\":\"add\",\"path\":\"/status/capacity/habana.ai~1gaudi\",\"value\":\"$hpus\"}]" >/dev/null
  echo "node $n: habana.ai/gaudi=$hpus"
done
kubectl --context "$ctx" get nodes -o custom-columns='NODE:.metadata.name,HPUS:.status.allocatable.habana\.ai/gaudi'
