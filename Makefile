# gdx: `make help` lists the targets. CI runs `make test` (through .ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KAFKA_VERSION ?= 4.0.0
export KAFKA_VERSION
RUN_DIR ?= $(CURDIR)/.run
export GDX_RUN_DIR := $(RUN_DIR)
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(BIN)/gdx: pyproject.toml
	@command -v $(PYTHON) >/dev/null || PYTHON=python3; \
	  test -x $(BIN)/python || $${PYTHON:-$(PYTHON)} -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(BIN)/gdx

.PHONY: install
install: system-deps $(BIN)/gdx kafka-jars ## virtual environment, Kafka jars, Debian packages

.PHONY: system-deps
system-deps: ## Java, Maven and Prometheus (Debian packages) where missing
	@ops/install_system_deps.sh

.PHONY: kafka-jars
kafka-jars: $(BIN)/gdx ## resolve Apache Kafka $(KAFKA_VERSION) from Maven Central into .cache/
	@$(BIN)/python -m gdx.broker resolve --version $(KAFKA_VERSION) >/dev/null

.PHONY: broker
broker: install ## start the local single-node KRaft broker on 127.0.0.1:9092
	@$(BIN)/python -m gdx.broker start --version $(KAFKA_VERSION)

.PHONY: run
run: install ## start Kafka and the five services, stream demo data through, print a Beacon answer
	@ops/run.sh

.PHONY: stop
stop: ## stop the services and the broker started by `make run`
	@ops/stop.sh

.PHONY: test
test: install ## the whole suite: unit, integration (real broker) and resilience tests
	$(BIN)/pytest tests $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(BIN)/gdx ## unit tests only (no broker)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-int
test-int: install ## integration tests against a real broker
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

.PHONY: test-resilience
test-resilience: install ## crash, broker-failure, rebalance and reconciliation tests only (also part of `make test`)
	$(BIN)/pytest tests -m resilience $(PYTEST_ARGS)

.PHONY: lint
lint: $(BIN)/gdx ## ruff and mypy
	$(BIN)/ruff check services tests bench
	$(BIN)/mypy services

.PHONY: bench
bench: install ## benchmarks on the real broker: figures and ratios against baselines
	$(BIN)/python -m bench $(BENCH_ARGS)

.PHONY: clean
clean: stop ## remove the run folder (broker data, service state, logs)
	rm -rf $(RUN_DIR)
