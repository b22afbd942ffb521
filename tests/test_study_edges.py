"""Studies and trials at their edges: steps and seeds of every size and integer type,
errors that leave nothing wedged, and storage errors that name the storage."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from study_helpers import StandInSpace

from tunebook.study import Study, StorageError, list_studies


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/edges.db"


@pytest.mark.parametrize("step", [2**63, -1, 1.5, True, "3", torch.tensor([1, 2])])
def test_bad_steps_are_refused_at_report_and_nothing_is_lost(url, step):
    study = Study("s", StandInSpace(), storage=url)
    trial = study.ask()
    trial.report(step=0, valid_loss=0.5)
    with pytest.raises(ValueError, match="step"):
        trial.report(step=step, valid_loss=0.1)
    trial.flush()
    trial.report(step=2**63 - 1, valid_loss=0.7)
    trial.complete()
    record = study.trial(trial.index)
    assert record.state == "complete" and record.best_value == 0.5 and record.best_step == 0
    steps, values = record.history("valid_loss")
    assert steps.tolist() == [0, 2**63 - 1] and values.tolist() == [0.5, 0.7]


@pytest.mark.parametrize("step", [np.int64(3), np.uint8(3), torch.tensor(3), torch.tensor([3])])
def test_numpy_and_torch_steps(url, step):
    study = Study("s", StandInSpace(), storage=url)
    with study.ask() as trial:
        trial.report(step=step, valid_loss=torch.tensor(0.25), train_loss=np.float32(0.5))
    assert study.trials()[0].best_step == 3


@pytest.mark.parametrize("metrics, message", [
    ({"valid_loss": torch.ones(2)}, "valid_loss"),
    ({"valid_loss": "low"}, "valid_loss"),
    ({"valid_loss": 10**400}, "valid_loss"),
    ({"x" * 300: 1.0}, "255 characters"),
    ({"a\x00b": 1.0}, "NUL"),
])
def test_bad_metrics_are_refused_whole(url, metrics, message):
    study = Study("s", StandInSpace(), storage=url)
    trial = study.ask()
    with pytest.raises(ValueError, match=message):
        trial.report(step=1, other=2.0, **metrics)
    trial.complete()
    assert study.trials()[0].metric_names == ()  # nothing of the refused call was kept


@pytest.mark.parametrize("seed", [2**63 - 1, np.uint64(2**63 - 1), np.int32(7), torch.tensor(7)])
def test_seeds_up_to_2_63(url, seed):
    study = Study("s", StandInSpace(), storage=url, seed=seed)
    assert study.seed == int(seed) and type(study.seed) is int
    reopened = Study.load("s", url)
    assert reopened.seed == int(seed)
    assert study.ask().params == StandInSpace().sample(1, seed=int(seed))[0]
    Study("s", storage=url, seed=seed)  # the same seed reopens


@pytest.mark.parametrize("seed, message", [(2**63, r"\[0, 2\*\*63\)"), (-1, r"\[0, 2\*\*63\)"),
                                           (1.0, "integer"), (True, "bool")])
def test_bad_seeds(url, seed, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        Study("s", StandInSpace(), storage=url, seed=seed)
    assert not (tmp_path / "edges.db").exists()


def test_with_trial_keeps_the_users_exception_when_recording_fails(url, monkeypatch):
    study = Study("s", StandInSpace(), storage=url)
    trial = study.ask()

    def broken(*args, **kwargs):
        raise sa.exc.OperationalError("UPDATE", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(trial, "_write", broken)
    with pytest.raises(KeyError, match="the user's own") as error:
        with trial:
            raise KeyError("the user's own")
    assert any("could not be marked failed" in note for note in getattr(error.value, "__notes__", []))


def test_a_failure_reason_with_nul_is_stored(url):
    study = Study("s", StandInSpace(), storage=url)
    study.ask().fail("bad\x00byte")
    assert study.trials()[0].reason == "bad\\0byte"


# ------------------------------------------------------------------------ storage


def test_storage_errors_name_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "dir.db").mkdir()
    (tmp_path / "garbage.db").write_bytes(os.urandom(2048))
    for storage, text in [
        (f"sqlite:///{blocker}/x.db", f"{blocker}/x.db"),
        (f"sqlite:///{tmp_path}/dir.db", "is a directory"),
        (f"sqlite:///{tmp_path}/garbage.db", "garbage.db is not a tunebook study database"),
    ]:
        with pytest.raises(StorageError, match=text):
            Study("s", StandInSpace(), storage=storage)


def test_postgres_unreachable_names_host_and_port_not_password():
    pytest.importorskip("psycopg2")
    with pytest.raises(StorageError) as error:
        Study("s", StandInSpace(), storage="postgresql://tuner:hunter22@127.0.0.1:1/db")
    message = str(error.value)
    assert "127.0.0.1:1" in message and "hunter22" not in message


@pytest.mark.parametrize("storage, message", [
    ("sqlite://t.db", "three slashes"),
    ("postgresql://u:pw@host:port/db", "not a number"),
    ("tunebook.db", "sqlite:///tunebook.db"),
    ("oracle://u@h/db", "SQLite or PostgreSQL"),
])
def test_malformed_storage_urls_say_what_to_write(storage, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        Study("s", StandInSpace(), storage=storage)
    assert list(tmp_path.iterdir()) == []


def test_list_studies_reads_without_creating_anything(tmp_path):
    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE songs (title TEXT)")
    connection.commit()
    connection.close()
    before = other.read_bytes()
    assert list_studies(f"sqlite:///{other}") == []
    assert list_studies(f"sqlite:///{tmp_path}/missing/none.db") == []
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_reopening_by_name_takes_no_write_lock(url, tmp_path):
    Study("s", StandInSpace(), storage=url)
    lock = tmp_path / "edges.db-tunebook-lock"
    lock.unlink()
    # In a fresh process (this one keeps the lock file open once it has used it).
    script = f"from tunebook.study import Study; print(Study.load('s', {url!r}).name)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "python"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "s", result.stderr
    assert not lock.exists()


def test_a_relative_url_means_the_same_file_whatever_the_directory(tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        Study(f"study-{name}", StandInSpace(), storage="sqlite:///rel.db")
        assert [s["name"] for s in list_studies("sqlite:///rel.db")] == [f"study-{name}"]
