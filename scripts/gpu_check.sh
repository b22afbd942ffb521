#!/usr/bin/env bash
# The one GPU check of tunebook's CUDA path (issue 14, Part B): build the kernels for the
# visible GPU, run every CUDA test and the quick CUDA benchmark, and leave the logs and
# tables in one folder. Made to run once, unattended, on the lent H200 (torch 2.11+cu130,
# nvcc, ninja, python 3.12, 16 cores, no Rust, no network) within about 8 minutes.
#
# 1. Here, in the checkout that will call the device tool (needs Rust and network):
#        bash scripts/gpu_check.sh --prepare
#    builds the abi3 wheel into .whl/ (gitignored) with `maturin build --release` and adds
#    the SQLAlchemy wheel for cp312 (the GPU image lacks it; test modules import it).
# 2. Dry run here (no GPU: the CUDA parts skip), so no typo costs GPU time:
#        GPU_CHECK_DRY_RUN=1 PYTHON=.venv/bin/python bash scripts/gpu_check.sh /tmp/gpu_check
# 3. The device tool's `run`, exactly:
#        command:   bash scripts/gpu_check.sh
#        carry:     [".whl"]
#        timeout_s: 600
#    It writes at most 7 files to $OUT (summary.txt, info.txt, build.log, tests.log,
#    junit.xml, bench.log, bench.json); the summary is also the last thing printed.
#    Then give_back, unless you rerun at once.
#
# Usage: scripts/gpu_check.sh [OUTPUT_DIR]   (default: $OUT, else ./gpu_check_out)
# Environment: PYTHON (default python3), GPU_CHECK_DRY_RUN (1: skip the CUDA parts; default:
# on when no GPU is visible), GPU_CHECK_DEADLINE (seconds for the whole script, default
# 540: a stage that would run past it is cut short or skipped), MAX_JOBS (default 16).
set -uo pipefail

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  cd "$(dirname "$0")/.."
  mkdir -p .whl
  rm -f .whl/tunebook-*.whl
  MATURIN=$(command -v maturin || echo .venv/bin/maturin)
  "$MATURIN" build --release -o .whl
  PIP_PY=${PYTHON:-python3}
  "$PIP_PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "sqlalchemy==2.0.*"
  # Pure-Python test dependencies the GPU image may lack: hypothesis (imported by the
  # drop-in, schedule and distributed test modules, which hold CUDA tests) and expecttest
  # (torch's optim_db helpers).
  "$PIP_PY" -m pip download --quiet --no-deps --only-binary=:all: -d .whl \
    "hypothesis>=6.100" "attrs>=22.2" "sortedcontainers>=2.1" "expecttest>=0.2"
  ls -la .whl
  du -sh .whl
  exit 0
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
OUT_DIR=${1:-${OUT:-$REPO/gpu_check_out}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
DEADLINE=${GPU_CHECK_DEADLINE:-540}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
# Seconds a stage may take: its own limit, or what is left before the deadline less 15 s.
budget() {
  local want=$1 left=$((DEADLINE - SECONDS - 15))
  ((left < want)) && want=$left
  echo $((want > 0 ? want : 0))
}
# run_stage NAME LIMIT LOG CMD...: runs CMD under `timeout`, appends to LOG, notes the result.
run_stage() {
  local name=$1 limit=$2 log=$3
  shift 3
  limit=$(budget "$limit")
  if ((limit < 20)); then
    note "[$name] SKIPPED: only ${limit}s left before the ${DEADLINE}s deadline"
    return 124
  fi
  local start=$SECONDS rc
  echo "== $name (limit ${limit}s): $*" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  note "[$name] exit $rc in $((SECONDS - start))s (limit ${limit}s)$( ((rc == 124)) && echo ': TIMED OUT')"
  return $rc
}

if [[ -z "${GPU_CHECK_DRY_RUN:-}" ]]; then
  if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    GPU_CHECK_DRY_RUN=0
  else
    GPU_CHECK_DRY_RUN=1
  fi
fi
DRY=$GPU_CHECK_DRY_RUN
note "tunebook gpu_check: $(date -u +%FT%TZ), output $OUT_DIR, dry run: $DRY, deadline ${DEADLINE}s"

# ---- machine -------------------------------------------------------------------------
{
  echo "== nvidia-smi"
  nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
    --format=csv 2>&1 || true
  echo "== python / torch"
  "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])' 2>&1
  echo "== nvcc"
  command -v nvcc && nvcc --version 2>&1 || echo "(no nvcc on PATH)"
  ls -d /usr/local/cuda* 2>/dev/null
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo "(no compute-sanitizer on PATH)"
  echo "== cpu"
  nproc
  uname -a
} >"$OUT_DIR/info.txt" 2>&1
note "$(grep -m1 -E 'NVIDIA|no nvidia-smi' "$OUT_DIR/info.txt" | head -c 200)"
note "$(grep -m1 '^torch ' "$OUT_DIR/info.txt")"

# ---- the carried wheel, installed beside (not into) the image's packages -------------
SITE=${GPU_CHECK_SITE:-/tmp/tunebook-gpu-check-site}
rm -rf "$SITE"
shopt -s nullglob
WHEELS=("$REPO"/.whl/tunebook-*.whl)
EXTRA_WHEELS=()
for wheel in "$REPO"/.whl/*.whl; do
  [[ "$wheel" == */tunebook-*.whl ]] || EXTRA_WHEELS+=("$wheel")
done
shopt -u nullglob
if ((${#WHEELS[@]} != 1)); then
  note "FATAL: need exactly one tunebook wheel in $REPO/.whl, found ${#WHEELS[@]} (run 'bash scripts/gpu_check.sh --prepare' and carry .whl)"
  exit 2
fi
PIP_INSTALL=("$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$SITE")
if ! "${PIP_INSTALL[@]}" "${WHEELS[0]}" >"$OUT_DIR/build.log" 2>&1; then
  note "FATAL: pip could not install ${WHEELS[0]##*/} (see build.log)"
  tail -20 "$OUT_DIR/build.log"
  exit 2
fi
# Test-only dependencies the image lacks (SQLAlchemy, hypothesis, expecttest): best effort,
# for collection.
for wheel in "${EXTRA_WHEELS[@]}"; do
  "${PIP_INSTALL[@]}" "$wheel" >>"$OUT_DIR/build.log" 2>&1 \
    || note "note: could not install ${wheel##*/} (its tests will not be collected)"
done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TUNEBOOK_CSRC="$REPO/csrc"
if ! "$PY" - >>"$OUT_DIR/build.log" 2>&1 <<EOF
import os, tunebook, tunebook.optim
from tunebook.optim._build import csrc_dir
from tunebook.optim._cuda_toolkit import find_toolkit, toolkit_problem
print("tunebook from", tunebook.__file__)
assert tunebook.__file__.startswith("$SITE"), "tunebook imported from the source tree, not the wheel"
assert csrc_dir() == __import__("pathlib").Path("$REPO/csrc"), csrc_dir()
toolkit = find_toolkit()
print("toolkit", toolkit if toolkit else toolkit_problem())
EOF
then
  note "FATAL: the installed wheel does not import as expected (see build.log)"
  tail -20 "$OUT_DIR/build.log"
  exit 2
fi
note "wheel: ${WHEELS[*]##*/} -> $SITE; $(grep -m1 '^toolkit' "$OUT_DIR/build.log" | head -c 300)"

# ---- build the kernels for the visible GPU -------------------------------------------
if [[ "$DRY" == 1 ]]; then
  note "[build] dry run: not building (would: build_library(), MAX_JOBS=$MAX_JOBS)"
else
  run_stage build 240 "$OUT_DIR/build.log" "$PY" -c '
import time
t = time.perf_counter()
import torch, tunebook.optim as tbo
from tunebook.optim._build import build_library
print("library", build_library(verbose=False))
print("backends", sorted(tbo.library_backends()))
print(f"build + load: {time.perf_counter() - t:.1f} s (MAX_JOBS set)")
assert "cuda" in tbo.library_backends(), "no CUDA kernels"
'
  build_rc=$?
  note "$(grep -m1 'build + load' "$OUT_DIR/build.log")"
  if ((build_rc != 0)); then
    note "FATAL: the CUDA kernels did not build; the end of build.log:"
    tail -40 "$OUT_DIR/build.log" | tee -a "$SUMMARY"
    exit 3
  fi
fi

# ---- tests ----------------------------------------------------------------------------
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfEs --continue-on-collection-errors)
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  PYTEST+=(--timeout=150)
fi
# 1. every CUDA test of every issue, the sanitizers last (slow, and they may not run here)
run_stage cuda-tests 200 "$OUT_DIR/tests.log" "${PYTEST[@]}" -m cuda -k "not sanitizer" \
  --durations=15 --junitxml="$OUT_DIR/junit.xml" tests/
# 2. the benchmark
BENCH_ARGS=(--quick --json "$OUT_DIR/bench.json")
[[ "$DRY" == 1 ]] && BENCH_ARGS+=(--dry-run)
run_stage bench 170 "$OUT_DIR/bench.log" "$PY" benches/optim_step_cuda.py "${BENCH_ARGS[@]}"
# 3. the compile checks with this machine's nvcc (register caps, no spills, toolkit choice);
#    the JIT build test reuses the library built above (same sources, nvcc and sm_90).
#    A dry run skips them: they would compile the CUDA library here for minutes.
BUILD_TESTS=(tests/test_cuda_toolkit.py)
[[ "$DRY" == 1 ]] || BUILD_TESTS+=(tests/test_cuda_build.py)
run_stage build-tests 90 "$OUT_DIR/tests.log" "${PYTEST[@]}" "${BUILD_TESTS[@]}"
# 4. compute-sanitizer memcheck and racecheck
export TUNEBOOK_SANITIZER_TIMEOUT=${TUNEBOOK_SANITIZER_TIMEOUT:-80}
run_stage sanitizers 190 "$OUT_DIR/tests.log" "${PYTEST[@]}" -m cuda -k sanitizer tests/

# ---- summary --------------------------------------------------------------------------
"$PY" - "$OUT_DIR/junit.xml" >>"$SUMMARY" 2>&1 <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as error:
    print(f"junit: {error}")
    raise SystemExit
suites = root.iter("testsuite")
totals = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
for suite in suites:
    for k in totals:
        totals[k] += int(suite.get(k, 0))
passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
print(f"cuda tests: {passed} passed, {totals['failures']} failed, {totals['errors']} errors, "
      f"{totals['skipped']} skipped of {totals['tests']}")
for case in root.iter("testcase"):
    for kind in ("failure", "error"):
        node = case.find(kind)
        if node is not None:
            msg = (node.get("message") or "").splitlines()
            print(f"  {kind.upper()} {case.get('classname')}::{case.get('name')}: "
                  f"{msg[0][:300] if msg else ''}")
EOF
{
  echo "-- tests (other stages):"
  grep -E '^(FAILED|ERROR|[0-9]+ (passed|failed|skipped))|(passed|failed|error).* in [0-9.]+s' \
    "$OUT_DIR/tests.log" | tail -30
  echo "-- bench:"
  sed -n '/^case /,$p' "$OUT_DIR/bench.log" | head -40
  grep -E 'GPU:|dry run|no CUDA|FAILED' "$OUT_DIR/bench.log" | head -5
} >>"$SUMMARY" 2>&1
note "total ${SECONDS}s"
echo "=================================== SUMMARY ==================================="
cat "$SUMMARY"
