# The two commands a new machine needs: `make demo` and `make test`.
# Each creates or refreshes the virtual environment at .venv first (torch from PyPI,
# maturin, the project in development mode with what that command uses), so nothing is
# installed by hand.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned so CI and every developer build the C++ extension against the same headers.
TORCH_VERSION ?= 2.11.0
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

RUST_SOURCES := Cargo.toml $(shell find rust -name '*.rs' 2>/dev/null)

.PHONY: demo test test-rust test-python bench venv develop services clean

# What is installed, one stamp per layer, so `make test` after `make demo` adds only what
# the demo did not need:
#   base  the venv, pip, torch (pinned) and maturin
#   demo  + the project in development mode with the [demo] extra (scikit-learn, matplotlib)
#   dev   + the [dev] extra (pytest, hypothesis, ...) and nvcc for the CUDA compile check
# A stamp is redone when pyproject.toml or this file changes; the project stamps also when
# the Rust sources do (maturin develop rebuilds the extension in place).
BASE_STAMP := $(VENV)/.base-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
DEV_STAMP := $(VENV)/.dev-stamp

## demo: the main job, a real tuning study on the CPU, ending in a report.
demo: $(DEMO_STAMP)
	$(PY) -m tunebook.demo

## test: cargo test, then pytest (CPU; CUDA tests skip without a GPU).
test: $(DEV_STAMP) services test-rust test-python

test-rust:
	cargo test --release --quiet

test-python: $(DEV_STAMP)
	# Build (or reuse) the C++ kernels once up front, with a visible message, rather than
	# inside the first optimizer test.
	$(PY) -c "import tunebook.optim as o; print('tunebook kernels:', o.build_library())"
	$(PY) -m pytest -q --durations=10

## bench: every benchmark in benches/, printing tables of medians and ratios.
bench: $(DEV_STAMP)
	for b in benches/*.py; do echo "== $$b"; $(PY) $$b; done

venv develop: $(DEV_STAMP)

$(BASE_STAMP): Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" "maturin>=1.12.1,<2"
	touch $@

$(DEMO_STAMP): $(BASE_STAMP) pyproject.toml $(RUST_SOURCES)
	maturin develop --release --quiet --extras demo
	touch $@

$(DEV_STAMP): $(BASE_STAMP) pyproject.toml $(RUST_SOURCES)
	# nvcc matching torch's CUDA, so `make test` compile-checks the .cu sources.
	$(PY) -m pip install --quiet "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]==$$($(PY) -c 'import torch; print(torch.version.cuda)').*"
	maturin develop --release --quiet --extras dev
	touch $@

## services: what the tests use beyond Python: PostgreSQL on loopback (the study store's
## multi-machine backend) and headless Chromium (opens the HTML report). Both come from
## Debian's packages; each script is idempotent and fast once done.
services: $(BASE_STAMP)
	@if [ -x scripts/postgres.sh ]; then scripts/postgres.sh start; fi
	@if [ -x scripts/chromium.sh ]; then scripts/chromium.sh; fi

clean:
	rm -rf $(VENV) target build .pytest_cache
