# mlcycle — one entry point for setting up, testing and running the project locally.
# `make help` lists the targets. Everything runs from the repository root.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# uv resolves and installs the pinned lock in seconds; pinned itself so every machine gets the same.
UV_VERSION := 0.13.9
SETUP_STAMP := $(VENV)/.installed
PYTEST_ARGS ?= --durations=30
DEMO_ARGS ?=
HARNESS := $(PYTHON) -m tests.harness

.PHONY: help setup system-deps binaries cluster-up cluster-down images kind-up kind-down crds check-generated lint test test-unit test-integration test-e2e test-cluster demo clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(SETUP_STAMP): requirements/dev.lock operator/pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python -r requirements/dev.lock
	touch $@

setup: $(SETUP_STAMP) ## create .venv with both packages (editable) and the test tools, from the lock

system-deps: ## install the Debian packages the tests use (only what is missing)
	bash hack/install-system-deps.sh

binaries: ## build (or reuse from ~/.cache/mlcycle) etcd, kube-*, kwok, kubectl and helm
	$(HARNESS) build

cluster-up: binaries ## start the local control plane in the background and print its KUBECONFIG
	$(HARNESS) up

cluster-down: ## stop every process cluster-up (or demo) started
	$(HARNESS) down

images: setup system-deps binaries ## kind's node image, the chart's Prometheus, metrics-server and KubeRay's operator (from Go modules) and the two project images, nothing pulled
	$(BIN)/python -m tests.harness images

kind-up: images ## a kind cluster from kind-config.yaml, its node image built here (prints KUBECONFIG)
	$(BIN)/python -m tests.harness kind-up

kind-down: setup ## delete the cluster kind-up made
	$(BIN)/python -m tests.harness kind-down

CRD_DIRS := crds charts/mlcycle/crds

crds: setup ## regenerate the CRDs from the operator's API models
	$(BIN)/python -m mlcycle_operator.api.crd $(CRD_DIRS)

check-generated: setup ## fail when the checked-in CRDs differ from the API models
	$(BIN)/python -m mlcycle_operator.api.crd --check $(CRD_DIRS)

lint: setup check-generated ## ruff, the import-linter boundaries, and generated files up to date
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test-unit: setup ## unit tests (no cluster, no network)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup system-deps binaries ## integration tests against the local control plane
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup system-deps binaries ## end-to-end tests
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

test-cluster: images ## the cluster tier: real containers on a kind cluster built here
	$(BIN)/pytest tests/cluster $(PYTEST_ARGS)

test: setup system-deps lint binaries images ## everything CI runs: lint, then unit, cluster, integration and e2e tests
	$(BIN)/pytest tests $(PYTEST_ARGS)

demo: setup system-deps binaries ## the main job: the churn example's closed loop on a local control plane
	$(BIN)/python hack/demo.py $(DEMO_ARGS)

clean: ## remove the virtual environment and caches in the repo (not the binary cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
