"""Studies and trials on SQLite and PostgreSQL: ask/tell, best-step rules, reopening,
leases, heartbeats, schema versions, and 8 concurrent worker processes."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from study_helpers import StandInSpace

from tunebook.study import LeaseLostError, SchemaVersionError, Study, list_studies
from tunebook.study import _schema

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("study_worker.py")


def postgres_url() -> str:
    url = os.environ.get("TUNEBOOK_TEST_POSTGRES_URL")
    path = ROOT / ".tunebook" / "postgres_url"
    if not url and path.exists():
        url = path.read_text().strip()
    if not url:
        pytest.skip("PostgreSQL not available: set TUNEBOOK_TEST_POSTGRES_URL or run scripts/postgres.sh start")
    try:
        from tunebook.study._storage import get_engine

        with get_engine(url).connect() as connection:
            connection.execute(sa.text("select 1"))
    except Exception as error:  # noqa: BLE001 - any failure means "no server here"
        pytest.skip(f"PostgreSQL at {sa.make_url(url).render_as_string(hide_password=True)} is not reachable: {error}")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/studies.db"
    return postgres_url()


@pytest.fixture
def name(request):
    return f"{request.node.originalname}-{uuid.uuid4().hex[:8]}"


def test_ask_tell_and_records(storage, name):
    space = StandInSpace()
    study = Study(name, space, storage=storage, seed=7, max_trials=4, notes="lr sweep",
                  config_path="configs/lr.yaml", command="python train.py")
    trials = [study.ask(worker="w1") for _ in range(4)]
    assert study.ask() is None, "the study is full"
    assert [t.index for t in trials] == [0, 1, 2, 3]
    for t in trials:
        assert t.params == space.sample(1, seed=7, start=t.index)[0]
    a, b, c, d = trials
    for step, value in enumerate([3.0, math.nan, 1.0, 1.0, math.inf, 2.0]):
        a.report(step=step * 10, valid_loss=value, train_loss=float(step))
    a.report(step=0, valid_loss=4.0)  # a re-report replaces the value
    a.complete()
    b.report(step=0, valid_loss=0.5)
    b.report(step=5, valid_loss=math.nan)
    b.infeasible(reason="loss is NaN")
    c.report(step=1, valid_loss=-math.inf)
    c.fail(reason="node lost")
    records = {r.index: r for r in study.trials()}
    assert [records[i].state for i in range(4)] == ["complete", "infeasible", "failed", "running"]
    assert (records[0].best_step, records[0].best_value) == (20, 1.0)  # tie: the earlier step
    assert records[0].metric_names == ("train_loss", "valid_loss")
    steps, values = records[0].history("valid_loss")
    assert steps.dtype == np.int64 and values.dtype == np.float64
    np.testing.assert_array_equal(steps, [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(values, [4.0, np.nan, 1.0, 1.0, np.inf, 2.0])
    assert records[0].history("nope")[0].size == 0
    assert (records[2].best_step, records[2].best_value) == (None, None), "-inf is never best"
    assert records[1].reason == "loss is NaN" and records[1].best_value == 0.5
    assert records[0].params == trials[0].params
    # The infeasible trial's 0.5 is not the study's best.
    assert study.best_trial().index == 0
    summary = study.summary()
    assert {k: summary[k] for k in ("trials", "trials_run", "infeasible", "failed", "running")} == {
        "trials": 4, "trials_run": 3, "infeasible": 1, "failed": 1, "running": 1}
    assert (summary["best_value"], summary["best_trial"], summary["best_step"]) == (1.0, 0, 20)
    assert (summary["notes"], summary["config"], summary["command"]) == ("lr sweep", "configs/lr.yaml",
                                                                           "python train.py")
    d.complete()
    with pytest.raises(RuntimeError, match="already complete"):
        d.report(step=1, valid_loss=1.0)


def test_max_mode_and_reopen_by_name(storage, name):
    study = Study(name, StandInSpace(), storage=storage, metric="accuracy", mode="max", max_trials=1)
    trial = study.ask()
    for step, value in [(5, 0.7), (1, 0.9), (3, 0.9), (2, math.inf)]:
        trial.report(step=step, accuracy=value)
    trial.complete()
    reopened = Study.load(name, storage)
    assert (reopened.metric, reopened.mode, reopened.max_trials, reopened.seed) == ("accuracy", "max", 1, 0)
    assert reopened.space.to_dict() == StandInSpace().to_dict()
    assert reopened.params(5) == study.params(5)
    record = reopened.trials()[0]
    assert (record.best_step, record.best_value) == (1, 0.9)
    assert reopened.ask() is None
    Study(name, storage=storage, max_trials=2)  # extending a study is allowed
    assert reopened.ask().index == 1


def test_reopen_with_a_different_definition_is_refused(storage, name):
    Study(name, StandInSpace(), storage=storage, seed=3)
    for kwargs, what in [({"space": StandInSpace(1e-5)}, "search space"), ({"seed": 4}, "seed"),
                         ({"metric": "loss"}, "metric"), ({"mode": "max"}, "mode")]:
        with pytest.raises(ValueError, match=f"different {what}"):
            Study(name, storage=storage, **kwargs)
    Study(name, StandInSpace(), storage=storage, seed=3)  # the same definition reopens
    with pytest.raises(LookupError, match="does not exist"):
        Study.load(name + "-missing", storage)


def test_argument_errors(storage, name):
    with pytest.raises(ValueError, match="name"):
        Study("", StandInSpace(), storage=storage)
    with pytest.raises(ValueError, match="mode"):
        Study(name, StandInSpace(), storage=storage, mode="best")
    with pytest.raises(ValueError, match="max_trials"):
        Study(name, StandInSpace(), storage=storage, max_trials=-1)
    with pytest.raises(ValueError, match="storage must be"):
        Study(name, StandInSpace(), storage="not a url")
    study = Study(name, StandInSpace(), storage=storage)
    with pytest.raises(ValueError, match="lease_seconds"):
        study.ask(lease_seconds=0)
    trial = study.ask()
    with pytest.raises(ValueError, match="step"):
        trial.report(step=-1, valid_loss=1.0)
    with pytest.raises(ValueError, match="at least one metric"):
        trial.report(step=1)
    with pytest.raises(ValueError, match="must be a number"):
        trial.report(step=1, valid_loss="low")


def test_expired_lease_is_reclaimed_and_the_old_worker_locked_out(storage, name):
    study = Study(name, StandInSpace(), storage=storage, max_trials=2)
    first = study.ask(lease_seconds=0.3, worker="slow")
    first.report(step=0, valid_loss=2.0)
    first.flush()
    time.sleep(0.5)
    assert {r.index: r.state for r in study.trials()} == {0: "pending"}
    again = study.ask(worker="fast")
    assert (again.index, again.attempt, again.params) == (0, 2, first.params)
    with pytest.raises(LeaseLostError):
        first.flush()
    with pytest.raises(LeaseLostError):
        first.complete()
    again.report(step=1, valid_loss=1.0)
    again.complete()
    record = study.trials()[0]
    assert (record.state, record.attempts, record.worker, record.best_value) == ("complete", 2, "fast", 1.0)


def test_heartbeat_keeps_the_claim(storage, name):
    study = Study(name, StandInSpace(), storage=storage)
    kept = study.ask(lease_seconds=0.4, heartbeat=True)
    manual = study.ask(lease_seconds=0.4)
    for _ in range(4):
        time.sleep(0.2)
        manual.heartbeat()
    assert study.ask().index == 2, "neither lease expired"
    kept.report(step=1, valid_loss=1.0)
    kept.complete()
    manual.complete()


def test_context_manager(storage, name):
    study = Study(name, StandInSpace(), storage=storage)
    with pytest.raises(ZeroDivisionError), study.ask() as trial:
        trial.report(step=0, valid_loss=1.0)
        1 / 0  # noqa: B018
    with study.ask() as trial:
        trial.report(step=0, valid_loss=1.0)
    records = study.trials()
    assert [r.state for r in records] == ["failed", "complete"]
    assert "ZeroDivisionError" in records[0].reason


def _spawn(storage: str, name: str, mode: str, start_at: float, lease: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), storage, name, mode, repr(start_at), repr(lease)],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_eight_workers_claim_each_trial_once_and_reclaim_a_killed_ones(storage, name):
    n = 48
    study = Study(name, StandInSpace(), storage=storage, max_trials=n)
    victim = _spawn(storage, name, "hang", time.time(), 1.0)
    victim_line = victim.stdout.readline().split()
    assert victim_line[0] == "claimed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    start_at = time.time() + 2.0
    workers = [_spawn(storage, name, "drain", start_at, 30.0) for _ in range(8)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers)
    claims = [tuple(map(int, line.split()[1:])) for out in outputs for line in out.splitlines()]
    victim_index = int(victim_line[1])
    counts = Counter(index for index, _ in claims)
    assert sorted(counts) == list(range(n)), "no trial is lost"
    assert all(c == 1 for c in counts.values()), "each trial is given to one live worker"
    assert dict(claims)[victim_index] == 2, "the killed worker's trial was reclaimed as attempt 2"
    records = study.trials()
    assert [r.index for r in records] == list(range(n))
    assert all(r.state == "complete" for r in records)
    for r in records:
        assert r.best_step == 2 and r.best_value == pytest.approx(r.params["lr"])
    assert records[victim_index].attempts == 2
    assert sum(len(out.splitlines()) for out in outputs) == n


def test_schema_version_is_checked_and_migrated(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path}/v.db"
    Study("s", StandInSpace(), storage=storage)
    engine = sa.create_engine(storage)
    with engine.begin() as connection:
        assert connection.execute(sa.text("select value from tunebook_meta")).scalar() == str(_schema.SCHEMA_VERSION)
        connection.execute(sa.text("update tunebook_meta set value = '99'"))
    from tunebook.study import _storage

    monkeypatch.setattr(_storage, "_engines", {})
    monkeypatch.setattr(_schema, "_ready", set())
    with pytest.raises(SchemaVersionError, match="newer than this tunebook"):
        Study("s", storage=storage)
    with engine.begin() as connection:
        connection.execute(sa.text(f"update tunebook_meta set value = '{_schema.SCHEMA_VERSION - 1}'"))
    ran = []
    monkeypatch.setitem(_schema.MIGRATIONS, _schema.SCHEMA_VERSION - 1, lambda connection: ran.append(connection))
    monkeypatch.setattr(_schema, "_ready", set())
    Study("s", storage=storage)
    assert len(ran) == 1
    with engine.begin() as connection:
        assert connection.execute(sa.text("select value from tunebook_meta")).scalar() == str(_schema.SCHEMA_VERSION)


def test_sqlite_runs_in_wal_mode(tmp_path):
    storage = f"sqlite:///{tmp_path}/wal.db"
    study = Study("s", StandInSpace(), storage=storage)
    with study.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_list_studies_and_default_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNEBOOK_STORAGE", raising=False)
    Study("first", StandInSpace(), notes="a")
    assert (tmp_path / "tunebook.db").exists()
    other = f"sqlite:///{tmp_path}/other.db"
    monkeypatch.setenv("TUNEBOOK_STORAGE", other)
    Study("second", StandInSpace(), max_trials=3)
    Study("third", StandInSpace())
    assert [s["name"] for s in list_studies()] == ["second", "third"]
    assert [s["name"] for s in list_studies(f"sqlite:///{tmp_path}/tunebook.db")] == ["first"]
    assert list_studies()[0]["max_trials"] == 3


def test_with_the_real_search_space(tmp_path):
    from tunebook.search import SearchSpace

    storage = f"sqlite:///{tmp_path}/real.db"
    space = SearchSpace.from_dict({
        "lr": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
        "optimizer": {"feasible_points": ["adam", "nesterov"]},
    })
    study = Study("real", space, storage=storage, seed=5, max_trials=3)
    claimed = [study.ask().params for _ in range(3)]
    assert claimed == space.sample(3, seed=5)
    engine = sa.create_engine(storage)
    with engine.connect() as connection:
        assert connection.execute(sa.text("select space_class from tunebook_studies")).scalar() == (
            "tunebook.search:SearchSpace"
        )
    # A fresh process would rebuild the space from storage alone.
    code = (
        "from tunebook.study import Study; s = Study.load('real', %r); "
        "print(s.space.to_dict() == %r, s.params(2) == %r)" % (storage, space.to_dict(), claimed[2])
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_study_attributes_round_trip(storage, name):
    study = Study(name, StandInSpace(), storage=storage, max_trials=2)
    assert study.attrs == {}
    study.set_attr("playbook.sweep", {"sizes": np.arange(3), "nan": math.nan, "inf": -math.inf, "x": np.float32(2)})
    study.set_attr("note", "first")
    study.set_attr("note", "second")  # replaced, not duplicated
    other = Study(f"{name}-other", StandInSpace(), storage=storage)
    other.set_attr("note", "elsewhere")
    attrs = Study(name, storage=storage).attrs  # read back by a fresh handle
    assert attrs["note"] == "second" and attrs["playbook.sweep"]["sizes"] == [0, 1, 2]
    assert math.isnan(attrs["playbook.sweep"]["nan"]) and attrs["playbook.sweep"]["inf"] == -math.inf
    assert attrs["playbook.sweep"]["x"] == 2.0 and sorted(attrs) == ["note", "playbook.sweep"]
    assert other.attrs == {"note": "elsewhere"}
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        study.set_attr("", 1)
    with pytest.raises(TypeError, match="must be JSON serialisable"):
        study.set_attr("bad", object())


def test_a_version_1_database_gains_the_attribute_table(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path}/v1.db"
    Study("s", StandInSpace(), storage=storage).set_attr("k", 1)
    engine = sa.create_engine(storage)
    with engine.begin() as connection:  # back to what tunebook 0.1 wrote
        connection.execute(sa.text("drop table tunebook_study_attrs"))
        connection.execute(sa.text("update tunebook_meta set value = '1'"))
    from tunebook.study import _storage

    monkeypatch.setattr(_storage, "_engines", {})
    monkeypatch.setattr(_schema, "_ready", set())
    study = Study("s", storage=storage)
    assert study.attrs == {}
    study.set_attr("k", [1, 2])
    assert Study("s", storage=storage).attrs == {"k": [1, 2]}
    with engine.begin() as connection:
        assert connection.execute(sa.text("select value from tunebook_meta")).scalar() == "2"
