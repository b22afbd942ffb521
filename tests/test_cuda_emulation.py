"""The CUDA update kernels, run on the host: a GPU-free check of the launcher's logic.

tests/cuda_emulation/emulate_kernels.cpp includes csrc/cuda/{adam,grad_norm,sgd,rmsprop,nadam}.cu with
TUNEBOOK_HOST_EMULATION, which turns each kernel launch into a loop over blocks and threads
(512 per block, as on the GPU). It runs every family over 961 tensors (chunk edges, every
tail length, an empty tensor, misaligned operands, more tensors than one launch's table),
every (param, state) dtype pair (float64 params in double math included), the rules and
options, a skipped step, tensor learning rates and GradScaler's unscaled-gradient store, and
compares params, grads, states, steps and mu products bit for bit with a per-element loop
over the same csrc/optim_math.h functions. The global sum of squares (four dtypes, two
launches of one dtype, one partials workspace, every 16-byte misalignment and tail length) is
compared bit for bit, partial by partial, with its specification replayed element by
element (which thread and FMA chain each element goes to, in which order: the header of
csrc/cuda/grad_norm.cu), and with float64; a sum above the float32 maximum must round to inf.
Device numerics are left to
tests/test_optim_cuda.py on a GPU.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tunebook.optim._cuda_toolkit import cuda_include_dir, install_hint

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "cuda_emulation" / "emulate_kernels.cpp"


def test_kernels_emulated_on_the_host_match_the_per_element_math(tmp_path):
    include = cuda_include_dir()
    if include is None:
        pytest.skip(f"CUDA runtime headers not found; install them with: {install_hint()}")
    binary = tmp_path / "emulate_kernels"
    cxx = os.environ.get("CXX", "c++")
    build = subprocess.run(
        [cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-x", "c++", f"-I{REPO / 'csrc'}",
         f"-I{include}", "-Wall", "-Wno-attributes", "-Wno-unknown-pragmas", str(HARNESS),
         "-o", str(binary)],
        capture_output=True, text=True, check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr[-6000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, check=False,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "all 48 checks passed" in run.stdout, run.stdout
