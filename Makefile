# Two entry points, both idempotent and fast once set up:
#   make demo   engine, base images, the example packs built and run
#   make test   the whole test suite against the real engine
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export ATTUNE__CONTAINERS__CONFIG ?= $(CURDIR)/attune-containers.toml

.PHONY: demo test unit bench bench-build engine base venv clean-images

demo: base
	$(BIN)/python examples/demo.py

test: base
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

unit: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest tests/unit

# Per-action overhead (bare process, cold, warm, service, docker run --rm) as ratios of one run.
bench: base
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/node.py
	$(BIN)/python benchmarks/build_speed.py

# Build speed against a hand-written one-stage Dockerfile (issue 11): naive, cold, warm shared
# cache, complete lock, interleaved, as ratios of one run (a few minutes: every case really builds).
bench-build: base
	$(BIN)/python benchmarks/build_speed.py

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

engine:
	bash docker/engine.sh

attune-containers.toml: docker/local-config.toml
	cp docker/local-config.toml $@

# Local base images (Python 3.9, 3.11, 3.13; Node.js 18, 20) from Debian suites; existing ones are kept.
base: venv engine attune-containers.toml
	$(BIN)/attune-containers base bootstrap

# Remove every pack image this tool built on this host (base images stay).
clean-images: venv
	docker images -q --filter label=io.attune.containers.managed=true | sort -u | xargs -r docker rmi -f
