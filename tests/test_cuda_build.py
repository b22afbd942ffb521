"""The CUDA kernels compile and link without a GPU, so a compile error fails CI.

Every ``csrc/cuda/*.cu`` is compiled with ``nvcc -c`` for Hopper (sm_90) with the flags
``torch.utils.cpp_extension`` uses, and the torch-facing ``csrc/cuda/ops_cuda.cpp`` with the
host compiler against torch's and CUDA's headers. Then the objects are linked with the op
schemas (``csrc/ops.cpp``) into one library which a fresh, CPU-only Python process loads:
loading runs ``TORCH_LIBRARY_IMPL(tunebook, CUDA, m)``, and the dispatcher rejects a kernel
whose C++ signature does not match its schema, so this also checks every registration.

nvcc comes from ``$CUDA_HOME``, the ``cuda-toolkit[nvcc]`` wheel (``nvidia/cu13/``), or
``/usr/local/cuda``. Without one the tests skip and say how to install it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from cuda_toolkit import cuda_home, install_hint

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
CU_SOURCES = sorted((CSRC / "cuda").glob("*.cu"))
HOST_SOURCES = [CSRC / "cuda" / "ops_cuda.cpp", CSRC / "ops.cpp"]
# Hopper: the GPU the performance goals are stated for.
ARCH_FLAGS = ["-gencode=arch=compute_90,code=sm_90"]


def _schema_names() -> list[str]:
    text = (CSRC / "ops.cpp").read_text()
    return re.findall(r'm\.def\(\s*"([a-z_]+)\(', text)


def _torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return include_paths("cpu")


def _run(cmd: list[str]) -> tuple[int, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    return proc.returncode, " ".join(cmd) + "\n" + proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Compiles every source once (two jobs at a time); returns (dir, {name: (rc, log)})."""
    home = cuda_home()
    if home is None or not (home / "bin" / "nvcc").exists():
        pytest.skip("nvcc not found (checked $CUDA_HOME, the cuda-toolkit wheel, "
                    f"/usr/local/cuda and PATH); install it with: {install_hint()}")
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    out = tmp_path_factory.mktemp("cuda_build")
    cuda_include = str(home / "include")
    common = [f"-I{CSRC}", *(f"-I{p}" for p in _torch_includes()), f"-I{cuda_include}",
              "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    jobs: dict[str, list[str]] = {}
    for src in CU_SOURCES:
        jobs[src.name] = [str(home / "bin" / "nvcc"), "-c", str(src), "-o",
                          str(out / f"{src.stem}.cu.o"), *common, *COMMON_NVCC_FLAGS,
                          *ARCH_FLAGS, "-O3", "--compiler-options", "-fPIC"]
    cxx = os.environ.get("CXX", "c++")
    for src in HOST_SOURCES:
        jobs[src.name] = [cxx, "-c", str(src), "-o", str(out / f"{src.stem}.o"), *common,
                          "-O1", "-fPIC"]
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        results = dict(zip(jobs, pool.map(_run, jobs.values())))
    return out, home, results


def test_cuda_sources_exist():
    names = {p.name for p in CU_SOURCES}
    assert {"grad_norm.cu", "step_control.cu", "sgd.cu", "adam.cu", "rmsprop.cu",
            "nadam.cu"} <= names, names
    assert (CSRC / "cuda" / "ops_cuda.cpp").exists()


@pytest.mark.parametrize("source", [p.name for p in CU_SOURCES + HOST_SOURCES])
def test_source_compiles_for_sm90(build, source):
    _, _, results = build
    returncode, log = results[source]
    assert returncode == 0, f"{source} does not compile:\n{log[-6000:]}"


def test_library_links_and_registers_every_op(build, tmp_path):
    out, home, results = build
    failed = [name for name, (rc, _) in results.items() if rc != 0]
    if failed:
        pytest.fail(f"compile failures (see test_source_compiles_for_sm90): {failed}")
    # The wheel ships libcudart.so.13 only; the linker's -lcudart needs the unversioned name.
    link_dir = tmp_path / "cudart"
    link_dir.mkdir()
    for lib_dir in (home / "lib64", home / "lib"):
        candidates = sorted(lib_dir.glob("libcudart.so*"))
        if candidates:
            (link_dir / "libcudart.so").symlink_to(candidates[0])
            break
    else:
        pytest.fail(f"no libcudart.so* under {home}/lib or {home}/lib64")
    torch_lib = Path(torch.__file__).parent / "lib"
    library = tmp_path / "tunebook_cuda_check.so"
    objects = sorted(str(p) for p in out.glob("*.o"))
    cxx = os.environ.get("CXX", "c++")
    returncode, log = _run([cxx, "-shared", *objects, f"-L{torch_lib}", "-lc10", "-lc10_cuda",
                            "-ltorch_cpu", "-ltorch_cuda", "-ltorch", f"-L{link_dir}",
                            "-lcudart", "-o", str(library)])
    assert returncode == 0, f"link failed:\n{log[-6000:]}"

    names = _schema_names()
    assert len(names) == 6, names
    # A fresh process: the optimizers' own CPU library may already define the namespace here.
    script = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(library)!r})
        missing = [n for n in {names!r}
                   if not torch._C._dispatch_has_kernel_for_dispatch_key(
                       "tunebook::" + n, "CUDA")]
        assert not missing, f"no CUDA kernel registered for {{missing}}"
        print("registered", len({names!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"registered {len(names)}" in proc.stdout
