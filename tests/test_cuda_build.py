"""The CUDA kernels compile and link without a GPU, so a compile error fails CI.

This runs the real just-in-time build a GPU user gets, ``build_library(with_cuda=True)``
(``torch.utils.cpp_extension.load`` with ninja, every ``csrc/cuda/*.cu`` through nvcc for
Hopper, sm_90, plus the CPU sources and the op schemas), in a fresh CPU-only Python
process, and then checks that loading the library registered a CUDA kernel for every op of
``csrc/ops.cpp``. The dispatcher rejects a kernel whose C++ signature does not match its
schema, so this also checks every registration. The build is cached like any other, so a
second run only loads it.

``test_kernels_keep_their_register_cap_and_never_spill`` compiles the same sources to cubins
with ``-Xptxas -v`` (tests/cuda_resources.py, cached the same way) and checks each kernel's
registers, register cap, stack frame and spills.

nvcc comes from ``$CUDA_HOME``, the ``cuda-toolkit[nvcc,...]`` wheel (``nvidia/cu13/``),
``/usr/local/cuda`` or PATH (see ``tunebook.optim._cuda_toolkit``). Without one the test
skips and says how to install it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tunebook.optim._cuda_toolkit import cuda_home, find_toolkit, install_hint, toolkit_problem

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _schema_names() -> list[str]:
    return re.findall(r'm\.def\(\s*"([a-z_]+)\(', (CSRC / "ops.cpp").read_text())


def test_cuda_sources_exist():
    names = {p.name for p in (CSRC / "cuda").glob("*.cu")}
    assert {"grad_norm.cu", "step_control.cu", "sgd.cu", "adam.cu", "rmsprop.cu",
            "nadam.cu"} <= names, names
    assert (CSRC / "cuda" / "ops_cuda.cpp").exists()


def test_jit_build_with_cuda_links_and_registers_every_op():
    home = cuda_home()
    if home is None or not (home / "bin" / "nvcc").exists():
        pytest.skip("nvcc not found (checked $CUDA_HOME, the cuda-toolkit wheel, "
                    f"/usr/local/cuda and PATH); install it with: {install_hint()}")
    names = _schema_names()
    assert len(names) == 6, names
    script = textwrap.dedent(f"""
        import torch
        from tunebook.optim._build import build_library
        print("library", build_library(with_cuda=True))
        missing = [n for n in {names!r}
                   if not torch._C._dispatch_has_kernel_for_dispatch_key("tunebook::" + n, "CUDA")]
        assert not missing, f"no CUDA kernel registered for {{missing}}"
        print("registered", len({names!r}))
    """)
    # A fresh process: this one may already have loaded the CPU-only library, whose
    # TORCH_LIBRARY(tunebook) block may not run twice.
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "2"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=1500, check=False)
    assert proc.returncode == 0, f"CUDA build failed:\n{(proc.stdout + proc.stderr)[-8000:]}"
    assert f"registered {len(names)}" in proc.stdout


def _expected_cap(name: str) -> int:
    """The register cap each multi-tensor kernel must carry: the norm pass 32 (4 blocks of
    512 per SM), 64 on float64 grads (2 blocks); the updates 64 (2 blocks), 128 for float64
    Adam/NAdam/RMSprop (1 block: a double takes two registers, and one block of 8-byte
    elements keeps the bytes in flight of two float32 blocks). SGD's float64 update fits
    in 64."""
    if "SquaresFunctor" in name:
        return 64 if "SquaresFunctor<double>" in name else 32
    wide = ("AdamFunctor<double,", "NadamFunctor<double,", "RmspropFunctor<double,")
    return 128 if any(f in name for f in wide) else 64


def test_kernels_keep_their_register_cap_and_never_spill():
    """ptxas's report for sm_90, kernel by kernel (tests/cuda_resources.py): the multi-tensor
    kernels carry their register cap in the PTX (64 for the updates: 2 blocks of 512 per
    SM; 32 for the norm pass: 4 blocks; twice that for float64, see `_expected_cap`), stay
    within it, and no kernel spills or has a stack
    frame. Without the cap a newer nvcc could take up to 128 registers and halve the
    resident blocks; a spill puts local-memory traffic into a bandwidth-bound loop."""
    from cuda_resources import kernel_resources, summary

    found = find_toolkit()
    if found is None:
        pytest.skip(f"no usable nvcc: {toolkit_problem()}")
    rows = kernel_resources(found.home / "bin" / "nvcc", found.version, "sm_90")
    table = summary(rows)
    print(f"nvcc {found.version}, sm_90\n{table}")  # shown with -rP / -s
    assert len(rows) >= 150, f"expected every kernel instantiation, got {len(rows)}\n{table}"
    problems = []
    for row in rows:
        if row.spill_stores or row.spill_loads or row.stack_frame:
            problems.append(f"{row.name}: {row.stack_frame} B stack, {row.spill_stores}/"
                            f"{row.spill_loads} B spill stores/loads")
        if "multi_tensor_kernel" in row.name:
            cap = _expected_cap(row.name)
            pinned = row.max_registers == cap or (
                row.max_registers is None and row.min_blocks == 65536 // (512 * cap))
            if not pinned:
                problems.append(f"{row.name}: .maxnreg {row.max_registers}, .minnctapersm "
                                f"{row.min_blocks}; expected a {cap}-register cap")
            if row.registers > cap:
                problems.append(f"{row.name}: {row.registers} registers > {cap}")
    assert not problems, "\n".join(problems[:20]) + f"\n\n{table}"
