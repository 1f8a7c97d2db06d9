# fleetinfer — the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
# the compiled request paths (optional): a change rebuilds them
NATIVE := setup.py src/fleetinfer/server/_native.c

.PHONY: demo test check services install install-dev clean format image

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# the runtime (fleetinfer) and its flagship workload (roadchange/, its own distribution)
$(STAMP_RUN): pyproject.toml roadchange/pyproject.toml $(NATIVE) | $(PY)
	$(PIP) install -q -e . -e ./roadchange
	touch $@

$(STAMP_DEV): pyproject.toml roadchange/pyproject.toml $(NATIVE) | $(PY)
	$(PIP) install -q -e '.[dev]' -e './roadchange[train]'
	touch $@ $(STAMP_RUN)

install: $(STAMP_RUN)
install-dev: $(STAMP_DEV)

## make demo: create .venv, install, run the main job on the embedded defaults.
demo: $(STAMP_RUN)
	$(VENV)/bin/fleetinfer demo

## make check: lint, format check and strict typing.
check: $(STAMP_DEV)
	$(VENV)/bin/ruff check src roadchange/src tests benchmarks examples
	$(VENV)/bin/ruff format --check src roadchange/src tests benchmarks examples
	$(VENV)/bin/mypy --strict

## make services: make sure Redis and PostgreSQL answer (the tests start moto themselves).
services:
	bash scripts/services.sh

## make test: dev dependencies, services, checks, then the whole suite.
test: $(STAMP_DEV) services check
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

## make image: the container image fleetinfer:latest (scripts/build-image.sh; IMAGE_ARGS=--platform linux/arm64 ...).
image:
	bash scripts/build-image.sh $(IMAGE_ARGS)

format: $(STAMP_DEV)
	$(VENV)/bin/ruff check --fix src roadchange/src tests benchmarks examples
	$(VENV)/bin/ruff format src roadchange/src tests benchmarks examples

clean:
	rm -rf $(VENV) .fleetinfer .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info \
		roadchange/build roadchange/src/*.egg-info
	find src -name '*.so' -delete
