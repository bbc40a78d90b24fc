# clipserve — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Cache for expensive, version-keyed builds (helm, control-plane binaries); outside the repo
# so a second run is fast while a fresh machine still builds from scratch.
export CLIPSERVE_CACHE ?= $(HOME)/.cache/clipserve

PORT  ?= 3000
MODEL ?= ViT-B-32:openai

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(VENV)/.runtime $@

.PHONY: install
install: $(VENV)/.runtime ## create .venv and install the service

.PHONY: dev
dev: $(VENV)/.dev ## create .venv and install everything needed for the tests

.PHONY: serve
serve: $(VENV)/.runtime ## install and serve MODEL (default ViT-B-32:openai) on PORT (3000)
	$(VENV)/bin/clipserve serve --model '$(MODEL)' --host 0.0.0.0 --port $(PORT)

.PHONY: tools
tools: ## fetch/build the real test parts: helm, control plane, real node, metrics pipeline, prometheus, chromium, podman (cached)
	bash scripts/install-helm.sh
	bash scripts/install-podman.sh
	bash scripts/install-crd-validators.sh
	bash scripts/install-prometheus.sh
	bash scripts/install-browser.sh
	bash scripts/build-k8s.sh
	bash scripts/build-node.sh
	bash scripts/build-netpol.sh
	bash scripts/build-metrics.sh

.PHONY: images
images: ## build the clipserve and clipserve-operator images with podman (cached by content)
	bash scripts/build-images.sh

.PHONY: test
test: ## install everything, build the images, lint, and run every test (each phase timed)
	PY=$(PY) MAKE=$(MAKE) bash scripts/test-all.sh

# What needs no image build, no real node and no browser: unit, in-process API, real server
# processes, chart (helm) and control-plane tests.
FAST := not images and not realnode and not browser

.PHONY: test-fast
test-fast: dev ## the quick loop: every test but the image, real-node and browser ones
	bash scripts/install-helm.sh
	bash scripts/install-crd-validators.sh
	bash scripts/install-prometheus.sh
	bash scripts/build-k8s.sh
	$(PY) -m pytest -m '$(FAST)'

.PHONY: lint
lint: dev ## ruff check, ruff format --check and mypy (service and operator)
	$(VENV)/bin/ruff check service operator tests scripts
	$(VENV)/bin/ruff format --check service operator tests scripts
	$(VENV)/bin/mypy

.PHONY: cluster
cluster: dev ## start the local cluster: kwok GPU/CPU pools + a real node running the images (prints KUBECONFIG)
	bash scripts/build-k8s.sh
	bash scripts/build-node.sh
	bash scripts/build-netpol.sh
	$(PY) -m tests.cluster up

.PHONY: cluster-down
cluster-down: ## stop the local cluster (the real node first, restoring the machine)
	$(PY) -m tests.cluster down

.PHONY: manifests
manifests: ## regenerate manifests/{crd,rbac,operator} from charts/clipserve-operator
	bash manifests/generate.sh

$(VENV)/.bench: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -e '.[bench]'
	touch $(VENV)/.runtime $@

.PHONY: bench
bench: $(VENV)/.bench ## serve random-weights ViT-B-32, load it, compare with the raw model (bench-results/)
	mkdir -p bench-results
	$(VENV)/bin/clipserve bench --spawn --model ViT-B-32:random \
	  --json bench-results/bench.json --plot bench-results/bench.png
