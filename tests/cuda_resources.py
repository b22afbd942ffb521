"""Registers, stack frames and spills of every CUDA kernel, as ptxas reports them.

Compiles each ``csrc/cuda/*.cu`` to a cubin with the flags of the just-in-time build
(``-O3 -lineinfo`` and torch's half/bfloat16 defines) plus ``-Xptxas -v``, keeps the PTX, and
returns one row per kernel: its registers, stack frame and spill bytes from ptxas, and the
register cap (``.maxnreg``) or block minimum (``.minnctapersm``) the PTX carries. The
compile output is cached under ``$TUNEBOOK_CACHE_DIR`` (default ``~/.cache/tunebook``),
keyed by the sources, nvcc's version, the flags and the architecture, so a repeat costs
nothing. Used by tests/test_cuda_build.py; ``python tests/cuda_resources.py [sm_90]`` prints
the table.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

CSRC = Path(__file__).resolve().parents[1] / "csrc"
# What torch.utils.cpp_extension adds to every nvcc command, and tunebook's own flags
# (tunebook.optim._build._NVCC_FLAGS).
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr", "-std=c++17",
]


class KernelResources(NamedTuple):
    source: str  # the .cu file
    name: str  # demangled where c++filt exists, else mangled
    mangled: str
    registers: int
    stack_frame: int
    spill_stores: int
    spill_loads: int
    max_registers: int | None  # .maxnreg in the PTX
    min_blocks: int | None  # .minnctapersm in the PTX


def _compile(source: Path, nvcc: Path, arch: str, flags: list[str], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(nvcc), *TORCH_NVCC_FLAGS, *flags, f"-gencode=arch=compute_{arch[3:]},code={arch}",
           "-cubin", "-Xptxas", "-v", "--keep", "--keep-dir", str(out_dir), f"-I{CSRC}",
           "-o", str(out_dir / (source.stem + ".cubin")), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source.name}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def _parse(source: str, log: str, ptx: str) -> list[KernelResources]:
    caps: dict[str, tuple[int | None, int | None]] = {}
    # ".entry NAME(" ... the directives between the parameter list and the body.
    for match in re.finditer(r"\.entry\s+(\S+)\((.*?)\)\s*((?:\.\w+[^\n{]*\n\s*)*)\{", ptx,
                             re.S):
        directives = match.group(3)
        maxnreg = re.search(r"\.maxnreg\s+(\d+)", directives)
        minblocks = re.search(r"\.minnctapersm\s+(\d+)", directives)
        caps[match.group(1)] = (int(maxnreg.group(1)) if maxnreg else None,
                                int(minblocks.group(1)) if minblocks else None)
    rows, current, frame = [], None, (0, 0, 0)
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)'", line)
        if entry:
            current, frame = entry.group(1), (0, 0, 0)
            continue
        props = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads", line)
        if props and current:
            frame = tuple(int(x) for x in props.groups())
            continue
        used = re.search(r"Used (\d+) registers", line)
        if used and current:
            cap, blocks = caps.get(current, (None, None))
            rows.append(KernelResources(source, current, current, int(used.group(1)), *frame,
                                        cap, blocks))
            current = None
    return rows


def _demangle(rows: list[KernelResources]) -> list[KernelResources]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(r.mangled for r in rows),
                             capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return rows
    if len(out) != len(rows):
        return rows
    return [r._replace(name=n) for r, n in zip(rows, out)]


def kernel_resources(nvcc: Path, nvcc_version: str, arch: str = "sm_90",
                     flags: list[str] | None = None) -> list[KernelResources]:
    """One row per kernel of every csrc/cuda/*.cu, compiled for `arch` (cached)."""
    flags = list(flags if flags is not None else ["-O3", "-lineinfo"])
    sources = sorted((CSRC / "cuda").glob("*.cu"))
    digest = hashlib.sha256(repr((nvcc_version, arch, flags, TORCH_NVCC_FLAGS)).encode())
    for path in sorted(CSRC.rglob("*")):
        if path.suffix in {".h", ".cuh", ".cu"}:
            digest.update(str(path.relative_to(CSRC)).encode())
            digest.update(path.read_bytes())
    cache = Path(os.environ.get("TUNEBOOK_CACHE_DIR", Path.home() / ".cache" / "tunebook"))
    out_dir = cache / "ptxas" / digest.hexdigest()[:16]
    done = out_dir / "done"
    if not done.exists():
        jobs = max(1, min(len(sources), int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))))
        with ThreadPoolExecutor(jobs) as pool:
            logs = list(pool.map(lambda s: _compile(s, nvcc, arch, flags, out_dir), sources))
        for source, log in zip(sources, logs):
            (out_dir / (source.stem + ".ptxas.log")).write_text(log)
        for path in out_dir.iterdir():  # nvcc's other intermediates: ~40 MB
            if not path.name.endswith((".ptx", ".ptxas.log")):
                path.unlink()
        done.write_text("ok\n")
    rows = []
    for source in sources:
        log = (out_dir / (source.stem + ".ptxas.log")).read_text()
        ptx = (out_dir / (source.stem + ".ptx")).read_text()
        rows += _parse(source.name, log, ptx)
    return _demangle(rows)


def family(row: KernelResources) -> str:
    """A short label: the functor of a multi-tensor kernel, else the kernel's name."""
    functor = re.search(r"::(\w+Functor)<", row.name)
    if functor:
        return f"{row.source}: {functor.group(1)}"
    plain = re.search(r"(\w+_kernel)", row.name)
    return f"{row.source}: {plain.group(1) if plain else row.name[:40]}"


def summary(rows: list[KernelResources]) -> str:
    """A table per kernel family: count, registers min-max, cap, worst stack frame/spills."""
    groups: dict[str, list[KernelResources]] = {}
    for row in rows:
        groups.setdefault(family(row), []).append(row)
    lines = [f"{'kernel':<36} {'count':>5} {'registers':>9} {'cap':>4} {'stack':>5} "
             f"{'spill st/ld':>11}"]
    for name, group in groups.items():
        regs = sorted(r.registers for r in group)
        caps = {r.max_registers for r in group}
        cap = "/".join(str(c) for c in sorted(c for c in caps if c is not None)) or "-"
        lines.append(
            f"{name:<36} {len(group):>5} {f'{regs[0]}-{regs[-1]}':>9} {cap:>4} "
            f"{max(r.stack_frame for r in group):>5} "
            f"{max(r.spill_stores for r in group):>5}/{max(r.spill_loads for r in group):<5}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from tunebook.optim._cuda_toolkit import find_toolkit, toolkit_problem

    found = find_toolkit()
    if found is None:
        raise SystemExit(toolkit_problem())
    print(summary(kernel_resources(found.home / "bin" / "nvcc", found.version,
                                   sys.argv[1] if len(sys.argv) > 1 else "sm_90")))
