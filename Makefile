# The two commands a new user runs: `make demo` and `make test`. Everything they need
# (the virtualenv, the Go-built Kubernetes binaries, Prometheus) is installed by
# `make setup`, which both call, and cached under ~/.cache so the second run is quick.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup toolchain images venv demo test test-unit test-cluster test-training lint clean-cluster help

help:
	@echo "make demo     start the local Gaudi cluster and show the operator at work"
	@echo "make test     run the whole test suite (unit, training, real-cluster)"
	@echo "make setup    create .venv and build the cached toolchain (called by both)"
	@echo "make lint     ruff, import-linter contracts, hadolint, helm lint"
	@echo "make images   build the operator and CPU training images without Docker"

setup: venv toolchain

venv: $(STAMP)

$(STAMP): pyproject.toml devtools/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[operator,training,dev]'
	# The dev extra installs the dev tools from devtools/; make them editable too.
	$(BIN)/python -m pip install -q --no-deps -e ./devtools
	@touch $(STAMP)

toolchain:
	@bash hack/toolchain.sh

images: toolchain
	@bash hack/build-images.sh

demo: setup
	$(BIN)/gaudi3 demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv
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
	$(HOME)/.cache/gaudi3/bin/helm lint charts/gaudi-operator

clean-cluster: venv
	-$(BIN)/gaudi3 cluster down --all
