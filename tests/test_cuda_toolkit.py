"""Choosing the CUDA toolkit for the kernel build: only one of torch's major version.

A 12.x toolkit (common on H100 machines) named by $CUDA_HOME beside a CUDA 13 torch would
link ``libcudart.so.12`` next to torch's ``.so.13``; tunebook must pass it over for a
matching toolkit (the PyPI one, a system one) or say exactly what to install, and put
nvcc's version into the kernel cache key. Every toolkit here is a fake: a ``bin/nvcc``
shell script printing a version and, for some, a ``version.json``. No GPU, no real nvcc.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from tunebook.optim import _build
from tunebook.optim import _cuda_toolkit as toolkit

CXX = _build._cxx()  # before any test empties PATH


def fake_toolkit(home: Path, version: str | None, *, version_json: str | None = None,
                 libcudart: str | None = None) -> Path:
    """A toolkit root whose nvcc prints `version` (None: an nvcc that fails)."""
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    if version is None:
        nvcc.write_text("#!/bin/sh\necho 'nvcc: cannot run here' >&2\nexit 1\n")
    else:
        major_minor = ".".join(version.split(".")[:2])
        nvcc.write_text(
            "#!/bin/sh\n"
            "echo 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
            f"echo 'Cuda compilation tools, release {major_minor}, V{version}'\n"
        )
    nvcc.chmod(0o755)
    if version_json is not None:
        (home / "version.json").write_text(json.dumps(
            {"cuda": {"name": "CUDA SDK", "version": version_json},
             "cuda_nvcc": {"name": "CUDA NVCC", "version": version_json}}))
    if libcudart is not None:
        (home / "lib").mkdir()
        (home / "lib" / libcudart).write_bytes(b"")
    return home


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine with no toolkit anywhere (no $CUDA_HOME, no pip toolkit, nothing under
    /usr/local, no nvcc on PATH) and a CUDA 13.0 torch; tests add fakes to it."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    (tmp_path / "empty_path").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty_path"))
    pip_root = tmp_path / "site-packages" / "nvidia"
    pip_root.mkdir(parents=True)
    monkeypatch.setattr(toolkit, "_nvidia_roots", lambda: [pip_root])
    system = tmp_path / "usr_local"
    system.mkdir()
    monkeypatch.setattr(toolkit, "_SYSTEM_ROOT", system)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    toolkit._search.cache_clear()
    toolkit._nvcc_version.cache_clear()
    yield {"root": tmp_path, "pip": pip_root, "system": system}
    toolkit._search.cache_clear()
    toolkit._nvcc_version.cache_clear()


def test_cuda_home_of_another_major_version_is_passed_over_for_the_pip_toolkit(
        machine, monkeypatch):
    old = fake_toolkit(machine["root"] / "cuda-12.4", "12.4.131", version_json="12.4.1")
    pip = fake_toolkit(machine["pip"] / "cu13", "13.0.88", libcudart="libcudart.so.13")
    monkeypatch.setenv("CUDA_HOME", str(old))
    found = toolkit.find_toolkit()
    assert found is not None, toolkit.toolkit_problem()
    assert (found.home, found.version, found.source) == (pip, "13.0.88", "pip")
    assert found.rejected == (("$CUDA_HOME", old, "nvcc 12.4.131"),)
    assert toolkit.cuda_home() == pip
    assert toolkit.toolkit_problem() is None


def test_a_system_toolkit_of_the_right_major_version_is_found_beside_another(
        machine, monkeypatch):
    """/usr/local/cuda -> 12.x, /usr/local/cuda-13.0 and cuda-13.1 beside it: the newest 13."""
    fake_toolkit(machine["system"] / "cuda", "12.6.85")
    fake_toolkit(machine["system"] / "cuda-13.0", "13.0.88")
    newest = fake_toolkit(machine["system"] / "cuda-13.1", "13.1.50")
    found = toolkit.find_toolkit()
    assert found is not None and (found.home, found.version) == (newest, "13.1.50")


def test_cuda_home_of_the_right_major_version_is_used_first(machine, monkeypatch):
    fake_toolkit(machine["pip"] / "cu13", "13.0.88")
    mine = fake_toolkit(machine["root"] / "my-cuda", "13.1.20")
    monkeypatch.setenv("CUDA_HOME", str(mine))
    found = toolkit.find_toolkit()
    assert (found.home, found.version, found.source) == (mine, "13.1.20", "$CUDA_HOME")


def test_no_matching_toolkit_says_what_was_found_and_what_to_install(machine, monkeypatch):
    old = fake_toolkit(machine["root"] / "cuda-12.4", "12.4.131")
    fake_toolkit(machine["system"] / "cuda", "11.8.89")
    monkeypatch.setenv("CUDA_HOME", str(old))
    assert toolkit.find_toolkit() is None
    assert toolkit.cuda_home() is None
    problem = toolkit.toolkit_problem()
    assert f"$CUDA_HOME={old} has nvcc 12.4.131" in problem
    assert "CUDA 13.x" in problem and "libcudart.so.13" in problem
    assert 'pip install "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]==13.*"' in problem


def test_version_json_is_read_when_nvcc_does_not_run(machine, monkeypatch):
    broken = fake_toolkit(machine["root"] / "cuda-12.6", None, version_json="12.6.77")
    monkeypatch.setenv("CUDA_HOME", str(broken))
    assert toolkit.nvcc_version(broken) == "12.6.77"
    assert toolkit.find_toolkit() is None
    assert "nvcc 12.6.77" in toolkit.toolkit_problem()


def test_an_unreadable_version_is_not_trusted(machine, monkeypatch):
    mystery = fake_toolkit(machine["root"] / "cuda-x", None)
    monkeypatch.setenv("CUDA_HOME", str(mystery))
    assert toolkit.find_toolkit() is None
    assert "version could not be read" in toolkit.toolkit_problem()


def test_cuda_home_without_nvcc_is_reported(machine, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(machine["root"]))
    assert toolkit.find_toolkit() is None
    assert f"$CUDA_HOME={machine['root']} has no bin/nvcc" in toolkit.toolkit_problem()


def test_real_nvcc_version_output_is_parsed(machine, monkeypatch):
    """The shape of nvcc 13.0's own --version output (first line aside)."""
    home = machine["root"] / "cuda"
    (home / "bin").mkdir(parents=True)
    lines = ["nvcc: NVIDIA (R) Cuda compiler driver",
             "Copyright (c) 2005-2025 NVIDIA Corporation",
             "Built on Wed_Aug_20_01:58:59_PM_PDT_2025",
             "Cuda compilation tools, release 13.0, V13.0.88",
             "Build cuda_13.0.r13.0/compiler.36424714_0"]
    # echo is a shell builtin: the fixture's PATH has no programs.
    (home / "bin" / "nvcc").write_text("#!/bin/sh\n" + "".join(f"echo '{x}'\n" for x in lines))
    (home / "bin" / "nvcc").chmod(0o755)
    assert toolkit.nvcc_version(home) == "13.0.88"


def test_kernel_cache_key_includes_the_nvcc_version(machine, monkeypatch):
    a = fake_toolkit(machine["root"] / "a", "13.0.88")
    b = fake_toolkit(machine["root"] / "b", "13.1.20")
    c = fake_toolkit(machine["root"] / "c", "13.0.88")
    cxx = CXX
    if cxx is None:
        pytest.skip("no C++ compiler")
    keys = {}
    for name, home in (("a", a), ("b", b), ("c", c)):
        monkeypatch.setenv("CUDA_HOME", str(home))
        keys[name] = _build._cache_key(True, cxx)
    assert keys["a"] != keys["b"], "a different nvcc must give a different cache entry"
    assert keys["a"] == keys["c"], "the same nvcc version at another path is the same build"


def test_the_build_points_cpp_extension_at_the_matching_toolkit(machine, monkeypatch):
    """cpp_extension read $CUDA_HOME at import; a mismatched one must not reach load()."""
    from torch.utils import cpp_extension

    old = fake_toolkit(machine["root"] / "cuda-12.4", "12.4.131")
    pip = fake_toolkit(machine["pip"] / "cu13", "13.0.88")
    monkeypatch.setenv("CUDA_HOME", str(old))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(old))
    assert _build._use_cuda_home() == pip
    assert Path(cpp_extension.CUDA_HOME) == pip


def test_a_visible_gpu_without_a_matching_toolkit_warns_what_to_install(machine, monkeypatch):
    fake_toolkit(machine["system"] / "cuda", "12.4.131")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_build, "_warned_toolkit", False)
    with pytest.warns(RuntimeWarning, match=r"cuda-toolkit\[nvcc.*==13\.\*") as record:
        assert _build._cuda_wanted() is False
    assert "/cuda has nvcc 12.4.131" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build._cuda_wanted() is False  # once per process


def test_no_gpu_and_no_toolkit_is_silent(machine, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_build, "_warned_toolkit", False)
    monkeypatch.delenv("TUNEBOOK_BUILD_CUDA", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build._cuda_wanted() is False


def test_a_cached_library_missing_a_dependency_is_kept_and_explained(tmp_path, monkeypatch):
    """A library linked against a runtime that is gone (libcudart.so.12 after a toolkit
    change) must not be deleted and rebuilt in every new process: the load error says why."""
    cxx = CXX
    if cxx is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("TUNEBOOK_CACHE_DIR", str(tmp_path / "cache"))
    dep_dir = tmp_path / "dep"
    dep_dir.mkdir()
    (dep_dir / "dep.c").write_text("int tunebook_test_dep(void) { return 1; }\n")
    (dep_dir / "lib.c").write_text(
        "int tunebook_test_dep(void);\nint tunebook_test_lib(void) { return tunebook_test_dep(); }\n")
    subprocess.run([cxx, "-x", "c", "-shared", "-fPIC", "-o", str(dep_dir / "libtbgone.so.12"),
                    "-Wl,-soname,libtbgone.so.12", str(dep_dir / "dep.c")], check=True)
    key = _build._cache_key(False, cxx)
    name = f"tunebook_ops_cpu_{key}"
    build_dir = tmp_path / "cache" / "ops" / name
    build_dir.mkdir(parents=True)
    library = build_dir / f"{name}.so"
    subprocess.run([cxx, "-x", "c", "-shared", "-fPIC", "-o", str(library), str(dep_dir / "lib.c"),
                    "-x", "none", str(dep_dir / "libtbgone.so.12")], check=True)
    (dep_dir / "libtbgone.so.12").unlink()

    def no_rebuild(**kwargs):
        raise AssertionError("the cached library was deleted and is being rebuilt")

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", no_rebuild)
    with pytest.raises(RuntimeError, match=r"cannot be loaded: .*libtbgone\.so\.12"):
        _build.build_library(with_cuda=False)
    assert library.exists(), "the library was deleted (it would be rebuilt in every process)"
