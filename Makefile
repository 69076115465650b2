# The two commands a new user runs: `make demo` and `make test`. Everything they need
# (the virtualenv, the Go-built Kubernetes binaries, Prometheus) is installed by
# `make setup`, which both call, and cached under ~/.cache so the second run is quick.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# `make test` runs two pytest-xdist workers, each with its own local cluster: most cluster
# tests wait on the control plane's timers, so two overlap well on two cores.
# TEST_WORKERS=1 runs everything in one process, in collection order.
TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
GAUDI3_CACHE ?= $(HOME)/.cache/gaudi3
TOOLS := $(GAUDI3_CACHE)/bin
CHART := charts/gaudi-operator
CHART_VERSION = $(shell sed -nE 's/^version: *//p' $(CHART)/Chart.yaml)
DIST ?= dist

.PHONY: setup toolchain chart-tools images venv demo test test-unit test-cluster test-training lint chart chart-docs crd docs dashboards clean-cluster help

help:
	@echo "make demo     start the local Gaudi cluster and show the operator at work"
	@echo "make test     run the whole test suite (unit, training, real-cluster)"
	@echo "make setup    create .venv and build the cached toolchain (called by both)"
	@echo "make lint     ruff, import-linter contracts, hadolint, helm lint --strict, kubeconform on the rendered chart"
	@echo "make chart    package the Helm chart into $(DIST)/gaudi-operator-<version>.tgz"
	@echo "make dashboards  rebuild the chart's Grafana dashboards from dashboards/build.py"
	@echo "make crd      regenerate the CRD's spec.template schema from the pinned Kubernetes OpenAPI, and the API reference"
	@echo "make docs     build the documentation site into site/ (MkDocs Material, strict)"
	@echo "make images   build the operator and CPU training images without Docker"

setup: venv toolchain

venv: $(STAMP)

$(STAMP): pyproject.toml devtools/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[operator,training,frameworks,cli,dev]'
	# The dev extra installs the dev tools from devtools/; make them editable too.
	$(BIN)/python -m pip install -q --no-deps -e ./devtools
	@touch $(STAMP)

toolchain:
	@bash hack/toolchain.sh

# What the chart checks need, without the Kubernetes build.
chart-tools:
	@bash hack/toolchain.sh helm helm-docs kubeconform kubeschemas openapi

images: toolchain
	@bash hack/build-images.sh

demo: setup
	$(BIN)/gaudi3 demo

# With workers, the tests marked `serial` (the chaos run: see its module) run afterwards,
# alone; "no tests collected" (exit 5) there is fine when PYTEST_ARGS picks none.
test: setup
ifeq ($(XDIST),)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
else
	GAUDI3_SERIAL=skip $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)
	GAUDI3_SERIAL=only $(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]
endif

test-unit: venv chart-tools
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-cluster: setup
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

test-training: venv
	$(BIN)/python -m pytest -m training $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile training-image/Dockerfile
	bash hack/check-chart.sh

# A versioned package whose files/crds/ holds the CRD file itself, not the repository's link.
chart: chart-tools
	$(TOOLS)/helm lint --strict $(CHART)
	@mkdir -p $(DIST)
	$(TOOLS)/helm package $(CHART) -d $(DIST)
	@tar -tvzf $(DIST)/gaudi-operator-$(CHART_VERSION).tgz | grep -qE '^-.* gaudi-operator/files/crds/gauditrainingjobs.yaml$$' \
	  || { echo "error: the package has no files/crds/gauditrainingjobs.yaml"; exit 1; }

# The chart README's values table, from the `# --` comments in values.yaml.
chart-docs: chart-tools
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
