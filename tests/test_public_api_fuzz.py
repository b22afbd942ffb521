"""Hypothesis drives the public API with arbitrary values: search spaces, halton,
Study/Trial report and complete, CheckpointKeeper save and load, and the schedules.

The only exceptions allowed are ValueError and TypeError whose message names the
argument; after a refused call nothing is wedged (the object keeps working) and nothing
is written half (what is stored is exactly what was accepted).
"""

from __future__ import annotations

import math
import os
import uuid

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tunebook.schedules as sch
from tunebook.checkpoints import CheckpointKeeper
from tunebook.search import SearchSpace, halton
from tunebook.study import Study

# TUNEBOOK_FUZZ_SCALE=10 runs ten times the examples (a longer hunt than make test's).
SCALE = int(os.environ.get("TUNEBOOK_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))

# Values a user might pass anywhere: numbers of every kind and size, and other things.
integers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**400]),
    st.integers(0, 2**63 - 1).map(np.int64),
    st.integers(0, 2**64 - 1).map(np.uint64),
    st.integers(-(2**31), 2**31 - 1).map(lambda i: torch.tensor(i)),
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e3, 1e3).map(np.float32))
others = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.just([1, 2]), st.just(torch.ones(2)),
                   st.just(np.bool_(True)), st.just(1j))
anything = st.one_of(integers, floats, others)


def allowed(error: BaseException, *names: str) -> None:
    """The error is a ValueError/TypeError naming one of ``names``."""
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    message = str(error)
    assert any(name in message for name in names), f"{message!r} names none of {names}"


# --------------------------------------------------------------------------- halton


@FUZZ
@given(n=st.one_of(st.integers(-3, 40), anything), d=st.one_of(st.integers(-2, 12), anything),
       seed=anything, start=anything)
def test_halton(n, d, seed, start):
    try:
        points = halton(n, d, seed, start)
    except Exception as error:  # noqa: BLE001 - checked
        allowed(error, "n=", "d=", "seed=", "start=")
        return
    assert points.shape == (int(n), int(d)) and points.dtype == np.float64
    assert ((points >= 0) & (points < 1)).all()


# ---------------------------------------------------------------------- search spaces

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**60), 2**60), st.floats(allow_nan=False), st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)
spec_entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["float", "int", "categorical", "fixed", "uniform", "bogus"])},
        optional={
            "low": st.one_of(floats, integers, others), "high": st.one_of(floats, integers, others),
            "min": floats, "max": floats, "scale": st.sampled_from(["linear", "log", "cubic"]),
            "choices": st.lists(json_values, max_size=4), "value": json_values,
            "when": st.dictionaries(st.sampled_from(["a", "b", "c"]), st.lists(json_values, max_size=2), max_size=2),
        },
    ),
)
specs = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), spec_entries, max_size=4)


@FUZZ
@given(spec=st.one_of(specs, anything), n=st.integers(0, 20), seed=st.one_of(st.integers(0, 2**64 - 1), anything),
       start=st.one_of(st.integers(0, 10**12), anything))
def test_search_space(spec, n, seed, start):
    try:
        space = SearchSpace.from_dict(spec)
    except Exception as error:  # noqa: BLE001 - checked
        keys = [repr(k) for k in spec] if isinstance(spec, dict) else []
        allowed(error, "search space", "hyperparameter", *keys)
        return
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert SearchSpace.from_json(space.to_json()) == space
    try:
        trials = space.sample(n, seed=seed, start=start)
    except Exception as error:  # noqa: BLE001 - checked
        allowed(error, "n=", "seed=", "start=")
        return
    assert len(trials) == n
    for trial in trials:
        space.check(trial)
        for p in space.parameters:
            if p.name in trial and p.kind in ("float", "int") and space.is_active(p, trial):
                assert p.low <= trial[p.name] <= p.high and math.isfinite(trial[p.name])


# ----------------------------------------------------------------------- schedules

SCHEDULES = {
    "constant_schedule": ("value",),
    "polynomial_schedule": ("init_value", "end_value", "power", "transition_steps", "transition_begin"),
    "linear_schedule": ("init_value", "end_value", "transition_steps", "transition_begin"),
    "cosine_decay_schedule": ("init_value", "decay_steps", "alpha", "exponent"),
    "rsqrt_schedule": ("init_value", "timescale"),
    "exponential_decay": ("init_value", "transition_steps", "decay_rate", "transition_begin"),
    "warmup_cosine_decay_schedule": ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value"),
    "cyclic_schedule": ("base_value", "max_value", "step_size_up", "step_size_down"),
    "one_cycle": ("total_steps", "max_value", "pct_start", "div_factor", "final_div_factor"),
    "lr_range_schedule": ("min_lr", "max_lr", "num_steps"),
}
EDGES = [0, 1, -1, 2, 3, 2**31, 2**63 - 1, 2**63, 10**400, 0.5, 1e-300, 5e-324, 1e308, -1e308, math.nan, math.inf,
         -math.inf, True, None, "1", np.float32(0.25), np.int64(4)]
schedule_arguments = st.one_of(st.sampled_from(EDGES), st.integers(-5, 300), st.floats(-2.0, 2.0), anything)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@settings(max_examples=25 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), steps=st.lists(st.one_of(st.sampled_from([0, 1, 2**63, 10**400, -(10**400)]),
                                                  st.integers(-(10**30), 10**30), st.integers(0, 500)),
                                        min_size=1, max_size=5))
def test_schedules(name, data, steps):
    arguments = SCHEDULES[name]
    values = [data.draw(schedule_arguments, label=argument) for argument in arguments]
    try:
        schedule = getattr(sch, name)(*values)
    except Exception as error:  # noqa: BLE001 - checked
        allowed(error, *arguments)
        return
    if name == "lr_range_schedule":
        assert np.all(np.isfinite(schedule))
        return
    if name == "one_cycle":
        schedule = schedule.learning_rate
    for step in steps:
        value = schedule(step)
        assert isinstance(value, float)
    array = schedule(np.array(steps, dtype=object))
    assert array.shape == (len(steps),)
    np.testing.assert_array_equal(array, [schedule(s) for s in steps])
    # A schedule goes wherever a learning rate goes; non-finite values are refused there.
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=torch.tensor(0.0, dtype=torch.float64))
    try:
        sch.DeviceSchedule(opt, schedule, total_steps=8)
    except ValueError as error:
        assert "must be finite" in str(error)


@FUZZ
@given(function=st.sampled_from([lambda s: 0.1 if s < 3 else 0.01, math.sqrt, lambda s: s, float, abs]),
       total=st.integers(1, 12))
def test_device_schedule_of_plain_functions_matches_the_function(function, total):
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=torch.tensor(0.0, dtype=torch.float64))
    driver = sch.DeviceSchedule(opt, function, total_steps=total)
    assert driver.tables[0].tolist() == [float(function(s)) for s in range(total)]


# ------------------------------------------------------------------- studies, trials


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path_factory):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/studies.db"
    from test_study import postgres_url  # skips when no server is reachable

    return postgres_url()


study_arguments = st.fixed_dictionaries({}, optional={
    "seed": st.one_of(integers, anything), "max_trials": st.one_of(st.integers(-2, 5), anything),
    "metric": st.one_of(st.text(max_size=300), anything), "mode": st.one_of(st.sampled_from(["min", "max"]), anything),
    "notes": st.one_of(st.text(max_size=20), anything), "command": st.one_of(st.text(max_size=20), anything),
})
reports = st.lists(
    st.tuples(st.one_of(st.integers(0, 1000), integers, anything),
              st.dictionaries(st.one_of(st.sampled_from(["loss", "acc"]), st.text(max_size=300)),
                              st.one_of(floats, integers, anything), max_size=3)),
    max_size=6,
)


SPACE = {"lr": {"low": 1e-4, "high": 1.0, "scale": "log"}, "opt": ["a", "b"]}


@FUZZ
@given(arguments=study_arguments, name=st.one_of(st.text(min_size=1, max_size=300), anything))
def test_study_arguments(storage, arguments, name):
    if isinstance(name, str):
        name = f"{uuid.uuid4().hex[:8]}-{name}"
    try:
        study = Study(name, SearchSpace.from_dict(SPACE), storage=storage, **arguments)
    except Exception as error:  # noqa: BLE001 - checked
        allowed(error, "name", *arguments)
        return
    reopened = Study.load(study.name, storage)
    assert (reopened.seed, reopened.metric, reopened.mode, reopened.max_trials) == (
        study.seed, study.metric, study.mode, study.max_trials)
    assert reopened.notes == (arguments.get("notes") or "") and reopened.command == arguments.get("command")


@settings(max_examples=50 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(reports=reports, finish=st.sampled_from(["complete", "infeasible", "fail"]),
       reason=st.one_of(st.text(max_size=30), anything))
def test_trial_reports(storage, reports, finish, reason):
    study = Study(uuid.uuid4().hex, SearchSpace.from_dict(SPACE), storage=storage, metric="loss")
    trial = study.ask()
    accepted: dict[tuple[str, int], float] = {}
    for step, metrics in reports:
        try:
            trial.report(step=step, **metrics)
        except Exception as error:  # noqa: BLE001 - checked
            allowed(error, "step", "metric", "report()")
            continue
        for metric, value in metrics.items():
            accepted[(metric, int(step))] = float(value.item() if hasattr(value, "item") else value)
    try:
        getattr(trial, finish)(*(() if finish == "complete" else (reason,)))
    except Exception as error:  # noqa: BLE001 - checked
        allowed(error, "reason")
        trial.complete()  # a refused finish leaves the trial open to finish properly
    record = Study.load(study.name, storage).trial(trial.index)
    assert record.finished
    for metric in {m for m, _ in accepted}:
        steps, values = record.history(metric)
        expected = sorted((s, v) for (m, s), v in accepted.items() if m == metric)
        assert steps.tolist() == [s for s, _ in expected]
        np.testing.assert_array_equal(values, [v for _, v in expected])
    assert set(record.metric_names) == {m for m, _ in accepted}
    finite = [(v, s) for (m, s), v in accepted.items() if m == "loss" and math.isfinite(v)]
    assert (record.best_value, record.best_step) == (min(finite) if finite else (None, None))


# --------------------------------------------------------------------- checkpoints

saves = st.lists(
    st.tuples(st.one_of(st.integers(0, 50), integers, anything),
              st.dictionaries(st.sampled_from(["valid_loss", "acc"]), st.one_of(floats, integers, anything),
                              max_size=2)),
    max_size=6,
)


@settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(keep=st.one_of(st.integers(1, 3), anything), mode=st.one_of(st.sampled_from(["min", "max"]), anything),
       tie=st.one_of(st.sampled_from(["earlier", "later"]), anything), saves=saves)
def test_checkpoint_keeper(tmp_path_factory, keep, mode, tie, saves):
    directory = tmp_path_factory.mktemp("keeper")
    try:
        keeper = CheckpointKeeper(directory, keep=keep, mode=mode, tie=tie, fsync=False)
    except Exception as error:  # noqa: BLE001 - checked
        allowed(error, "keep", "mode", "tie")
        return
    committed: dict[int, float] = {}
    with keeper:
        for step, metrics in saves:
            try:
                keeper.save(step, {"step": torch.tensor(float(len(committed)))}, metrics)
            except Exception as error:  # noqa: BLE001 - checked
                allowed(error, "step", "metric", "valid_loss")
                continue
            value = metrics["valid_loss"]
            committed[int(step)] = float(value.item() if hasattr(value, "item") else value)
        kept = keeper.steps()
    # Reopened, the directory holds exactly the committed record, and every file loads.
    with CheckpointKeeper(directory, keep=keep, mode=mode, tie=tie) as reopened:
        assert reopened.steps() == kept
        finite = [(v if mode == "min" else -v, s if tie == "earlier" else -s, s)
                  for s, v in committed.items() if math.isfinite(v)]
        ranked = [s for _, _, s in sorted(finite)][:keep]
        assert [c.step for c in reopened.checkpoints()] == ranked
        for step in kept:
            assert "step" in reopened.load(step)
    names = {p.name for p in directory.iterdir()}
    assert not any(n.startswith(".tunebook-tmp-") for n in names)
    assert names == {"index.json", ".lock"} | {f"ckpt-{s:012d}.pt" for s in kept}
