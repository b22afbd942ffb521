"""Where the CUDA toolkit is, and whether it fits torch: the JIT build and the compile-check
tests both ask here.

A toolkit whose major version differs from the one torch was built with cannot be used: a
12.x nvcc links ``libcudart.so.12`` next to torch's ``libcudart.so.13``, the load fails (or
worse, two runtimes end up in one process), and the optimizers would fall back to the slow
reference path. So every candidate's nvcc is asked for its version and one of the right
major version is chosen, in this order: ``$CUDA_HOME`` / ``$CUDA_PATH``, the PyPI toolkit
(``pip install "cuda-toolkit[nvcc,...]"``, under ``site-packages/nvidia/cu<major>``),
``/usr/local/cuda``, ``/usr/local/cuda-<major>.*`` (newest first) and the nvcc on PATH. When
none fits, :func:`toolkit_problem` says what was found and what to install.

``pip install "cuda-toolkit[nvcc,...]"`` puts nvcc where torch.utils.cpp_extension (which
looks only at $CUDA_HOME, the nvcc on PATH and /usr/local/cuda) would not find it, and that
layout ships only the versioned ``libcudart.so.13`` while cpp_extension always links with
``-lcudart``: :func:`cudart_link_dir` bridges that.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = [
    "CudaToolkit", "find_toolkit", "cuda_home", "cuda_include_dir", "install_hint",
    "toolkit_problem", "nvcc_version", "cudart_link_dir",
]


# Where system toolkits live (cuda, cuda-12.4, cuda-13.0, ...); tests point it elsewhere.
_SYSTEM_ROOT = Path("/usr/local")


class CudaToolkit(NamedTuple):
    """A CUDA toolkit whose nvcc can build for this torch.

    Attributes:
        home: the toolkit root (``home/bin/nvcc``).
        version: nvcc's full version, e.g. ``"13.0.88"`` (part of the kernel cache key).
        source: where it was found (``"$CUDA_HOME"``, ``"pip"``, ``"/usr/local/cuda"``, ...).
        rejected: the candidates passed over, each ``(where, home, why)``.
    """

    home: Path
    version: str
    source: str
    rejected: tuple[tuple[str, Path, str], ...]


def torch_cuda_major() -> str:
    """The major CUDA version torch was built with ("13"), or "" for a CPU-only torch."""
    return (torch.version.cuda or "").split(".")[0]


def find_toolkit() -> CudaToolkit | None:
    """The first toolkit (in the module docstring's order) whose nvcc has torch's major
    version, or None. The answer is cached per environment (the variables and torch's
    CUDA version it depends on)."""
    return _search_here()[0]


def _search_here() -> tuple[CudaToolkit | None, tuple[tuple[str, Path, str], ...]]:
    return _search(
        os.environ.get("CUDA_HOME") or None,
        os.environ.get("CUDA_PATH") or None,
        os.environ.get("PATH", ""),
        torch.version.cuda,
    )


def cuda_home() -> Path | None:
    """The root of the toolkit :func:`find_toolkit` picks; None if there is none."""
    toolkit = find_toolkit()
    return toolkit.home if toolkit else None


def toolkit_problem() -> str | None:
    """None when a usable toolkit was found; otherwise one paragraph saying which toolkits
    were found, why none fits, and the command that installs one that does."""
    toolkit, rejected = _search_here()
    if toolkit is not None:
        return None
    major = torch_cuda_major()
    if not major:
        return "this torch was built without CUDA (torch.version.cuda is None)"
    found = "; ".join(f"{where}={home} has {why}" for where, home, why in rejected)
    return (
        f"no CUDA {major}.x toolkit (nvcc) found, and torch {torch.__version__} was built "
        f"with CUDA {torch.version.cuda}: a toolkit of another major version links "
        f"libcudart.so.<its major> beside torch's libcudart.so.{major}, which cannot work"
        + (f" (found: {found})" if found else "")
        + f". Install a matching one with: {install_hint()} , or point CUDA_HOME at a "
        f"CUDA {major}.x toolkit."
    )


def install_hint() -> str:
    major = torch_cuda_major() or "13"
    return f'pip install "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]=={major}.*"'


def nvcc_version(home: Path) -> str | None:
    """The version of ``home/bin/nvcc`` ("13.0.88"): from ``nvcc --version`` (the compiler
    that will actually run), else from the toolkit's ``version.json``; None if neither says.
    """
    return _nvcc_version(str(home))


@functools.lru_cache(maxsize=None)
def _nvcc_version(home: str) -> str | None:
    nvcc = Path(home) / "bin" / "nvcc"
    try:
        out = subprocess.run(
            [str(nvcc), "--version"], capture_output=True, text=True, timeout=60, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    # "Cuda compilation tools, release 13.0, V13.0.88"
    match = re.search(r"release \d+\.\d+, V(\d+\.\d+(?:\.\d+)*)", out) or re.search(
        r"release (\d+\.\d+)", out)
    if match:
        return match.group(1)
    try:
        info = json.loads((Path(home) / "version.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("cuda_nvcc", "cuda"):
        version = info.get(key, {}).get("version") if isinstance(info, dict) else None
        if isinstance(version, str) and re.match(r"\d+\.\d+", version):
            return version
    return None


@functools.lru_cache(maxsize=16)
def _search(cuda_home_env, cuda_path_env, path_env, torch_cuda):
    """(the chosen toolkit or None, the candidates rejected on the way)."""
    major = (torch_cuda or "").split(".")[0]
    rejected: list[tuple[str, Path, str]] = []
    seen: set[Path] = set()
    for where, home in _candidates(cuda_home_env, cuda_path_env, path_env, major):
        if home in seen:
            continue
        seen.add(home)
        if not (home / "bin" / "nvcc").exists():
            if where.startswith("$"):
                rejected.append((where, home, "no bin/nvcc"))
            continue
        version = nvcc_version(home)
        if version is None:
            rejected.append((where, home, "an nvcc whose version could not be read"))
            continue
        if not major or version.split(".")[0] != major:
            rejected.append((where, home, f"nvcc {version}"))
            continue
        return CudaToolkit(home, version, where, tuple(rejected)), tuple(rejected)
    return None, tuple(rejected)


def _candidates(cuda_home_env, cuda_path_env, path_env, major) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    if cuda_home_env:
        out.append(("$CUDA_HOME", Path(cuda_home_env)))
    if cuda_path_env:
        out.append(("$CUDA_PATH", Path(cuda_path_env)))
    for root in _nvidia_roots():
        for sub in (f"cu{major}", "cuda_nvcc"):
            out.append(("pip", root / sub))
    out.append(("/usr/local/cuda", _SYSTEM_ROOT / "cuda"))
    versioned = sorted(_SYSTEM_ROOT.glob(f"cuda-{major}.*"),
                       key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)], reverse=True)
    out += [(str(p), p) for p in versioned]
    nvcc = shutil.which("nvcc", path=path_env)
    if nvcc:
        out.append(("PATH", Path(nvcc).resolve().parent.parent))
    return out


def cuda_include_dir() -> Path | None:
    """A directory with the CUDA runtime headers (cuda_runtime.h, cuda_bf16.h, ...): the
    toolkit's, or the one torch's own CUDA runtime wheel ships; None if there is none."""
    home = cuda_home()
    candidates = [home / "include"] if home else []
    major = torch_cuda_major()
    candidates += [root / sub / "include" for root in _nvidia_roots()
                   for sub in (f"cu{major}", "cuda_runtime")]
    for path in candidates:
        if (path / "cuda_runtime.h").exists() and (path / "cuda_bf16.h").exists():
            return path
    return None


def _nvidia_roots() -> list[Path]:
    try:
        import nvidia  # namespace package of NVIDIA's wheels
    except ImportError:
        return []
    return [Path(p) for p in nvidia.__path__]


def cudart_link_dir(build_dir: Path, home: Path) -> Path | None:
    """A directory to pass as ``-L`` so that ``-lcudart`` resolves, or None if not needed.

    When the toolkit has only ``libcudart.so.<major>`` (the pip layout), a symlink named
    ``libcudart.so`` is made under ``build_dir/cuda_link``; the linked library then records
    ``libcudart.so.<major>``, the same runtime torch itself loads.
    """
    for lib in ("lib64", "lib"):
        if (home / lib / "libcudart.so").exists():
            return None
    versioned = sorted((home / "lib").glob("libcudart.so.*")) + sorted(
        (home / "lib64").glob("libcudart.so.*")
    )
    if not versioned:
        return None
    link_dir = build_dir / "cuda_link"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "libcudart.so"
    if not link.exists():
        link.symlink_to(versioned[0])
    return link_dir
