"""The storage contract (tunebook/study/_contract.py), checked on every implementation:
in memory, SQLite and PostgreSQL. Claims are exclusive between threads, writes check
the claim, the best value follows the reference rule, study attributes round-trip, and
a read-only open creates nothing and writes nothing."""

from __future__ import annotations

import math
import threading
import uuid
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from study_helpers import StandInSpace
from test_study import postgres_url

from tunebook.study import (
    InMemoryStorage,
    LeaseLostError,
    ReadOnlyStorageError,
    SchemaVersionError,
    Study,
    StudyExistsError,
    list_studies,
    open_storage,
)
from tunebook.study._contract import NewTrial, best_of


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return postgres_url()


def _fields(name: str, max_trials: int | None = None, mode: str = "min") -> dict:
    return {"name": name, "space_class": "x:Y", "space_json": "{}", "seed": 0, "max_trials": max_trials,
            "metric": "loss", "mode": mode, "config_path": None, "notes": "", "command": None}


def test_studies_create_once_and_update(url):
    store = open_storage(url)
    name = f"s-{uuid.uuid4().hex[:8]}"
    row = store.create_study(_fields(name, 3))
    with pytest.raises(StudyExistsError):
        store.create_study(_fields(name))
    assert store.get_study(name) == row
    assert store.get_study(name + "-nope") is None
    updated = store.update_study(row.id, {"max_trials": 5, "notes": "more"})
    assert (updated.max_trials, updated.notes, updated.seed) == (5, "more", 0)
    with pytest.raises(ValueError, match="cannot update"):
        store.update_study(row.id, {"seed": 3})
    assert name in [s.name for s in store.list_studies()]


def test_claims_are_exclusive_between_threads(url):
    store = open_storage(url)
    row = store.create_study(_fields(f"threads-{uuid.uuid4().hex[:8]}", max_trials=60))
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            while (claimed := store.claim(row.id, "w", 60.0, lambda i: NewTrial({"i": i}, seed=i))) is not None:
                assert claimed.params == {"i": claimed.index} and claimed.point == claimed.index
                store.finish(claimed.id, claimed.claim, "complete", None, [("loss", 0, 1.0)], "loss", "min")
                with lock:
                    got.append(claimed.index)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(got) == list(range(60)) and max(Counter(got).values()) == 1
    assert [t.state for t in store.get_trials(row.id)] == ["complete"] * 60


def test_writes_check_the_claim(url):
    store = open_storage(url)
    row = store.create_study(_fields(f"lease-{uuid.uuid4().hex[:8]}"))
    first = store.claim(row.id, "a", 0.01, lambda i: NewTrial({}, seed=0))
    import time

    time.sleep(0.05)
    second = store.claim(row.id, "b", 60.0, lambda i: NewTrial({}, seed=0))
    assert (second.index, second.claim) == (first.index, 2), "an expired lease is claimed again"
    for write in (lambda: store.renew(first.id, first.claim, 1.0),
                  lambda: store.report(first.id, first.claim, [("loss", 1, 0.5)], 1.0, "loss", "min"),
                  lambda: store.finish(first.id, first.claim, "complete", None, [], "loss", "min")):
        with pytest.raises(LeaseLostError):
            write()
    store.finish(second.id, second.claim, "failed", "boom", [("loss", 1, 2.0)], "loss", "min")
    with pytest.raises(LeaseLostError):
        store.finish(second.id, second.claim, "complete", None, [], "loss", "min")
    (trial,) = store.get_trials(row.id)
    assert (trial.state, trial.reason, trial.best_value, trial.worker) == ("failed", "boom", 2.0, "b")
    assert store.get_histories(row.id, "loss")[0][1].tolist() == [2.0], "the locked-out write left nothing"
    with pytest.raises(ValueError, match="state"):
        store.finish(second.id, second.claim, "done", None, [], "loss", "min")


_values = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reports=st.lists(st.lists(st.tuples(st.integers(0, 20), _values), max_size=6), min_size=1, max_size=4),
       mode=st.sampled_from(["min", "max"]))
def test_best_value_follows_the_reference_rule(url, reports, mode):
    store = open_storage(url)
    row = store.create_study(_fields(f"best-{uuid.uuid4().hex}", mode=mode))
    claimed = store.claim(row.id, "w", 60.0, lambda i: NewTrial({}, seed=0))
    expected: dict[int, float] = {}
    for batch in reports:
        store.report(claimed.id, claimed.claim, [("loss", s, v) for s, v in batch], 60.0, "loss", mode)
        expected.update(dict(batch))
        (trial,) = store.get_trials(row.id)
        assert (trial.best_step, trial.best_value) == best_of(expected, mode)
    if expected:
        steps, values = store.get_histories(row.id, "loss")[0]
        assert steps.tolist() == sorted(expected)
        np.testing.assert_array_equal(values, [expected[s] for s in sorted(expected)])


def test_study_attributes(url):
    study = Study(f"attrs-{uuid.uuid4().hex[:8]}", StandInSpace(), storage=url)
    assert study.attrs == {}
    study.set_attr("lr_range", {"low": 1e-4, "high": 0.3, "steps": [1, 2, np.int64(3)]})
    study.set_attr("note", "first")
    study.set_attr("note", "second")
    study.set_attr("count", np.float32(2.5))
    assert study.attrs == {"count": 2.5, "lr_range": {"high": 0.3, "low": 1e-4, "steps": [1, 2, 3]}, "note": "second"}
    assert Study.load(study.name, url).attrs["note"] == "second"
    study.set_attr("diverged", {"loss": math.nan, "peak": -math.inf})
    diverged = study.attrs["diverged"]
    assert math.isnan(diverged["loss"]) and diverged["peak"] == -math.inf
    for bad_key in ("", None, "k" * 256):
        with pytest.raises(ValueError, match="key"):
            study.set_attr(bad_key, 1)
    for bad in (object(), {"x": {1, 2}}):
        with pytest.raises(TypeError, match="JSON serialisable"):
            study.set_attr("bad", bad)
    assert "bad" not in study.attrs


def test_memory_urls_share_one_store_per_name():
    name = uuid.uuid4().hex
    Study("s", StandInSpace(), storage=f"memory://{name}", max_trials=2).ask().complete()
    assert len(Study.load("s", f"memory://{name}").trials()) == 1
    with pytest.raises(LookupError):
        Study.load("s", f"memory://{name}-other")
    private = InMemoryStorage()
    study = Study("s", StandInSpace(), storage=private)
    assert study.storage == "memory://" and Study.load("s", private).ask().index == 0


def test_read_only_creates_nothing(tmp_path):
    path = tmp_path / "sub" / "ro.db"
    url = f"sqlite:///{path}"
    with pytest.raises(LookupError, match="no study database"):
        Study.load("s", url, read_only=True)
    assert list_studies(url) == []
    assert not (tmp_path / "sub").exists(), "a read-only open created a directory or file"
    study = Study("s", StandInSpace(), storage=url, max_trials=3)
    trial = study.ask()
    trial.report(step=1, valid_loss=0.5)
    trial.complete()
    study.set_attr("k", 1)
    study.engine.dispose()
    before = sorted(p.name for p in path.parent.iterdir())
    lock = path.parent / "ro.db-tunebook-lock"
    lock.unlink()
    reader = Study.load("s", url, read_only=True)
    assert reader.read_only and reader.trials()[0].best_value == 0.5 and reader.attrs == {"k": 1}
    assert reader.summary()["best_value"] == 0.5
    for write in (reader.ask, lambda: reader.set_attr("k", 2)):
        with pytest.raises(ReadOnlyStorageError, match="read-only"):
            write()
    assert [s["name"] for s in list_studies(url)] == ["s"]
    assert not lock.exists(), "a read-only open created the writers' lock file"
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        n for n in before if not n.endswith(("-wal", "-shm", "-tunebook-lock"))]


def test_read_only_open_of_an_empty_or_foreign_database(tmp_path):
    import sqlalchemy as sa

    path = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(sa.text("create table something (x integer)"))
    engine.dispose()
    assert list_studies(f"sqlite:///{path}") == []
    with pytest.raises(LookupError, match="does not exist"):
        Study.load("s", f"sqlite:///{path}", read_only=True)
    with engine.connect() as connection:
        assert "tunebook_meta" not in sa.inspect(connection).get_table_names()
    # An older schema is not upgraded by a read-only open: the error says how.
    Study("s", StandInSpace(), storage=f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(sa.text("update tunebook_meta set value = '1'"))
    with pytest.raises(SchemaVersionError, match="open the study once for writing"):
        Study.load("s", f"sqlite:///{path}", read_only=True)
