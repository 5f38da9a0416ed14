# Two commands set everything up: `make up` runs the example stack, `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK ?= examples/shop/corral.toml

.PHONY: up test lint pytest test-docker install clean bench screenshots

$(BIN)/corral: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/corral
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(BIN)/corral

up: $(BIN)/corral
	$(BIN)/corral up -f $(STACK)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict bench

pytest: $(VENV)/.test-deps
	$(BIN)/pytest

test: lint pytest

# Only the tests that need a Docker engine (.ci/setup-docker starts one: engine, base image,
# Compose v2, Swarm). `make test` runs them too; without an engine they skip.
test-docker: $(VENV)/.test-deps
	bash .ci/setup-docker
	$(BIN)/pytest -m docker

# Benchmarks against supervisord, nginx and HAProxy (installs them; takes a few minutes).
bench: $(BIN)/corral
	bash bench/supervise.sh
	INSTALL=1 bash bench/proxy.sh
	bash bench/coldstart.sh

# docs/img/top.png and docs/img/dashboard.png, made by the view tests on a real stack (~3 min;
# needs tmux and Chromium: .ci/setup-views installs them).
screenshots: $(VENV)/.test-deps
	CORRAL_SCREENSHOTS=1 CORRAL_REQUIRE=browser,tmux $(BIN)/pytest -m views \
		-k "scales_on_a_key or lists_updates_and_rolls"

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
