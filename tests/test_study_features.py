"""The study's playbook features on every storage (memory, SQLite, PostgreSQL): trial
seeds, replicates (Study.rerun), declared roles, conclusions, and the upgrade of a
version-1 database."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import uuid

import pytest
from study_helpers import StandInSpace
from test_study import postgres_url

from tunebook.search import SearchSpace
from tunebook.study import SCHEMA_VERSION, Study, open_storage
from tunebook.study._seeds import trial_seed

SPACE = {
    "optimizer": {"type": "categorical", "choices": ["adam", "nesterov"]},
    "learning_rate": {"low": 1e-4, "high": 1.0, "scale": "log"},
    "warmup": {"low": 0.0, "high": 0.2},
    "batch_size": 128,
}


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path):
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/features.db"
    return postgres_url()


@pytest.fixture
def name(request):
    return f"{request.node.originalname}-{uuid.uuid4().hex[:8]}"


def _finish(trial, value: float) -> None:
    trial.report(step=1, valid_loss=value)
    trial.complete()


def test_seeds_are_pinned_forever():
    # Golden values: changing the derivation would change every user's trainings.
    assert trial_seed(0, "quasirandom", 0) == 906642607
    assert trial_seed(7, "quasirandom", 3) == 93121105
    assert trial_seed(7, "replicate", 3, 1) == 102013120
    assert trial_seed(2**63, "exploit", 12) == 803443313
    # The documented formula, computed independently.
    digest = hashlib.blake2b(b"tunebook-trial-seed:7:replicate:3:1", digest_size=8).digest()
    assert trial_seed(7, "replicate", 3, 1) == int.from_bytes(digest, "big") >> 33
    seeds = {trial_seed(0, "quasirandom", i) for i in range(10_000)}
    assert len(seeds) == 10_000 and all(0 <= s < 2**31 for s in seeds)


def test_plain_trials_carry_their_seed(storage, name):
    study = Study(name, StandInSpace(), storage=storage, seed=7, max_trials=4)
    trials = [study.ask() for _ in range(4)]
    assert [t.seed for t in trials] == [trial_seed(7, "quasirandom", i) for i in range(4)]
    assert [(t.kind, t.point, t.parent) for t in trials] == [("quasirandom", i, None) for i in range(4)]
    for t in trials:
        _finish(t, 1.0)
    assert [r.seed for r in Study.load(name, storage).trials()] == [t.seed for t in trials]


def test_rerun_replicates_a_trial_without_taking_halton_points(storage, name):
    space = StandInSpace()
    study = Study(name, space, storage=storage, seed=3, max_trials=3)
    first, second = study.ask(), study.ask()
    _finish(first, 0.5)
    with pytest.raises(ValueError, match="n must be"):
        study.rerun(first.index, n=1)
    with pytest.raises(ValueError, match="trial_index=9 is not a trial"):
        study.rerun(9)
    replicates = study.rerun(first.index, n=3)
    assert replicates == [2, 3, 4]
    assert study.rerun(first.index, n=3) == replicates, "idempotent: every worker may call it"
    assert study.rerun(replicates[0], n=3) == replicates, "a replicate's index means its parent"
    assert {r.index: r.state for r in study.trials()}[2] == "pending"
    claimed = [study.ask() for _ in range(3)]
    assert [t.index for t in claimed] == replicates, "waiting replicates come before new points"
    assert all((t.kind, t.parent, t.params, t.point) == ("replicate", 0, first.params, None) for t in claimed)
    assert [t.seed for t in claimed] == [trial_seed(3, "replicate", 0, r) for r in (1, 2, 3)]
    assert len({t.seed for t in claimed} | {first.seed}) == 4
    third = study.ask()
    assert (third.index, third.point, third.params) == (5, 2, space.sample(1, seed=3, start=2)[0])
    assert study.ask() is None, "replicates do not count in max_trials"
    for t, value in zip([*claimed, second, third], [0.6, 0.7, 0.8, 2.0, 3.0]):
        _finish(t, value)
    assert study.rerun(first.index, n=5) == [*replicates, 6, 7]
    assert [t.index for t in (study.ask(), study.ask())] == [6, 7]
    records = study.replicates(first.index)
    assert [r.index for r in records] == [2, 3, 4, 6, 7]
    summary = study.summary()
    assert (summary["trials"], summary["replicates"], summary["best_trial"]) == (3, 5, 0)
    assert study.best_trial().index == 0, "a replicate is never the best configuration"


def test_concurrent_reruns_make_n_replicates(storage, name):
    study = Study(name, StandInSpace(), storage=storage, max_trials=1)
    _finish(study.ask(), 1.0)
    results, errors = [], []

    def rerun() -> None:
        try:
            results.append(Study.load(name, storage).rerun(0, n=5))
        except BaseException as error:  # noqa: BLE001 - re-raised below
            errors.append(error)

    threads = [threading.Thread(target=rerun) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(r == results[0] for r in results) and len(results[0]) == 5
    assert sum(r.kind == "replicate" for r in study.trials()) == 5


def test_roles_are_checked_against_the_space(storage, name):
    space = SearchSpace.from_dict(SPACE)
    study = Study(name, space, storage=storage, goal="Is Adam better than Nesterov here?",
                  scientific="optimizer", fixed={"epochs": 10})
    assert study.roles.scientific == ("optimizer",)
    assert study.roles.nuisance == ("learning_rate", "warmup"), "the rest of the searched ones"
    assert study.goal == "Is Adam better than Nesterov here?" and study.roles.fixed == {"epochs": 10}
    summary = Study.load(name, storage).summary()
    assert (summary["scientific"], summary["nuisance"], summary["fixed"]) == (
        ["optimizer"], ["learning_rate", "warmup"], {"epochs": 10})
    bad = [
        ({"scientific": ["momentum"]}, "scientific hyperparameter 'momentum' is not searched"),
        ({"nuisance": ["optimizer", "dropout"]}, "nuisance hyperparameter 'dropout' is not searched"),
        ({"scientific": "optimizer", "nuisance": ["learning_rate"]}, r"searches \['warmup'\]"),
        ({"scientific": "optimizer", "nuisance": ["optimizer", "warmup", "learning_rate"]}, "both scientific"),
        ({"fixed": {"learning_rate": 0.1}}, "fixed hyperparameter 'learning_rate' is searched"),
        ({"fixed": {"epochs": None}}, "carries no value"),
        ({"fixed": ["epochs"]}, "fixed must map"),
        ({"fixed": {"batch_size": 256}}, "holds it at 128"),
        ({"scientific": "batch_size"}, "holds it fixed"),
        ({"scientific": [1]}, "scientific must be"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            Study(f"{name}-bad", space, storage=storage, **kwargs)
    Study(f"{name}-ok", space, storage=storage, fixed={"batch_size": 128})
    with pytest.raises(ValueError, match="different roles"):
        Study(name, storage=storage, scientific="learning_rate")
    Study(name, storage=storage)  # reopening without roles keeps them
    Study(name, space, storage=storage, goal="Is Adam better than Nesterov here?", scientific="optimizer",
          fixed={"epochs": 10})  # the same roles reopen
    older = Study(f"{name}-older", space, storage=storage)
    assert not older.roles.declared
    Study(f"{name}-older", storage=storage, scientific=["optimizer"])  # roles given later to a study without
    assert Study.load(f"{name}-older", storage).roles.scientific == ("optimizer",)


def test_conclude_records_the_decision(storage, name):
    study = Study(name, StandInSpace(), storage=storage, max_trials=3)
    good, bad, running = study.ask(), study.ask(), study.ask()
    _finish(good, 0.5)
    bad.report(step=1, valid_loss=float("nan"))
    bad.infeasible("diverged")
    assert study.conclusion is None
    for kwargs, message in [({"text": " "}, "text must be"), ({"text": "x", "adopt": 7}, "adopt=7 is not a trial"),
                            ({"text": "x", "adopt": 1}, "adopt=1 is infeasible"),
                            ({"text": "x", "adopt": "0"}, "adopt must be a trial index")]:
        with pytest.raises(ValueError, match=message):
            study.conclude(**kwargs)
    replicate = study.rerun(0, n=2)[0]
    with pytest.raises(ValueError, match="is a replicate of trial 0"):
        study.conclude("x", adopt=replicate)
    conclusion = study.conclude("lr 1e-3 is the new baseline", adopt=0)
    assert (conclusion.text, conclusion.adopted) == ("lr 1e-3 is the new baseline", 0)
    reopened = Study.load(name, storage)
    assert reopened.conclusion.text == "lr 1e-3 is the new baseline" and reopened.summary()["adopted"] == 0
    study.conclude("on reflection: no change")
    assert Study.load(name, storage).conclusion == (study.conclusion.text, None, study.conclusion.at)
    running.complete()


V1_SCHEMA = """
CREATE TABLE tunebook_meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE tunebook_studies (id INTEGER NOT NULL, name VARCHAR(255) NOT NULL, space_class VARCHAR(255) NOT NULL,
    space_json TEXT NOT NULL, seed BIGINT NOT NULL, max_trials INTEGER, metric VARCHAR(255) NOT NULL,
    mode VARCHAR(8) NOT NULL, config_path TEXT, notes TEXT NOT NULL, command TEXT, created_at FLOAT NOT NULL,
    PRIMARY KEY (id), UNIQUE (name));
CREATE TABLE tunebook_trials (id INTEGER NOT NULL, study_id INTEGER NOT NULL, trial_index INTEGER NOT NULL,
    params_json TEXT NOT NULL, state VARCHAR(16) NOT NULL, worker VARCHAR(255), claim INTEGER NOT NULL,
    lease_expires FLOAT, started_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, finished_at FLOAT, reason TEXT,
    best_step BIGINT, best_value FLOAT, PRIMARY KEY (id),
    CONSTRAINT tunebook_trials_study_index UNIQUE (study_id, trial_index),
    FOREIGN KEY(study_id) REFERENCES tunebook_studies (id) ON DELETE CASCADE);
CREATE INDEX tunebook_trials_study_state ON tunebook_trials (study_id, state);
CREATE TABLE tunebook_metrics (trial_id INTEGER NOT NULL, name VARCHAR(255) NOT NULL, step BIGINT NOT NULL,
    value FLOAT, PRIMARY KEY (trial_id, name, step),
    FOREIGN KEY(trial_id) REFERENCES tunebook_trials (id) ON DELETE CASCADE);
"""


def test_a_version_1_database_is_upgraded(tmp_path):
    """A database written by tunebook 0.1 (schema version 1) opens, keeps its trials
    as quasi-random ones with their points and seeds, and takes the new features."""
    path = tmp_path / "v1.db"
    space = StandInSpace()
    with sqlite3.connect(path) as connection:
        connection.executescript(V1_SCHEMA)
        connection.execute("insert into tunebook_meta values ('schema_version', '1')")
        connection.execute(
            "insert into tunebook_studies values (1, 'old', 'study_helpers:StandInSpace', ?, 3, 3, 'valid_loss',"
            " 'min', NULL, '', NULL, 0.0)", (json.dumps(space.to_dict(), sort_keys=True),))
        for index, (state, value) in enumerate([("complete", 0.5), ("infeasible", 0.25)]):
            params = json.dumps(space.sample(1, seed=3, start=index)[0], sort_keys=True)
            connection.execute("insert into tunebook_trials values (?, 1, ?, ?, ?, 'w', 1, NULL, 0, 0, 1, NULL, 1, ?)",
                               (index + 1, index, params, state, value))
            connection.execute("insert into tunebook_metrics values (?, 'valid_loss', 1, ?)", (index + 1, value))
    storage = f"sqlite:///{path}"
    study = Study.load("old", storage)
    records = study.trials()
    assert [(r.index, r.kind, r.point, r.seed, r.best_value) for r in records] == [
        (0, "quasirandom", 0, trial_seed(3, "quasirandom", 0), 0.5),
        (1, "quasirandom", 1, trial_seed(3, "quasirandom", 1), 0.25)]
    assert study.ask().point == 2
    assert study.rerun(0, n=2) == [3, 4]
    study.set_attr("upgraded", True)
    with sqlite3.connect(path) as connection:
        assert connection.execute("select value from tunebook_meta").fetchone() == (str(SCHEMA_VERSION),)


def test_memory_storage_describes_itself():
    assert repr(open_storage("memory://x")) == "InMemoryStorage('memory://x')"
