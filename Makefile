# Fleetscope: two commands on a fresh machine.
#   make up    install into .venv and run the server + simulated fleet (UI on http://127.0.0.1:8000)
#   make test  install what the tests need (Debian packages as root, pip into .venv) and run them

VENV      ?= .venv
PYTHON    ?= python3
BIN       := $(VENV)/bin
APT_PKGS  := prometheus victoria-metrics chromium fonts-dejavu-core
UP_ARGS   ?=

.PHONY: up test lint typecheck pytest apt-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

up: $(VENV)/.installed
	$(BIN)/fleetscope up $(UP_ARGS)

# Debian packages the tests start for real (Prometheus, VictoriaMetrics, Chromium).
apt-deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or install:$$missing)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: apt-deps $(VENV)/.installed-test
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
