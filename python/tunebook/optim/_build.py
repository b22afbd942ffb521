"""Just-in-time build of the C++/CUDA optimizer kernels (csrc/), cached on disk.

The extension is compiled with :func:`torch.utils.cpp_extension.load` and ninja into a cache
directory whose name is a hash of everything that changes the binary: the sources, the torch
version, the compiler flags, the host CPU's ``-march=native`` target and, with CUDA, the
architecture list and nvcc's version. The first use builds (a minute or two, announced on
stderr); every later use in any process loads the cached library. The ops register themselves with the
dispatcher (``torch.ops.tunebook.*``) as a side effect of loading (``is_python_module=False``).

When no compiler is available the optimizers fall back to the pure-torch reference path with
exactly one warning; ``TUNEBOOK_BACKEND=reference`` selects that path without building.

Environment:
    TUNEBOOK_CACHE_DIR: cache root (default ``~/.cache/tunebook``).
    TUNEBOOK_CSRC: the kernel sources (default: ``tunebook/_csrc`` inside the package, which
        in a checkout links to ``<repo>/csrc``).
    TUNEBOOK_BACKEND: ``reference`` to never build.
    TUNEBOOK_BUILD_CUDA: ``1`` to compile the .cu sources even without a visible GPU (a CUDA
        toolkit is needed; ``TORCH_CUDA_ARCH_LIST`` picks the targets, default ``9.0``).
    TORCH_CUDA_ARCH_LIST: CUDA targets (default: the visible GPU's architecture only).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ._cuda_toolkit import cudart_link_dir, find_toolkit, toolkit_problem

__all__ = ["build_library", "library_backends", "csrc_dir"]

# -O3: the loops in csrc/cpu/ rely on GCC's vectoriser (on at -O3, also with -O2 since GCC 12
#   but only with the cheap cost model).
# -march=native: AVX2/FMA/F16C (AVX-512 where present) instead of SSE2. Verified with
#   -fopt-info-vec and objdump on an AVX2 EPYC: the float32 Adam/SGD/RMSprop/NAdam loops use
#   256-bit ymm vmulps/vsqrtps/vdivps and the norm uses vcvtps2pd + vfmadd231pd; the cache key
#   includes the compiler's resolved -march=native flags, so a cache shared between different
#   CPUs never loads a binary built for another one.
# -fno-math-errno: lets sqrtf vectorise (vsqrtps) instead of calling libm for errno; it does not
#   change any result. No -ffast-math: NaN/inf must propagate exactly as in torch.
# -ffp-contract=off: no fused multiply-adds, so each operation rounds as in torch's op-by-op
#   single-tensor path (the oracle); the loops are memory-bound, so FMAs would buy nothing.
# -fopenmp: at::parallel_for is an inline template that expands to `#pragma omp parallel`.
_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
# No --use_fast_math: it makes division and sqrt approximate and flushes denormals, so the
# results would drift from torch.optim (whose CUDA kernels use IEEE div.rn/sqrt.rn); the
# kernels are memory-bound, so it would buy nothing.
_NVCC_FLAGS = ["-O3", "-lineinfo"]

_lock = threading.Lock()
_warned_fallback = False
_warned_toolkit = False


def csrc_dir() -> Path:
    """The directory holding the kernel sources.

    ``$TUNEBOOK_CSRC`` if set; else the sources shipped inside the package
    (``tunebook/_csrc``, found through :mod:`importlib.resources`; in a checkout that is a
    symbolic link to the repository's ``csrc/``, so edits there are picked up in place);
    else a checkout's ``csrc/`` beside ``python/``.

    Raises:
        RuntimeError: no kernel sources anywhere (an incomplete installation).
    """
    env = os.environ.get("TUNEBOOK_CSRC")
    if env:
        return Path(env)
    packaged = Path(str(importlib.resources.files("tunebook") / "_csrc"))
    checkout = Path(__file__).resolve().parents[3] / "csrc"
    for candidate in (packaged, checkout):
        if (candidate / "ops.cpp").is_file():
            return candidate
    raise RuntimeError(
        f"tunebook's kernel sources are missing (no {packaged / 'ops.cpp'}): this installation is "
        "incomplete; reinstall it (pip install --force-reinstall tunebook), or set TUNEBOOK_CSRC to a "
        "checkout's csrc/ directory"
    )


def _cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _native_target(cxx: str) -> str:
    """The compiler's resolved -march=native flags (part of the cache key)."""
    try:
        out = subprocess.run(
            [cxx, "-march=native", "-Q", "--help=target"],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    keep = [line.split() for line in out.splitlines() if line.strip().startswith(("-march=", "-mtune="))]
    enabled = [line.split()[0] for line in out.splitlines() if line.strip().endswith("[enabled]")]
    return repr(keep) + repr(sorted(enabled))


def _use_cuda_home() -> Path | None:
    """Finds a CUDA toolkit of torch's major version (also the pip one) and points
    cpp_extension at it, also when $CUDA_HOME names one of another major version (which
    cpp_extension would otherwise use: it reads $CUDA_HOME once, at import)."""
    from torch.utils import cpp_extension

    toolkit = find_toolkit()
    if toolkit is None:
        return None
    if cpp_extension.CUDA_HOME is None or Path(cpp_extension.CUDA_HOME) != toolkit.home:
        cpp_extension.CUDA_HOME = str(toolkit.home)  # read by load()
    if not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = str(toolkit.home)
    return toolkit.home


def _cuda_wanted() -> bool:
    if torch.version.cuda is None:
        return False
    wanted = os.environ.get("TUNEBOOK_BUILD_CUDA") == "1" or torch.cuda.is_available()
    if _use_cuda_home() is None:
        if wanted:
            _warn_toolkit(
                "tunebook: a CUDA GPU is visible but the CUDA kernels cannot be built, so CUDA "
                f"params use the slower pure-torch reference path: {toolkit_problem()}"
            )
        return False
    return wanted


def _warn_toolkit(message: str) -> None:
    global _warned_toolkit
    if not _warned_toolkit:
        _warned_toolkit = True
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _cuda_arch_list() -> str:
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "9.0"


def _sources(with_cuda: bool) -> list[Path]:
    root = csrc_dir()
    sources = [root / "ops.cpp", *sorted((root / "cpu").glob("*.cpp"))]
    if with_cuda:
        sources += sorted((root / "cuda").glob("*.cu"))
        sources += sorted((root / "cuda").glob("*.cpp"))
    return sources


def _cache_key(with_cuda: bool, cxx: str) -> str:
    root = csrc_dir()
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in {".h", ".cuh", ".cpp", ".cu"})
    for path in files:
        if not with_cuda and "cuda" in path.relative_to(root).parts:
            continue  # a CPU-only build does not change when csrc/cuda/ does
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(repr((_CFLAGS, _LDFLAGS, sys.version_info[:2], _native_target(cxx))).encode())
    if with_cuda:
        toolkit = find_toolkit()
        # nvcc's own version, not just torch's CUDA: two nvcc releases (or a toolkit swapped
        # under a cached library) compile different binaries.
        nvcc = toolkit.version if toolkit else None
        digest.update(repr((torch.version.cuda, nvcc, _cuda_arch_list(), _NVCC_FLAGS)).encode())
    return digest.hexdigest()[:16]


def build_library(with_cuda: bool | None = None, verbose: bool = False) -> Path:
    """Builds (or reuses) the kernel library and loads it into this process.

    Args:
        with_cuda: compile the .cu sources too. Default: when a GPU is visible and a CUDA
            toolkit is found (or ``TUNEBOOK_BUILD_CUDA=1``).
        verbose: show the compiler's commands and output.

    Returns:
        The path of the loaded shared library.

    Raises:
        RuntimeError: no C++ compiler, or the build failed (with the compiler's output).
    """
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    cxx = _cxx()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (neither $CXX, c++ nor g++ is on PATH)")
    if with_cuda is None:
        with_cuda = _cuda_wanted()
    key = _cache_key(with_cuda, cxx)
    name = f"tunebook_ops_{'cuda' if with_cuda else 'cpu'}_{key}"
    cache_root = Path(os.environ.get("TUNEBOOK_CACHE_DIR", Path.home() / ".cache" / "tunebook"))
    build_dir = cache_root / "ops" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    library = build_dir / f"{name}.so"
    # Every tunebook process takes this lock before it looks at or builds the library, so
    # a cpp_extension lock file found while holding it was left by a process that died
    # mid-build (kill -9, OOM, a CI timeout): removed at once. The kernel releases a flock
    # when its holder dies, so there is nothing to go stale.
    with _build_lock(build_dir) as flock_held:
        if library.exists():
            # The cache key covers every input, so a library under it is current: load it
            # directly. Going through cpp_extension.load would take its lock file (which a
            # process killed mid-load leaves behind, blocking every later process) and re-run
            # ninja, which rebuilds when the same sources sit at another path (a second checkout).
            try:
                torch.ops.load_library(str(library))
                return library
            except OSError as error:
                reason = _dlopen_reason(error)
                if _missing_dependency(reason, library):
                    # Rebuilding would give the same library and the same failure, in every
                    # new process: say why instead.
                    raise RuntimeError(
                        f"the cached kernel library {library} cannot be loaded: {reason}"
                    ) from error
                library.unlink()  # a link step cut short: rebuild it
        _remove_dead_holders_lock(build_dir, flock_held)
        if not library.exists():
            print(
                f"tunebook: compiling the optimizer kernels ({'CPU+CUDA' if with_cuda else 'CPU'}) "
                f"once into {build_dir}; this takes a minute or two...",
                file=sys.stderr, flush=True,
            )
        old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        ldflags = list(_LDFLAGS)
        if with_cuda:
            os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_arch_list()
            home = _use_cuda_home()
            if home is None:
                raise RuntimeError(f"with_cuda=True but {toolkit_problem()}")
            toolkit = find_toolkit()
            passed_over = [f"{where}={path} ({why})" for where, path, why in toolkit.rejected
                           if where.startswith("$")]
            if passed_over:
                print(f"tunebook: not using {', '.join(passed_over)}: torch needs CUDA "
                      f"{torch.version.cuda.split('.')[0]}.x; building with nvcc {toolkit.version} "
                      f"from {home} ({toolkit.source})", file=sys.stderr, flush=True)
            link_dir = cudart_link_dir(build_dir, home)
            if link_dir is not None:
                ldflags.append(f"-L{link_dir}")
        try:
            cpp_extension.load(
                name=name,
                sources=[str(s) for s in _sources(with_cuda)],
                extra_cflags=_CFLAGS,
                extra_cuda_cflags=_NVCC_FLAGS,
                extra_ldflags=ldflags,
                extra_include_paths=[str(csrc_dir())],
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                is_python_module=False,
                verbose=verbose,
            )
        finally:
            if with_cuda:
                if old_arch is None:
                    os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
                else:
                    os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
        return library


def _dlopen_reason(error: BaseException) -> str:
    """The loader's own message: torch.ops.load_library wraps it ("Could not load this
    library: ...") and chains the original."""
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error)


def _missing_dependency(reason: str, library: Path) -> bool:
    """Whether dlopen failed on a library that ``library`` needs (``libcudart.so.12: cannot
    open shared object file``), rather than on ``library`` itself (truncated, not ELF)."""
    return "cannot open shared object file" in reason and not reason.startswith(str(library))


# Without flock (not POSIX): a build takes minutes, so a cpp_extension lock older than this
# was left by a process that died holding it.
_STALE_LOCK_SECONDS = 30 * 60


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[bool]:
    """An exclusive flock on ``build_dir/build.flock`` for the check-load-build sequence
    (waiting, with one message, while another process builds); yields whether it is held."""
    try:
        import fcntl
    except ImportError:  # Windows: cpp_extension's own lock, and the age rule below
        yield False
        return
    with open(build_dir / "build.flock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"tunebook: waiting for another process building the kernels in {build_dir}",
                  file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_dead_holders_lock(build_dir: Path, flock_held: bool) -> None:
    """Removes cpp_extension's build lock (it waits forever on it) when its holder died:
    always under tunebook's flock (a live holder would hold the flock), else when old."""
    lock = build_dir / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if flock_held or age > _STALE_LOCK_SECONDS:
        warnings.warn(
            f"tunebook: removing the build lock {lock} left by a process that died while "
            f"building ({age / 60:.0f} min old)",
            RuntimeWarning, stacklevel=3,
        )
        lock.unlink(missing_ok=True)


def _ensure_ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH; a venv's python may be run without activating it."""
    if shutil.which("ninja"):
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja  # the PyPI package ships the binary

        candidates.insert(0, Path(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    for directory in candidates:
        if (directory / "ninja").exists():
            os.environ["PATH"] = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"
            return


def build_failure_hint(cause: str) -> str | None:
    """What to install when the kernel build failed with ``cause``, or None if unknown."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if "no C++ compiler" in cause:
        return (
            "install a C++ compiler: apt-get install g++ (Debian/Ubuntu), dnf install gcc-c++ "
            "(Fedora/RHEL), or conda install -c conda-forge gxx; or point CXX at one"
        )
    if "Python.h" in cause:
        return (
            f"install the Python development headers: apt-get install python{version}-dev "
            "(Debian/Ubuntu) or dnf install python3-devel (Fedora/RHEL)"
        )
    if "Ninja is required" in cause or "ninja: not found" in cause:
        return "install ninja: pip install ninja"
    if "omp.h" in cause:
        return "install OpenMP for your compiler: apt-get install libomp-dev (clang) or use g++"
    return None


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"tunebook::{op}", key)


@functools.lru_cache(maxsize=None)
def _load() -> frozenset[str]:
    global _warned_fallback
    if os.environ.get("TUNEBOOK_BACKEND") == "reference":
        return frozenset()
    try:
        build_library()
    except Exception as error:  # noqa: BLE001 - any build failure means: use the reference
        if not _warned_fallback:
            _warned_fallback = True
            cause = str(error).strip()
            hint = build_failure_hint(cause)
            warnings.warn(
                "tunebook: could not build the C++ optimizer kernels, so the optimizers use the "
                f"slower pure-torch reference path.{f' To fix: {hint}.' if hint else ''} "
                f"Cause: {cause[-2000:]}",
                RuntimeWarning,
                stacklevel=4,
            )
        return frozenset()
    from . import _fake  # noqa: F401 - registers the fake kernels for torch.compile

    backends = {"cpu"} if _has_kernel("adam_step_", "CPU") else set()
    if _has_kernel("adam_step_", "CUDA"):
        backends.add("cuda")
    return frozenset(backends)


def library_backends() -> frozenset[str]:
    """Device types with compiled kernels ("cpu", "cuda"), building on first call."""
    with _lock:
        return _load()
