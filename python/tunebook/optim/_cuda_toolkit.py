"""Where the CUDA toolkit is: the JIT build and the compile-check tests both ask here.

``pip install "cuda-toolkit[nvcc,...]"`` puts nvcc under ``site-packages/nvidia/cu13/bin``,
which is not on PATH, so torch.utils.cpp_extension (which looks only at $CUDA_HOME, the nvcc
on PATH and /usr/local/cuda) would not find it; and that layout ships only the versioned
``libcudart.so.13``, while cpp_extension always links with ``-lcudart``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def cuda_home() -> Path | None:
    """The CUDA toolkit root: $CUDA_HOME/$CUDA_PATH, the pip wheel (``nvidia/cu13``, from
    ``cuda-toolkit[nvcc]``), /usr/local/cuda, or the nvcc on PATH; None if there is no nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return Path(os.environ[var])
    major = (torch.version.cuda or "").split(".")[0]
    for root in _nvidia_roots():
        for sub in (f"cu{major}", "cuda_nvcc"):
            if (root / sub / "bin" / "nvcc").exists():
                return root / sub
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return Path("/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parent.parent if nvcc else None


def cuda_include_dir() -> Path | None:
    """A directory with the CUDA runtime headers (cuda_runtime.h, cuda_bf16.h, ...): the
    toolkit's, or the one torch's own CUDA runtime wheel ships; None if there is none."""
    home = cuda_home()
    candidates = [home / "include"] if home else []
    major = (torch.version.cuda or "").split(".")[0]
    candidates += [root / sub / "include" for root in _nvidia_roots()
                   for sub in (f"cu{major}", "cuda_runtime")]
    for path in candidates:
        if (path / "cuda_runtime.h").exists() and (path / "cuda_bf16.h").exists():
            return path
    return None


def install_hint() -> str:
    major = (torch.version.cuda or "13").split(".")[0]
    return f'pip install "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]=={major}.*"'


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
