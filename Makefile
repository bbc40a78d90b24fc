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
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# Three distributions: service/ (clipserve), operator/ (clipserve-operator), client/
# (clipserve-client); the root pyproject.toml holds the tools and the `dev` group. Each
# pyproject.toml states ranges (what a library user needs); the lock files pin every package
# installed here, in the images and in CI (`make lock` re-resolves them on purpose).
DISTS := service/pyproject.toml operator/pyproject.toml client/pyproject.toml
LOCKS := service/requirements.lock operator/requirements.lock client/requirements.lock requirements-dev.lock

$(VENV)/.runtime: service/pyproject.toml service/requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c service/requirements.lock -e ./service
	touch $@

$(VENV)/.dev: pyproject.toml $(DISTS) $(LOCKS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c requirements-dev.lock -e './service[bench,lancedb]' -e ./operator -e ./client --group dev
	touch $(VENV)/.runtime $(VENV)/.bench $@

# uv resolves for every platform (--universal: markers, not this machine's wheels) and Python 3.11.
UV_COMPILE = SSL_CERT_FILE=$${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} \
	$(VENV)/bin/uv pip compile -q --universal --python-version 3.11

.PHONY: lock
lock: ## re-resolve the lock files from the pyproject files (then review and commit them)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q "$$(grep -o '"uv==[^"]*"' pyproject.toml | tr -d '"')"
	$(UV_COMPILE) service/pyproject.toml --all-extras -o service/requirements.lock
	$(UV_COMPILE) operator/pyproject.toml -o operator/requirements.lock
	$(UV_COMPILE) client/pyproject.toml -o client/requirements.lock
	$(UV_COMPILE) $(DISTS) --all-extras --group pyproject.toml:dev -o requirements-dev.lock

.PHONY: install
install: $(VENV)/.runtime ## create .venv and install the service

.PHONY: dev
dev: $(VENV)/.dev ## create .venv and install everything needed for the tests

.PHONY: serve
serve: $(VENV)/.runtime ## install and serve MODEL (default ViT-B-32:openai) on PORT (3000)
	$(VENV)/bin/clipserve serve --model '$(MODEL)' --host 0.0.0.0 --port $(PORT)

.PHONY: tools
tools: ## fetch/build the real test parts: helm, control plane, real node, metrics pipeline, OpenTelemetry Collector, prometheus, chromium, podman, s3proxy (cached)
	bash scripts/install-helm.sh
	bash scripts/install-podman.sh
	bash scripts/install-crd-validators.sh
	bash scripts/install-prometheus.sh
	bash scripts/install-browser.sh
	bash scripts/install-s3proxy.sh
	bash scripts/build-k8s.sh
	bash scripts/build-node.sh
	bash scripts/build-netpol.sh
	bash scripts/build-metrics.sh
	bash scripts/build-otelcol.sh

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
lint: dev ## ruff check, ruff format --check, mypy, and verify-generated
	$(VENV)/bin/ruff check service operator client tests scripts
	$(VENV)/bin/ruff format --check service operator client tests scripts
	$(VENV)/bin/mypy
	$(MAKE) --no-print-directory verify-generated

# Every generated file has its generator in scripts/generate/ (the list: its __init__.py).
.PHONY: generate
generate: dev ## rewrite every generated file from its source (scripts/generate/)
	$(PY) -m scripts.generate

.PHONY: verify-generated
verify-generated: dev ## fail naming each generated file that is stale (make lint runs this)
	$(PY) -m scripts.generate --check

# METRICS=1: also the autoscaling metrics pipeline (Prometheus, prometheus-adapter, KEDA).
METRICS ?=

.PHONY: cluster
cluster: dev ## start the local cluster: kwok GPU/CPU pools + a real node running the images, METRICS=1 adds Prometheus, prometheus-adapter, KEDA (prints KUBECONFIG)
	bash scripts/build-k8s.sh
	bash scripts/build-node.sh
	bash scripts/build-netpol.sh
	$(if $(METRICS),bash scripts/build-metrics.sh)
	$(PY) -m tests.support.cluster up $(if $(METRICS),--metrics)

.PHONY: cluster-down
cluster-down: ## stop the local cluster (Prometheus, then the real node, restoring the machine)
	$(PY) -m tests.support.cluster down

$(VENV)/.bench: service/pyproject.toml service/requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c service/requirements.lock -e './service[bench]'
	touch $(VENV)/.runtime $@

.PHONY: bench
bench: $(VENV)/.bench ## serve random-weights ViT-B-32, load it, compare with the raw model (bench-results/)
	mkdir -p bench-results
	$(VENV)/bin/clipserve bench --spawn --model ViT-B-32:random \
	  --json bench-results/bench.json --plot bench-results/bench.png
