"""tunebook.search.SearchSpace: formats, distributions, conditions, bad specs, round trips."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy import stats

from tunebook.search import Parameter, SearchSpace, halton

PLAYBOOK = {
    "lr": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "wd": {"min": 0.0, "max": 0.5, "scaling": "linear"},
    "opt": {"feasible_points": ["a", "b", "c"]},
}

OPTIMIZERS = {
    "optimizer": {"type": "categorical", "choices": ["adam", "nesterov", "sgd"]},
    "batch_size": {"type": "int", "low": 16, "high": 512, "scale": "log"},
    "warmup_steps": 1000,
    "adam_lr": {"name": "learning_rate", "low": 1e-4, "high": 1e-2, "scale": "log", "when": {"optimizer": ["adam"]}},
    "nesterov_lr": {
        "name": "learning_rate",
        "low": 1e-2,
        "high": 1.0,
        "scale": "log",
        "when": {"optimizer": ["nesterov", "sgd"]},
    },
    "momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer": "nesterov"}},
}


# ---------------------------------------------------------------- the playbook's format


def test_playbook_format_matches_the_reference_mapping():
    # The reference (algoperf halton.py) maps a point u to min * exp(u * log(max / min))
    # on a log scale, u * (max - min) + min on a linear one, and
    # feasible_points[floor(u * len)] for a discrete one. Same points, same mapping.
    space = SearchSpace.from_dict(PLAYBOOK)
    assert [p.kind for p in space.parameters] == ["float", "float", "categorical"]
    assert [p.scale for p in space.parameters] == ["log", "linear", None]
    assert space.dimension == 3
    trials = space.sample(50, seed=4)
    points = halton(50, 3, seed=4)
    for trial, (u_lr, u_wd, u_opt) in zip(trials, points):
        assert trial["lr"] == pytest.approx(1e-4 * math.exp(u_lr * math.log(1e-1 / 1e-4)), rel=1e-12)
        assert trial["wd"] == pytest.approx(u_wd * 0.5, rel=1e-12, abs=1e-15)
        assert trial["opt"] == ["a", "b", "c"][math.floor(u_opt * 3)]
        assert isinstance(trial["lr"], float)


def test_playbook_scaling_defaults_to_linear_and_single_points_are_constant():
    space = SearchSpace.from_dict({"x": {"min": 1, "max": 3}, "warmup": {"feasible_points": [0.05]}})
    x, warmup = space.parameters
    assert (x.kind, x.scale, x.low, x.high) == ("float", "linear", 1.0, 3.0)
    assert warmup.kind == "categorical" and warmup.dimension is None
    assert space.dimension == 1
    assert all(t["warmup"] == 0.05 and 1 <= t["x"] <= 3 for t in space.sample(20))


# ---------------------------------------------------------------- distributions


def test_log_uniform_passes_a_ks_test_on_the_logs():
    space = SearchSpace.from_dict({"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "scale": "log"}})
    logs = np.log([t["lr"] for t in space.sample(1000, seed=1)])
    result = stats.kstest(logs, stats.uniform(loc=math.log(1e-5), scale=math.log(1e-1 / 1e-5)).cdf)
    # Random sampling gives D ~ 0.87/sqrt(n) = 0.03 on average; quasi-random far less.
    assert result.statistic < 0.01 and result.pvalue > 0.5
    # Not uniform on the linear scale: half the mass lies below the geometric mean.
    lrs = np.exp(logs)
    assert abs(np.mean(lrs < math.sqrt(1e-5 * 1e-1)) - 0.5) < 0.01


def test_linear_ints_are_equally_likely_including_the_ends():
    space = SearchSpace.from_dict({"k": {"type": "int", "low": -3, "high": 6}})
    values = [t["k"] for t in space.sample(2000, seed=2)]
    assert all(isinstance(v, int) for v in values)
    counts = np.array([values.count(k) for k in range(-3, 7)])
    assert counts.sum() == 2000
    assert stats.chisquare(counts).pvalue > 0.5
    # No rounding bias at the ends: rounding a uniform float would give them half weight.
    assert min(counts[0], counts[-1]) >= 190


def test_log_ints_follow_the_log_uniform_mass_of_each_integer():
    low, high, n = 1, 20, 4000
    space = SearchSpace.from_dict({"k": {"type": "int", "low": low, "high": high, "scale": "log"}})
    values = [t["k"] for t in space.sample(n, seed=3)]
    ks = np.arange(low, high + 1)
    expected = np.log((ks + 0.5) / (ks - 0.5)) / math.log((high + 0.5) / (low - 0.5))
    counts = np.array([values.count(k) for k in ks])
    assert counts.sum() == n
    assert stats.chisquare(counts, expected * n).pvalue > 0.1


def test_categoricals_are_balanced():
    choices = ["x", 2, 3.5, None, [1, 2], {"a": 1}]
    space = SearchSpace.from_dict({"c": {"choices": choices}, "d": {"choices": [1, 2, 3]}})
    trials = space.sample(600, seed=5)
    counts = collections.Counter(json.dumps(t["c"]) for t in trials)
    assert sorted(counts) == sorted(json.dumps(c) for c in choices)
    # Random sampling: standard deviation ~9 per count.
    assert all(abs(c - 100) <= 3 for c in counts.values())
    assert all(abs(c - 200) <= 3 for c in collections.Counter(t["d"] for t in trials).values())
    # Mutable choices are copies: changing one trial does not change another.
    lists = [t["c"] for t in trials if isinstance(t["c"], list)]
    lists[0].append(99)
    assert lists[1] == [1, 2]


def test_fixed_values_appear_in_every_trial_and_use_no_dimension():
    space = SearchSpace.from_dict({"a": {"type": "fixed", "value": [1, 2]}, "b": 7, "c": {"low": 0, "high": 1}})
    assert space.dimension == 1 and space.parameters[0].kind == "fixed"
    assert all(t["a"] == [1, 2] and t["b"] == 7 for t in space.sample(10))
    assert SearchSpace.from_dict({"a": 1}).sample(3) == [{"a": 1}] * 3


# ---------------------------------------------------------------- conditions


def test_conditional_activation():
    space = SearchSpace.from_dict(OPTIMIZERS)
    ids = [p.id for p in space.parameters]
    assert ids == [
        "optimizer",
        "batch_size",
        "warmup_steps",
        "optimizer=adam/learning_rate",
        "optimizer=nesterov,sgd/learning_rate",
        "optimizer=nesterov/momentum",
    ]
    adam_lr, nesterov_lr = space.parameters[3], space.parameters[4]
    assert adam_lr.name == nesterov_lr.name == "learning_rate"
    assert adam_lr.dimension != nesterov_lr.dimension  # different hyperparameters
    assert nesterov_lr.parent == "optimizer" and nesterov_lr.parent_values == ["nesterov", "sgd"]
    trials = space.sample(300, seed=0)
    for trial in trials:
        space.check(trial)
        optimizer = trial["optimizer"]
        lr_range = (1e-4, 1e-2) if optimizer == "adam" else (1e-2, 1.0)
        assert lr_range[0] <= trial["learning_rate"] <= lr_range[1]
        assert ("momentum" in trial) == (optimizer == "nesterov")
        assert space.is_active("optimizer=nesterov/momentum", trial) == (optimizer == "nesterov")
        assert space.is_active(adam_lr, trial) == (optimizer == "adam")
    assert {t["optimizer"] for t in trials} == {"adam", "nesterov", "sgd"}


def test_nested_conditions_and_int_parents():
    space = SearchSpace.from_dict(
        {
            "layers": {"type": "int", "low": 1, "high": 3},
            "width2": {"type": "int", "low": 8, "high": 64, "when": {"layers": [2, 3]}},
            "act": {"choices": ["relu", "gelu"], "when": {"layers": [3]}},
            "slope": {"low": 0.01, "high": 0.3, "when": {"act": ["relu"]}},
        }
    )
    seen = collections.Counter()
    for trial in space.sample(240, seed=1):
        space.check(trial)
        assert ("width2" in trial) == (trial["layers"] >= 2)
        assert ("act" in trial) == (trial["layers"] == 3)
        assert ("slope" in trial) == (trial.get("act") == "relu")
        seen[tuple(sorted(trial))] += 1
    assert len(seen) == 4  # every combination of active hyperparameters occurs


def test_check_and_contains_reject_bad_trials():
    space = SearchSpace.from_dict(OPTIMIZERS)
    good = {"optimizer": "adam", "batch_size": 32, "warmup_steps": 1000, "learning_rate": 1e-3}
    assert space.contains(good)
    bad = [
        {**good, "momentum": 0.9},  # inactive under adam
        {k: v for k, v in good.items() if k != "learning_rate"},  # missing
        {**good, "learning_rate": 0.5},  # adam's range, not nesterov's
        {**good, "batch_size": 32.0},  # not an int
        {**good, "batch_size": 1024},
        {**good, "optimizer": "rmsprop"},
        {**good, "warmup_steps": 999},
        {**good, "unknown": 1},
    ]
    for trial in bad:
        assert not space.contains(trial), trial
        with pytest.raises(ValueError):
            space.check(trial)
    assert not space.contains("not a dict")  # type: ignore[arg-type]


def test_start_extends_the_trials():
    space = SearchSpace.from_dict(OPTIMIZERS)
    assert space.sample(10, seed=3, start=5) == space.sample(15, seed=3)[5:]
    assert space.sample(0) == []
    with pytest.raises(ValueError, match="n=-1"):
        space.sample(-1)


# ---------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"lr": {"min": 0.1, "max": 0.1}}, r"'lr': low=0.1 must be < high=0.1"),
        ({"lr": {"min": 0.2, "max": 0.1}}, r"'lr': low=0.2 must be < high=0.1"),
        ({"k": {"type": "int", "low": 3, "high": 3}}, r"'k': low=3 must be < high=3"),
        ({"lr": {"min": 0.0, "max": 1.0, "scaling": "log"}}, r"'lr': a log scale needs low > 0"),
        ({"lr": {"min": -1.0, "max": 1.0, "scaling": "log"}}, r"'lr': a log scale needs low > 0"),
        ({"k": {"type": "int", "low": 0, "high": 9, "scale": "log"}}, r"'k': a log scale needs low > 0"),
        ({"lr": {"min": 0.1, "max": 1.0, "scaling": "exp"}}, r"'lr': scale='exp' must be 'linear' or 'log'"),
        ({"lr": {"min": float("nan"), "max": 1.0}}, r"'lr': low=nan must be finite"),
        ({"lr": {"min": "0", "max": 1.0}}, r"'lr': low='0' must be a number"),
        ({"lr": {"min": 0.1}}, r"'lr': type 'float' needs 'high'"),
        ({"k": {"type": "int", "low": 0.5, "high": 3}}, r"'k': low=0.5 must be an integer"),
        ({"opt": {"feasible_points": []}}, r"'opt': choices=\[\] must be a non-empty list"),
        ({"opt": {"choices": "ab"}}, r"'opt': choices='ab' must be a non-empty list"),
        ({"opt": {"choices": ["a", "a"]}}, r"'opt': choice 'a' is repeated"),
        ({"opt": {"choices": [object()]}}, r"'opt': choice .* is not JSON-serialisable"),
        ({"opt": {"type": "gaussian", "low": 0, "high": 1}}, r"'opt': unknown type 'gaussian'"),
        ({"opt": {"choices": ["a"], "low": 1}}, r"'opt': \['low'\] do not apply to type 'categorical'"),
        ({"opt": {"choice": ["a"]}}, r"'opt': unknown key 'choice'"),
        ({"opt": {"scale": "log"}}, r"'opt': cannot tell its type"),
        ({"m": {"low": 0, "high": 1, "when": {"optimizer": ["sgd"]}}}, r"'m' has a condition on 'optimizer', which is not in the space"),
        ({"a": {"choices": [1, 2], "when": {"b": [1]}}, "b": {"choices": [1, 2], "when": {"a": [1]}}}, r"cycle: (a -> b -> a|b -> a -> b)"),
        ({"a": {"choices": [1, 2], "when": {"a": [1]}}}, r"cycle: a -> a"),
        ({"x": {"low": 0, "high": 1}, "y": {"choices": [1], "when": {"x": [0.5]}}}, r"'y' has a condition on the float 'x'"),
        ({"o": ["a", "b"], "y": {"low": 0, "high": 1, "when": {"o": ["c"]}}}, r"'y': its condition value 'c' is never taken by 'o'"),
        ({"o": ["a", "b"], "y": {"low": 0, "high": 1, "when": {"o": []}}}, r"'y': the condition on 'o' lists no values"),
        ({"o": ["a", "b"], "y": {"low": 0, "high": 1, "when": ["o", "a"]}}, r"'y': when=.* must be a dict with one entry"),
        ({"a": {"low": 0, "high": 1}, "b": {"name": "a", "low": 0, "high": 1}}, r"'a' and 'b' are both named 'a'"),
        (
            {"o": ["x", "y"], "a": {"low": 0, "high": 1, "when": {"o": ["x", "y"]}}, "b": {"name": "a", "low": 0, "high": 1, "when": {"o": ["y"]}}},
            r"both named 'a' and can be active in the same trial",
        ),
        ({"": {"low": 0, "high": 1}}, r"key '' must be a non-empty string"),
    ],
)
def test_bad_specs_name_the_hyperparameter_and_the_fix(spec, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace.from_dict(spec)


def test_a_space_must_be_a_dict():
    with pytest.raises(ValueError, match="must be a dict of hyperparameters"):
        SearchSpace.from_dict([("lr", {"min": 0, "max": 1})])  # type: ignore[arg-type]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("spec", [PLAYBOOK, OPTIMIZERS])
def test_round_trips_through_dict_json_and_yaml(spec):
    space = SearchSpace.from_dict(spec)
    for copy in (
        SearchSpace.from_dict(space.to_dict()),
        SearchSpace.from_json(space.to_json()),
        SearchSpace.from_yaml(space.to_yaml()),
    ):
        assert copy == space
        assert copy.parameters == space.parameters
        assert copy.sample(30, seed=7) == space.sample(30, seed=7)
    assert json.loads(space.to_json()) == space.to_dict()
    assert yaml.safe_load(space.to_yaml()) == space.to_dict()


def test_yaml_a_person_writes():
    text = """
    lr: {min: 1e-4, max: 1e-1, scaling: log}
    optimizer: [adam, nesterov]
    momentum: {low: 0.8, high: 0.99, when: {optimizer: nesterov}}
    steps: 1000
    """
    space = SearchSpace.from_yaml(text)
    lr = space.parameter("lr")
    assert (lr.low, lr.high, lr.scale) == (1e-4, 1e-1, "log")
    assert space.parameter("optimizer=nesterov/momentum").parent_values == ["nesterov"]
    assert space.parameter("steps").value == 1000


def test_parameter_attributes():
    p = SearchSpace.from_dict(OPTIMIZERS).parameter("optimizer=nesterov/momentum")
    assert isinstance(p, Parameter)
    assert (p.id, p.name, p.kind, p.low, p.high, p.scale) == ("optimizer=nesterov/momentum", "momentum", "float", 0.8, 0.99, "linear")
    assert (p.choices, p.value, p.parent, p.parent_values) == (None, None, "optimizer", ["nesterov"])
    parameters = SearchSpace.from_dict(OPTIMIZERS).parameters
    assert len(set(parameters)) == len(parameters)  # hashable, distinct
    with pytest.raises(ValueError, match="no hyperparameter has id 'momentum'"):
        SearchSpace.from_dict(OPTIMIZERS).parameter("momentum")


# ---------------------------------------------------------------- property-based

_json_scalars = st.one_of(
    st.text(max_size=5), st.integers(-1000, 1000), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)  # fmt: skip


@st.composite
def _leaf(draw):
    kind = draw(st.sampled_from(["float", "int", "categorical", "fixed", "playbook"]))
    if kind == "float":
        scale = draw(st.sampled_from(["linear", "log"]))
        low = draw(st.floats(1e-6 if scale == "log" else -1e6, 1e6))
        high = draw(st.floats(low, 1e7).filter(lambda h: h > low))
        return {"type": "float", "low": low, "high": high, "scale": scale}
    if kind == "int":
        scale = draw(st.sampled_from(["linear", "log"]))
        low = draw(st.integers(1 if scale == "log" else -1000, 1000))
        return {"type": "int", "low": low, "high": draw(st.integers(low + 1, 5000)), "scale": scale}
    if kind == "categorical":
        choices = draw(st.lists(_json_scalars, min_size=1, max_size=5, unique_by=lambda v: json.dumps(v)))
        return {"choices": choices}
    if kind == "fixed":
        return {"value": draw(_json_scalars)}
    return {"min": draw(st.floats(0.001, 1.0)), "max": draw(st.floats(1.5, 10.0)), "scaling": "log"}


@st.composite
def _spaces(draw):
    spec: dict = {}
    for i in range(draw(st.integers(1, 6))):
        entry = dict(draw(_leaf()))
        categorical_parents = [k for k, v in spec.items() if "choices" in v]
        if categorical_parents and draw(st.booleans()):
            parent = draw(st.sampled_from(categorical_parents))
            values = draw(st.lists(st.sampled_from(spec[parent]["choices"]), min_size=1, max_size=3, unique_by=json.dumps))
            entry["when"] = {parent: values}
            entry["name"] = draw(st.sampled_from([f"h{i}", "shared"])) if draw(st.booleans()) else f"h{i}"
        spec[f"h{i}"] = entry
    return spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_spaces(), seed=st.integers(0, 2**64 - 1), start=st.integers(0, 10**9))
@example(spec={"h0": {"choices": ["0E0", "1e5", 1e5, "yes", ".5"]}}, seed=0, start=0)  # YAML look-alikes
def test_random_valid_specs(spec, seed, start):
    try:
        space = SearchSpace.from_dict(spec)
    except ValueError as error:
        # The only invalid specs the strategy makes: a shared name active twice.
        assert "both named 'shared'" in str(error)
        return
    trials = space.sample(12, seed=seed, start=start)
    assert len(trials) == 12
    for trial in trials:
        space.check(trial)
        for p in space.parameters:
            assert (p.name in trial) >= space.is_active(p, trial)
    assert space.sample(4, seed=seed, start=start + 8) == trials[8:]
    for copy in (SearchSpace.from_json(space.to_json()), SearchSpace.from_yaml(space.to_yaml())):
        assert copy == space
        assert copy.sample(12, seed=seed, start=start) == trials


def test_float_range_whose_width_overflows_spans_the_range():
    for low, high in [(-1e308, 1e308), (-np.finfo(float).max, np.finfo(float).max), (-1.5e308, 1e308)]:
        space = SearchSpace.from_dict({"x": {"min": low, "max": high}})
        values = np.array([t["x"] for t in space.sample(256, seed=3)])
        assert np.isfinite(values).all() and (values >= low).all() and (values <= high).all()
        assert len(set(values.tolist())) == 256  # not all stuck at one end
        # Evenly spread: the Halton points mapped linearly (exact rational reference).
        from fractions import Fraction

        u = halton(256, 1, seed=3)[:, 0]
        exact = [float(Fraction(low) + Fraction(x) * (Fraction(high) - Fraction(low))) for x in u.tolist()]
        np.testing.assert_allclose(values, exact, rtol=1e-12, atol=1e294)
    # A range whose width fits keeps the exact formula (so existing studies are unchanged).
    space = SearchSpace.from_dict({"x": {"min": -1.0, "max": 3.0}})
    u = halton(8, 1, seed=0)[:, 0]
    assert [t["x"] for t in space.sample(8)] == (-1.0 + u * 4.0).tolist()
