"""Where the CUDA toolkit is, for the tests that compile CUDA sources without a GPU."""

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
