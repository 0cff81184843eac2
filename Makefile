# optout — two commands on a fresh machine: `make run` and `make test`.
# Everything else is here for developers and operators; `make help` lists it.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OPTOUT := $(VENV)/bin/optout
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Brings the local Kafka + PostgreSQL up (or reuses them, or uses OPTOUT_KAFKA_BOOTSTRAP /
# OPTOUT_DATABASE_URL when set) and exports the OPTOUT_* settings that reach them.
WITH_STACK := eval "$$($(PY) -m services.devstack env)" &&
# `make run DESTINATIONS=deploy/destinations.all-kinds.toml`: another destinations file
# (OPTOUT_DESTINATIONS_FILE), with the development credentials of its sibling `.env` file
# (same name, `.env` instead of `.toml`) when there is one; variables already set win.
DESTINATIONS ?=
DEST_ENV := $(if $(DESTINATIONS),eval "$$(bash deploy/destinations-env.sh $(DESTINATIONS))" &&)
PYTEST_ARGS ?=
# `make up BROKERS=3` (and run, test-faults, bench-*): a replicated cluster of three Kafka
# nodes (OPTOUT_DEVSTACK_BROKERS) instead of the single broker; `make down` stops either.
BROKERS ?=
ifneq ($(BROKERS),)
export OPTOUT_DEVSTACK_BROKERS := $(BROKERS)
endif

.PHONY: help install up down run test test-unit test-integration test-faults check fmt \
        bench-intake bench-e2e bench-web bench-suppression bench-connectors bench-resources \
        bench-memory bench-pk-read bench-lookup bench-scrub bench-replay bench-intake-scale bench-call-cpu bench-loop-cpu \
        k8s-render clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# setup.py and the C source: the editable install (re)builds services/replay/_kernel*.so in
# place. uv (from PyPI, into the virtualenv) installs the same versions pip would resolve in
# a few seconds instead of about 50 (it was most of a fresh clone's set-up before the tests).
$(STAMP): pyproject.toml setup.py services/replay/_kernel.c
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "optout needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==0.13.9
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create the virtualenv and install optout with its dev tools

up: install ## start Kafka + PostgreSQL + the SFTP sshd in the background, create topics, migrate; print settings
	$(PY) -m services.devstack up
	@$(WITH_STACK) $(DEST_ENV) $(OPTOUT) topics create && $(OPTOUT) migrate
	@echo "Settings to reach the stack (eval \"\$$($(PY) -m services.devstack env)\"):"
	@$(PY) -m services.devstack env

down: ## stop the local Kafka + PostgreSQL + sshd started by `make up`/`make run`/`make test`
	@if [ -x $(PY) ]; then $(PY) -m services.devstack down; fi

run: up ## run the whole pipeline in the foreground (DESTINATIONS=file: another destinations file)
	@$(WITH_STACK) $(DEST_ENV) exec $(OPTOUT) run all

# Parallel test workers: the suite mostly waits on the broker and the database, so more
# workers than cores pay off. Each worker has its own database and topic prefixes.
TEST_WORKERS ?= 4

test: install ## install what is missing, start what the tests need, run every test
	bash deploy/install-promtool.sh
	bash deploy/install-chromium.sh
	bash deploy/install-kustomize.sh
	bash deploy/install-pgbouncer.sh
	$(PY) -m services.devstack up
	@# 1. Everything that can share the stack, on $(TEST_WORKERS) workers.
	@# 2. `serial` tests (none today; for tests that must stop the shared broker or database), alone. Exit 5: none selected.
	@# 3. One closing line with the counts of both passes.
	rm -f test-output/parallel.xml test-output/serial.xml
	$(WITH_STACK) status=0; \
	$(PY) -m pytest -m "not faults and not serial" -n $(TEST_WORKERS) --dist loadgroup -v \
	    --durations=15 --junitxml=test-output/parallel.xml $(PYTEST_ARGS) || status=$$?; \
	$(PY) -m pytest -m "serial and not faults" -n 0 -v --durations=5 \
	    --junitxml=test-output/serial.xml $(PYTEST_ARGS) \
	    || { code=$$?; [ $$code -eq 5 ] || status=$$code; }; \
	$(PY) -m tests.support.summary test-output/parallel.xml test-output/serial.xml; \
	exit $$status

test-unit: install ## unit tests only (no broker, no database)
	bash deploy/install-kustomize.sh
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install ## integration and e2e tests against the real broker and database
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m pytest tests/integration tests/e2e -m "not faults" -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-faults: install ## the full fault-injection run (20,000 opt-outs, kills, outages)
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m tests.faults.run_faults

check: install ## ruff, ruff format --check, mypy
	$(VENV)/bin/ruff check services tests benchmarks
	$(VENV)/bin/ruff format --check services tests benchmarks
	$(VENV)/bin/mypy

fmt: install ## format the code
	$(VENV)/bin/ruff format services tests benchmarks
	$(VENV)/bin/ruff check --fix services tests benchmarks

bench-intake: install ## intake throughput: bare consume vs naive vs ours vs the serial limit (200,000 events)
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_intake

bench-e2e: install ## end-to-end latency p50/p95/p99 at a steady rate, then the sustained rate
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_e2e

bench-web: install ## one-click POSTs per second and p99 latency
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_web

bench-suppression: install ## what the encrypted suppression list costs intake (sealing, record_batch)
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_suppression

bench-intake-scale: export OPTOUT_DEVSTACK_BROKERS := $(or $(BROKERS),3)
bench-intake-scale: install ## intake from 1 to 3 processes on the replicated cluster (BROKERS=1: the single broker)
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_intake_scale

bench-connectors: install ## commands/s of each connector kind vs its stand-in's ceiling (bare client)
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_connectors

bench-call-cpu: install ## CPU of one provider call per client library (botocore vs httpx)
	$(PY) -m benchmarks.bench_call_cpu

bench-loop-cpu: install ## CPU per batch of the consume loop alone, beside a bare librdkafka loop
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_loop_cpu

bench-resources: install ## memory and CPU of every service process under load (the k8s resource figures)
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_resources

# `make bench-memory BACKLOG=200000 EVERY=20000`: a smaller run (default 1,000,000 / 100,000).
BACKLOG ?= 1000000
EVERY ?= 100000
bench-memory: install ## resident size of every service through a backlog of 1,000,000 opt-outs: flat within 20%?
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_resources --backlog $(BACKLOG) --every $(EVERY)

bench-pk-read: install ## primary-key reads/s of the suppression list (stand-in for bench-lookup)
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_pk_read

bench-lookup: install ## lookup API: single lookups/s + p99 and batch identifiers/s vs a bare psycopg loop
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_lookup

bench-scrub: install ## optout scrub of 1,000,000 rows vs COPY + anti-join in PostgreSQL
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_scrub

# `make bench-replay REPLAY_SUPPRESSIONS=200000`: a smaller run (default 1,000,000).
REPLAY_SUPPRESSIONS ?= 1000000
bench-replay: install ## optout replay of 1,000,000 suppressions vs a bare producer of the same messages
	$(PY) -m services.devstack up
	$(WITH_STACK) $(PY) -m benchmarks.bench_replay --suppressions $(REPLAY_SUPPRESSIONS)

k8s-render: ## render every Kubernetes overlay into test-output/k8s/ (kubectl kustomize)
	bash deploy/install-kustomize.sh
	mkdir -p test-output/k8s
	for overlay in deploy/k8s/overlays/*/; do name=$$(basename $$overlay); \
	    if kubectl version --client 2>/dev/null | grep -Eq '^Kustomize Version: v[5-9]'; then \
	        kubectl kustomize $$overlay > test-output/k8s/$$name.yaml; \
	    else "$$(command -v kustomize || echo .cache/bin/kustomize)" build $$overlay > test-output/k8s/$$name.yaml; fi; \
	    echo "test-output/k8s/$$name.yaml"; done

clean: down ## stop the stack and remove its data, caches and the virtualenv
	@if [ -x $(PY) ]; then rm -rf "$$($(PY) -m services.devstack state-dir)"; fi
	rm -rf .run $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
