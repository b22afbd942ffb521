# The two commands a new machine needs: `make demo` and `make test`.
# Each creates or refreshes the virtual environment at .venv first (torch from PyPI,
# maturin, the project in development mode), so nothing is installed by hand.

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

## demo: the main job, a real tuning study on the CPU, ending in a report.
demo: develop
	$(PY) -m tunebook.demo

## test: cargo test, then pytest (CPU; CUDA tests skip without a GPU).
test: develop services test-rust test-python

test-rust:
	cargo test --release --quiet

test-python: develop
	# Build (or reuse) the C++ kernels once up front, with a visible message, rather than
	# inside the first optimizer test.
	$(PY) -c "import tunebook.optim as o; print('tunebook kernels:', o.build_library())"
	$(PY) -m pytest -q --durations=10

## bench: every benchmark in benches/, printing tables of medians and ratios.
bench: develop
	for b in benches/*.py; do echo "== $$b"; $(PY) $$b; done

venv: $(VENV)/.deps-stamp

# Re-run when pyproject.toml or this file changes.
$(VENV)/.deps-stamp: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" "maturin>=1.7,<2"
	# nvcc matching torch's CUDA, so `make test` compile-checks the .cu sources.
	$(PY) -m pip install --quiet "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]==$$($(PY) -c 'import torch; print(torch.version.cuda)').*"
	maturin develop --release --quiet --extras dev
	touch $@

# Rebuild the Rust extension when its sources change.
develop: $(VENV)/.ext-stamp
$(VENV)/.ext-stamp: $(VENV)/.deps-stamp $(RUST_SOURCES)
	maturin develop --release --quiet --skip-install
	touch $@

## services: what the tests use beyond Python: PostgreSQL on loopback (the study store's
## multi-machine backend) and headless Chromium (opens the HTML report). Both come from
## Debian's packages; each script is idempotent and fast once done.
services: venv
	@if [ -x scripts/postgres.sh ]; then scripts/postgres.sh start; fi
	@if [ -x scripts/chromium.sh ]; then scripts/chromium.sh; fi

clean:
	rm -rf $(VENV) target build .pytest_cache
