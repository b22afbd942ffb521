"""tunebook as a user installs it: the sdist builds a wheel, the wheel carries the kernel
sources, and an optimizer installed outside the repository runs the compiled kernels.

The wheel is built from the sdist (so one build checks both) with the repository's cargo
target directory, which ``make test`` has already filled, so the Rust part is not
recompiled; it is installed with ``pip install --no-deps --target`` (torch and the other
dependencies come from the running environment) and imported from a directory outside
the checkout. The kernel sources it ships are the checkout's, so the kernel cache (keyed
by their content) is shared and nothing is compiled again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"


def _project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _maturin() -> list[str]:
    found = shutil.which("maturin") or shutil.which("maturin", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip('maturin is not installed (pip install "tunebook[dev]")')
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed (https://rustup.rs)")
    return [found]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    _run([*_maturin(), "sdist", "--out", str(out)], cwd=REPO)
    (path,) = out.glob("tunebook-*.tar.gz")
    return path


@pytest.fixture(scope="module")
def site(sdist, tmp_path_factory) -> Path:
    """The wheel built from the sdist, installed into a fresh directory."""
    work = tmp_path_factory.mktemp("wheel")
    with tarfile.open(sdist) as archive:
        archive.extractall(work, filter="data")
    (source,) = work.glob("tunebook-*")
    env = dict(os.environ, CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR", str(REPO / "target")))
    _run([*_maturin(), "build", "--release", "--out", str(work / "dist")], cwd=source, env=env)
    (wheel,) = (work / "dist").glob("tunebook-*.whl")
    site = work / "site"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)])
    return site


def test_sdist_holds_the_sources_a_build_needs(sdist):
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if "/" in m.name}
    for name in ("pyproject.toml", "Cargo.toml", "Cargo.lock", "rust/lib.rs", "python/tunebook/__init__.py"):
        assert name in members, name
    kernels = sorted(str(p.relative_to(CSRC)) for p in CSRC.rglob("*") if p.is_file())
    assert "ops.cpp" in kernels
    for name in kernels:
        member = members.get(f"python/tunebook/_csrc/{name}")
        assert member is not None and member.isfile(), f"the sdist lacks tunebook/_csrc/{name} as a file"


def test_installed_wheel_runs_the_compiled_kernels_outside_the_checkout(site, tmp_path):
    kernels = sorted(str(p.relative_to(CSRC)) for p in CSRC.rglob("*") if p.is_file())
    for name in kernels:
        shipped = site / "tunebook" / "_csrc" / name
        assert shipped.is_file() and not shipped.is_symlink(), name
        assert shipped.read_bytes() == (CSRC / name).read_bytes(), name
    assert not (site / "csrc").exists(), "kernel sources must live inside the package, not at the top level"
    script = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("error", RuntimeWarning)  # the build-failure fallback warns
        import torch, tunebook
        from tunebook.optim import _build
        print("module", tunebook.__file__)
        print("csrc", _build.csrc_dir())
        param = torch.nn.Parameter(torch.ones(8))
        opt = tunebook.Adam([param], lr=0.1, max_grad_norm=1.0)
        param.grad = torch.full((8,), 2.0)
        opt.step()
        print("backend", opt.backend)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TUNEBOOK_CSRC", "TUNEBOOK_BACKEND")}
    env["PYTHONPATH"] = str(site)
    result = _run([sys.executable, "-c", script], cwd=tmp_path, env=env)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert Path(lines["module"]).is_relative_to(site), lines
    assert Path(lines["csrc"]) == site / "tunebook" / "_csrc", lines
    assert lines["backend"] == "cpu", result.stdout + result.stderr
    assert "could not build" not in result.stderr

    # The console script works from the install too.
    version = _run([sys.executable, "-c", "import sys; from tunebook.cli import main; sys.exit(main())",
                    "--version"], cwd=tmp_path, env=env)
    assert version.stdout.split() == ["tunebook", _project_version()]
    assert (site / "bin" / "tunebook").exists()


# --------------------------------------------------------------------------------------
# When the kernels cannot be built, one warning says what to install. The build runs in
# this process (its result is cached per process, so the cached entry point is bypassed).


def _fallback_warnings(monkeypatch, tmp_path: Path, **env: str) -> list[str]:
    import warnings

    from tunebook.optim import _build

    for name in ("CXX", "TUNEBOOK_BACKEND", "TUNEBOOK_CSRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNEBOOK_CACHE_DIR", str(tmp_path / "cache"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(_build, "_warned_fallback", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert _build._load.__wrapped__() == frozenset()  # the reference path
    return [str(w.message) for w in caught if "could not build" in str(w.message)]


def test_no_compiler_warns_once_naming_the_package(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    warnings = _fallback_warnings(monkeypatch, tmp_path, PATH=str(empty))
    assert len(warnings) == 1, warnings
    assert "no C++ compiler" in warnings[0]
    assert "apt-get install g++" in warnings[0] and "dnf install gcc-c++" in warnings[0]


def test_no_python_headers_warns_once_naming_the_package(tmp_path, monkeypatch):
    """A compiler that cannot see Python's headers, as on a machine without python3-dev,
    compiling a source that needs them."""
    import sysconfig

    real = shutil.which("c++") or shutil.which("g++")
    if real is None:
        pytest.skip("no C++ compiler to wrap")
    include = sysconfig.get_path("include")
    wrapper = tmp_path / "bin" / "c++"
    wrapper.parent.mkdir()
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        # Drops Python's include directory (and the -isystem before it).
        out=()
        for a in "$@"; do
          if [ "$a" = "{include}" ]; then unset 'out[${{#out[@]}}-1]'; continue; fi
          out+=("$a")
        done
        exec "{real}" "${{out[@]}}"
        """))
    wrapper.chmod(0o755)
    csrc = tmp_path / "csrc"
    (csrc / "cpu").mkdir(parents=True)
    (csrc / "ops.cpp").write_text("#include <Python.h>\n")
    warnings = _fallback_warnings(monkeypatch, tmp_path, CXX=str(wrapper), TUNEBOOK_CSRC=str(csrc))
    assert len(warnings) == 1, warnings
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"apt-get install python{version}-dev" in warnings[0], warnings[0]
    assert "Python.h" in warnings[0]


def test_subpackages_are_lazy_attributes(tmp_path, monkeypatch):
    import tunebook

    # Until something imports a subpackage, the package has no such attribute: PEP 562's
    # __getattr__ imports it on first access.
    for name in tunebook.SUBPACKAGES:
        monkeypatch.delattr(tunebook, name, raising=False)
        module = getattr(tunebook, name)
        assert module.__name__ == f"tunebook.{name}" and name in dir(tunebook)
    assert tunebook.optim.Adam is tunebook.Adam
    with pytest.raises(AttributeError, match="no_such_thing"):
        tunebook.no_such_thing
    # In a fresh process, `import tunebook` stays cheap and the first access works.
    script = textwrap.dedent(
        """
        import sys
        import tunebook
        assert "torch" not in sys.modules and "sqlalchemy" not in sys.modules, "import tunebook must stay cheap"
        assert tunebook.search.halton(2, 3).shape == (2, 3)
        assert tunebook.schedules.constant_schedule(0.5)(10) == 0.5
        print(tunebook.study.Study.__name__)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    assert _run([sys.executable, "-c", script], cwd=tmp_path, env=env).stdout.strip() == "Study"


def test_missing_optional_packages_name_their_extra(tmp_path, monkeypatch, capsys):
    """Each optional dependency, when missing, is named with the extra that installs it."""
    from tunebook.cli import main
    from tunebook.search import SearchSpace
    from tunebook.study import Study

    url = f"sqlite:///{tmp_path}/s.db"
    study = Study("s", SearchSpace.from_dict({"lr": {"low": 1e-3, "high": 1.0}}), storage=url)
    trial = study.ask()
    trial.report(step=1, valid_loss=1.0)
    trial.complete()
    for name in [m for m in list(sys.modules) if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["report", "s", "--storage", url, "--out", str(tmp_path / "r.html")]) == 1
    assert "tunebook[plots]" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()

    for name in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'pip install "tunebook\[postgres\]"'):
        Study("s", storage="postgresql://tuner@127.0.0.1:1/db-that-needs-a-driver")
    assert main(["studies", "--storage", "postgresql://tuner@127.0.0.1:1/another-db"]) == 1
    assert 'pip install "tunebook[postgres]"' in capsys.readouterr().err
