"""The kernel build's locking: a process killed mid-build (kill -9, OOM, a CI timeout)
leaves cpp_extension's lock file behind, and cpp_extension waits on it forever. tunebook
builds under an flock (released by the kernel when its holder dies), so such a file is
removed at once; a second process waits for a live builder instead of building alongside
it. cpp_extension.load is replaced by a stand-in that fails where the real one would
wait forever, and records the calls."""

from __future__ import annotations

import fcntl
import threading
import time

import pytest
from torch.utils import cpp_extension

from tunebook.optim import _build


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEBOOK_CACHE_DIR", str(tmp_path))
    calls = []

    def load(name, build_directory, **kwargs):
        lock = tmp_path / "ops" / name / "lock"
        if lock.exists():
            raise AssertionError("cpp_extension would wait forever on a dead process's lock")
        calls.append((name, time.monotonic()))
        time.sleep(0.3)
        (tmp_path / "ops" / name / f"{name}.so").write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(_build.torch.ops, "load_library", lambda path: None)
    return tmp_path, calls


def _build_dir(root):
    (directory,) = (root / "ops").iterdir()
    return directory


def test_a_lock_left_by_a_dead_builder_is_removed_at_once(fake_build):
    root, calls = fake_build
    _build.build_library(with_cuda=False)  # makes the build dir (and the library)
    directory = _build_dir(root)
    next(directory.glob("*.so")).unlink()
    (directory / "lock").touch()  # a fresh lock: the age rule alone would wait 30 minutes
    with pytest.warns(RuntimeWarning, match="left by a process that died"):
        _build.build_library(with_cuda=False)
    assert len(calls) == 2 and not (directory / "lock").exists()


def test_a_second_builder_waits_for_the_first_and_then_reuses_its_library(fake_build, capsys):
    root, calls = fake_build
    _build.build_library(with_cuda=False)
    directory = _build_dir(root)
    next(directory.glob("*.so")).unlink()
    held = open(directory / "build.flock", "a")  # another process building right now
    fcntl.flock(held, fcntl.LOCK_EX)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (_build.build_library(with_cuda=False), done.set()))
    thread.start()
    time.sleep(0.5)
    assert not done.is_set() and len(calls) == 1  # waiting, not building alongside
    (directory / f"{directory.name}.so").write_bytes(b"")  # the other process's result
    fcntl.flock(held, fcntl.LOCK_UN)
    held.close()
    thread.join(10)
    assert done.is_set() and len(calls) == 1  # loaded the finished library, no rebuild
    assert "waiting for another process building the kernels" in capsys.readouterr().err
