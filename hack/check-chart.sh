#!/usr/bin/env bash
# The chart's checks that need no cluster (run by `make lint`): `helm lint --strict`, the
# manifests `helm template` renders for every values set in charts/gaudi-operator/ci/ and
# the examples/ validated by `kubeconform -strict` against schemas made offline
# (hack/kubeschemas.py; toolchain.sh makes the Kubernetes and Prometheus Operator ones),
# and the chart README up to date with values.yaml.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GAUDI3_CACHE:-$HOME/.cache/gaudi3}"
BIN="$CACHE/bin"
CHART="$ROOT/charts/gaudi-operator"
PY="$ROOT/.venv/bin/python"; [ -x "$PY" ] || PY=python3

for t in helm helm-docs kubeconform; do
  [ -x "$BIN/$t" ] || { echo "error: $BIN/$t missing: run make chart-tools" >&2; exit 1; }
done
[ -d "$CACHE/kubeconform/kubernetes" ] || { echo "error: no kubeconform schemas: run make chart-tools" >&2; exit 1; }

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PY" "$ROOT/hack/kubeschemas.py" crd "$tmp/crds" "$ROOT"/crds/*.yaml >/dev/null
tpl='{{ .ResourceKind }}{{ .KindSuffix }}{{ .StrictSuffix }}.json'
kubeconform() {
  "$BIN/kubeconform" -strict -summary \
    -schema-location "$CACHE/kubeconform/kubernetes/$tpl" \
    -schema-location "$CACHE/kubeconform/prometheus-operator/$tpl" \
    -schema-location "$tmp/crds/$tpl" "$@"
}

"$BIN/helm" lint --strict "$CHART"
for values in "$CHART"/ci/*-values.yaml; do
  echo "== helm template -f ${values#"$ROOT"/} | kubeconform -strict"
  "$BIN/helm" template gaudi "$CHART" -n gaudi-system --include-crds -f "$values" >"$tmp/out.yaml"
  kubeconform "$tmp/out.yaml"
done
echo "== kubeconform -strict examples/ (the GaudiTrainingJob files; examples/kueue/ holds Kueue's)"
mapfile -t jobs < <(grep -l "^kind: GaudiTrainingJob" "$ROOT"/examples/*.yaml "$ROOT"/examples/kueue/*.yaml)
kubeconform "${jobs[@]}"

"$BIN/helm-docs" --chart-search-root "$ROOT/charts" --dry-run 2>/dev/null >"$tmp/README.md"
diff -u "$CHART/README.md" "$tmp/README.md" \
  || { echo "error: charts/gaudi-operator/README.md is stale: run make chart-docs" >&2; exit 1; }
echo "chart checks passed"
