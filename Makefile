# The two commands a new user runs: `make demo` and `make test`. Everything they need
# (the virtualenv, the Go-built Kubernetes binaries, Prometheus) is built on first use and
# cached under ~/.cache so the second run is quick: `make demo` builds only the demo's
# tools (hack/toolchain.sh demo) and Python packages (venv-demo), `make setup` (which
# `make test` calls) all of them. The virtualenv, the Go builds and (for the demo) the
# training image build at the same time.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# `make test` runs three pytest-xdist workers, each with its own local cluster: most
# cluster tests wait on the control plane's timers, not on CPU (the load average stayed
# near 2 with two workers), so three overlap on two cores: 11 m 21 s for the parallel part
# against 14 m 24 s with two (docs/development.md).
# TEST_WORKERS=1 runs everything in one process, in collection order.
TEST_WORKERS ?= 3
XDIST = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
GAUDI3_CACHE ?= $(HOME)/.cache/gaudi3
TOOLS := $(GAUDI3_CACHE)/bin
CHART := charts/gaudi-operator
CHART_VERSION = $(shell sed -nE 's/^version: *//p' $(CHART)/Chart.yaml)
APP_VERSION = $(shell sed -nE 's/^appVersion: *"?([^"]*)"?.*/\1/p' $(CHART)/Chart.yaml)
DIST ?= dist
# `make push` / `make chart-push`: REGISTRY=host[:port][/namespace]; images go to
# REGISTRY/<image>:TAG (TAG: the chart's appVersion, which its image defaults to), the
# chart to oci://CHART_REGISTRY/gaudi-operator:<chart version>.
REGISTRY ?=
TAG ?= $(APP_VERSION)
CHART_REGISTRY ?= $(REGISTRY)/charts
# A registry on loopback (the local cluster's) speaks plain HTTP.
PLAIN_HTTP = $(if $(filter 127.% localhost localhost:%,$(firstword $(subst /, ,$(CHART_REGISTRY)))),--plain-http)
# The demo's real part builds the CPU training image (needs root): alongside the toolchain.
DEMO_IMAGE = $(if $(filter 0,$(shell id -u)),demo-image)

.PHONY: setup toolchain toolchain-demo chart-tools lint-tools images demo-image push chart-push venv venv-demo demo test test-unit test-cluster test-training lint chart chart-docs crd docs dashboards clean-cluster help

help:
	@echo "make demo     start the local Gaudi cluster and show the operator at work"
	@echo "make test     run the whole test suite (unit, training, real-cluster)"
	@echo "make setup    create .venv and build the whole cached toolchain (make test calls it)"
	@echo "make lint     ruff, import-linter contracts, hadolint, helm lint --strict, kubeconform on the rendered chart, actionlint"
	@echo "make chart    package the Helm chart into $(DIST)/gaudi-operator-<version>.tgz"
	@echo "make push REGISTRY=host[:port][/ns] [TAG=...]  push both images with skopeo (no Docker)"
	@echo "make chart-push REGISTRY=host[:port][/ns]      push the packaged chart as an OCI artifact (helm push)"
	@echo "make dashboards  rebuild the chart's Grafana dashboards from dashboards/build.py"
	@echo "make crd      regenerate the CRD's spec.template schema from the pinned Kubernetes OpenAPI, and the API reference"
	@echo "make docs     build the documentation site into site/ (MkDocs Material, strict)"
	@echo "make images   build the operator and CPU training images without Docker"

# The virtualenv (pip: network-bound) and the Go builds (CPU-bound) at once.
setup:
	@$(MAKE) --no-print-directory -j2 venv toolchain

venv: $(STAMP)

# The demo's own, smaller set: the operator, kubectl gtj and the dev tools, without torch
# (PyPI's Linux wheel brings about 4 GB of CUDA libraries the demo never loads: its training
# runs in the CPU training image), the frameworks and the test tools. On a cold machine pip
# then takes seconds instead of six minutes of the two cores the Go build needs. The full
# install (`venv`, which `make test` runs) adds the rest to the same .venv.
DEMO_STAMP := $(VENV)/.installed-demo
venv-demo: $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml devtools/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ] && [ $(STAMP) -nt devtools/pyproject.toml ]; then exit 0; fi; \
	  start=$$(date +%s); echo "[venv] installing the operator, kubectl gtj and the dev tools into $(VENV) with pip"; \
	  test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || exit 1; \
	  $(BIN)/python -m pip install -q --upgrade pip || exit 1; \
	  $(BIN)/python -m pip install -q -e '.[operator,cli]' || exit 1; \
	  $(BIN)/python -m pip install -q -e ./devtools || exit 1; \
	  echo "[venv] done in $$(( $$(date +%s) - start ))s"
	@touch $(DEMO_STAMP)

$(STAMP): pyproject.toml devtools/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	@start=$$(date +%s); echo "[venv] installing the project into $(VENV) with pip"; \
	  test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || exit 1; \
	  $(BIN)/python -m pip install -q --upgrade pip || exit 1; \
	  $(BIN)/python -m pip install -q -e '.[operator,training,frameworks,cli,dev]' || exit 1; \
	  $(BIN)/python -m pip install -q --no-deps -e ./devtools || exit 1; \
	  echo "[venv] done in $$(( $$(date +%s) - start ))s"
	@touch $(STAMP)

# Every tool (make test, make setup); `toolchain-demo` only the demo's.
toolchain:
	@bash hack/toolchain.sh all

toolchain-demo:
	@bash hack/toolchain.sh demo

# What the chart checks need, without the Kubernetes build.
chart-tools:
	@bash hack/toolchain.sh helm helm-docs kubeconform kubeschemas openapi

# make lint: the chart's tools and actionlint.
lint-tools:
	@bash hack/toolchain.sh helm helm-docs kubeconform kubeschemas openapi actionlint

images:
	@bash hack/toolchain.sh image-tools
	@bash hack/build-images.sh

demo-image:
	@bash hack/toolchain.sh image-tools
	@start=$$(date +%s); bash hack/build-images.sh training-cpu && echo "[images] training image ready in $$(( $$(date +%s) - start ))s"

demo:
	@$(MAKE) --no-print-directory -j3 venv-demo toolchain-demo $(DEMO_IMAGE)
	$(BIN)/gaudi3 demo

# Both images, as hack/build-images.sh builds them, to REGISTRY with skopeo.
push:
	@test -n "$(REGISTRY)" || { echo "error: set REGISTRY=host[:port][/namespace], e.g. make push REGISTRY=ghcr.io/you"; exit 2; }
	@bash hack/toolchain.sh image-tools skopeo
	bash hack/push-images.sh $(REGISTRY) $(TAG)

# The packaged chart as an OCI artifact: helm install oci://$(CHART_REGISTRY)/gaudi-operator.
chart-push: chart
	@test -n "$(REGISTRY)" || { echo "error: set REGISTRY=host[:port][/namespace], e.g. make chart-push REGISTRY=ghcr.io/you"; exit 2; }
	$(TOOLS)/helm push $(DIST)/gaudi-operator-$(CHART_VERSION).tgz oci://$(CHART_REGISTRY) $(PLAIN_HTTP)

# With workers, the tests marked `serial` (the chaos run: see its module) run afterwards,
# alone; "no tests collected" (exit 5) there is fine when PYTEST_ARGS picks none.
test: setup
ifeq ($(XDIST),)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
else
	GAUDI3_SERIAL=skip $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)
	GAUDI3_SERIAL=only $(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]
endif

test-unit: venv lint-tools
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-cluster: setup
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

test-training: venv
	$(BIN)/python -m pytest -m training $(PYTEST_ARGS)

lint: venv lint-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile training-image/Dockerfile
	bash hack/check-chart.sh
	$(TOOLS)/actionlint .github/workflows/*.yml

# A versioned package whose files/crds/ holds the CRD file itself, not the repository's link.
chart:
	@bash hack/toolchain.sh helm
	$(TOOLS)/helm lint --strict $(CHART)
	@mkdir -p $(DIST)
	$(TOOLS)/helm package $(CHART) -d $(DIST)
	@tar -tvzf $(DIST)/gaudi-operator-$(CHART_VERSION).tgz | grep -qE '^-.* gaudi-operator/files/crds/gauditrainingjobs.yaml$$' \
	  || { echo "error: the package has no files/crds/gauditrainingjobs.yaml"; exit 1; }

# The chart README's values table, from the `# --` comments in values.yaml.
chart-docs:
	@bash hack/toolchain.sh helm-docs
	$(TOOLS)/helm-docs --chart-search-root charts

# spec.template of the CRD: the PodTemplateSpec schema of the pinned Kubernetes, from its
# OpenAPI document (tests/unit/api/test_crd_template.py fails when the file is stale); then
# the API reference from the whole CRD (tests/unit/docs/test_api_reference.py, the same).
crd: venv
	@bash hack/toolchain.sh openapi
	$(BIN)/python hack/crdgen.py $(GAUDI3_CACHE)/openapi/kubernetes crds/gauditrainingjobs.yaml
	$(BIN)/python hack/apiref.py crds/gauditrainingjobs.yaml docs/reference/api.md

# The documentation site (mkdocs.yml), strict: a warning fails it. `make test` builds it too
# (tests/unit/docs/test_docs_site.py). NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

dashboards: venv
	$(BIN)/python dashboards/build.py

clean-cluster: venv
	-$(BIN)/gaudi3 cluster down --all
