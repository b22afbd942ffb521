"""Analysis data functions on constructed studies whose answers are known, then a
smoke test of each drawing function."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tunebook.analysis import (
    AnalysisWarning,
    analyze_study,
    axis_plot_data,
    best_step_data,
    default_budgets,
    diagnose_curves,
    grad_norm_data,
    isolation_plot_data,
    sampled_enough_data,
    training_curves_data,
)


def trial(index, params, value, state="complete", step=10, history=None):
    return {"index": index, "params": params, "state": state, "best_value": value,
            "best_step": step, "history": history or {}}


def codes(warnings):
    return sorted(w.code for w in warnings)


# ------------------------------------------------------------------ axis plots


def lr_study(optimum_log10, n=40, seed=0, low=-5, high=-1):
    """Loss = (log10 lr - optimum)^2 over a log-uniform lr in [1e-5, 1e-1]."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        lr = 10 ** rng.uniform(low, high)
        trials.append(trial(i, {"lr": lr, "wd": rng.uniform(0, 1)}, (math.log10(lr) - optimum_log10) ** 2))
    return trials


def space_of(*parameters):
    return SimpleNamespace(parameters=[SimpleNamespace(**{"parent": None, "parent_values": (), "choices": None,
                                                          "low": None, "high": None, "scale": "linear", **p})
                                       for p in parameters])


LR_SPACE = space_of(dict(id="lr", name="lr", kind="float", low=1e-5, high=1e-1, scale="log"),
                    dict(id="wd", name="wd", kind="float", low=0.0, high=1.0))


def test_boundary_warning_when_the_optimum_is_outside_the_space():
    data = axis_plot_data(lr_study(optimum_log10=0.0), LR_SPACE)  # optimum at lr = 1 > 1e-1
    boundary = [w for w in data.warnings if w.code == "boundary"]
    assert [w.subject for w in boundary] == ["lr"]
    assert "upper bound 0.1" in boundary[0].message
    # The optimum inside the space: no warning at all.
    assert axis_plot_data(lr_study(optimum_log10=-3.0), LR_SPACE).warnings == ()
    # At the lower end.
    low = axis_plot_data(lr_study(optimum_log10=-6.0), LR_SPACE)
    assert [("lower bound" in w.message) for w in low.warnings] == [True]


def test_boundary_uses_the_log_scale():
    # Top trials at lr ~ 1e-2 sit at 75% of the log range, i.e. near the top of the
    # linear range (1e-2 / 1e-1 = 10% of it); only the log view is right.
    data = axis_plot_data(lr_study(optimum_log10=-2.0), LR_SPACE)
    assert data.warnings == ()
    linear = space_of(dict(id="lr", name="lr", kind="float", low=1e-5, high=1e-1, scale="linear"))
    assert codes(axis_plot_data(lr_study(optimum_log10=-2.0), linear).warnings) == ["boundary"]


def test_panels_values_and_infeasible_red_x():
    trials = lr_study(-3.0, n=10)
    trials.append(trial(10, {"lr": 0.09, "wd": 0.5}, None, state="infeasible", step=None))
    trials.append(trial(11, {"lr": 0.08, "wd": 0.4}, float("nan"), state="complete"))
    trials.append(trial(12, {"lr": 0.01, "wd": 0.4}, None, state="running"))
    trials.append(trial(13, {"lr": 0.01, "wd": 0.4}, None, state="failed"))
    data = axis_plot_data(trials, LR_SPACE, max_infeasible_fraction=0.5)
    lr = data.panels[0]
    assert lr.hyperparameter.name == "lr" and (lr.low, lr.high) == (1e-5, 1e-1)
    assert list(lr.trials) == list(range(10))
    np.testing.assert_array_equal(lr.y, [t["best_value"] for t in trials[:10]])
    assert lr.infeasible_x == (0.09, 0.08) and list(lr.infeasible_trials) == [10, 11]
    assert (data.n_feasible, data.n_infeasible) == (10, 2)
    best = min(trials[:10], key=lambda t: t["best_value"])
    assert lr.best_x == best["params"]["lr"]
    assert "infeasible_fraction" not in codes(data.warnings)
    many_bad = axis_plot_data(trials, LR_SPACE, max_infeasible_fraction=0.1)
    assert "infeasible_fraction" in codes(many_bad.warnings)
    assert "2 of 12 finished trials" in next(w.message for w in many_bad.warnings if w.code == "infeasible_fraction")


def test_conditional_children_are_separate_panels():
    space = space_of(
        dict(id="optimizer", name="optimizer", kind="categorical", choices=["sgd", "adam"]),
        dict(id="sgd/lr", name="lr", kind="float", low=1e-3, high=1.0, scale="log", parent="optimizer", parent_values=("sgd",)),
        dict(id="adam/lr", name="lr", kind="float", low=1e-5, high=1e-2, scale="log", parent="optimizer", parent_values=("adam",)),
        dict(id="batch", name="batch", kind="fixed", choices=[32]),
    )
    rng = np.random.default_rng(1)
    trials = []
    for i in range(24):
        opt = ("sgd", "adam")[i % 2]
        lr = 10 ** (rng.uniform(-3, 0) if opt == "sgd" else rng.uniform(-5, -2))
        trials.append(trial(i, {"optimizer": opt, "lr": lr, "batch": 32}, abs(math.log10(lr) + (1.5 if opt == "sgd" else 3.5))))
    data = axis_plot_data(trials, space)
    labels = [p.hyperparameter.label for p in data.panels]
    assert labels == ["optimizer", "lr | optimizer=sgd", "lr | optimizer=adam"]  # no panel for the fixed one
    sgd, adam = data.panels[1], data.panels[2]
    assert sorted(sgd.trials) == list(range(0, 24, 2)) and sorted(adam.trials) == list(range(1, 24, 2))
    assert (adam.low, adam.high) == (1e-5, 1e-2)
    assert data.warnings == ()


def test_axis_without_a_space_infers_scales_and_bounds():
    trials = lr_study(-3.0, n=20)
    data = axis_plot_data(trials)
    lr = data.panels[0].hyperparameter
    assert lr.scale == "log" and data.panels[1].hyperparameter.scale == "linear"
    xs = [t["params"]["lr"] for t in trials]
    assert (data.panels[0].low, data.panels[0].high) == (min(xs), max(xs))


# ------------------------------------------------------------------ isolation


def test_isolation_categorical_is_the_best_per_value():
    rng = np.random.default_rng(2)
    trials = [trial(i, {"opt": ["a", "b", "c"][i % 3], "lr": rng.uniform()}, rng.uniform()) for i in range(30)]
    trials.append(trial(30, {"opt": "d", "lr": 0.1}, None, state="infeasible"))
    data = isolation_plot_data(trials, "opt")
    assert data.categorical and data.labels == ("a", "b", "c", "d")
    for label, value, best, count in zip(data.labels[:3], data.best_values, data.best_trials, data.counts):
        mine = [t for t in trials[:30] if t["params"]["opt"] == label]
        winner = min(mine, key=lambda t: t["best_value"])
        assert (value, best, count) == (winner["best_value"], winner["index"], len(mine))
    assert math.isnan(data.best_values[3]) and data.best_trials[3] == -1 and list(data.infeasible_counts) == [0, 0, 0, 1]
    maxed = isolation_plot_data(trials, "opt", mode="max")
    assert maxed.best_values[0] == max(t["best_value"] for t in trials[:30] if t["params"]["opt"] == "a")


def test_isolation_continuous_buckets_in_log_space():
    trials = lr_study(-3.0, n=60, seed=3)
    data = isolation_plot_data(trials, "lr", LR_SPACE, bins=4)
    assert not data.categorical and data.log
    np.testing.assert_allclose(data.edges, [1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    for b in range(4):
        mine = [t for t in trials if data.edges[b] <= t["params"]["lr"] < data.edges[b + 1]]
        winner = min(mine, key=lambda t: t["best_value"])
        assert data.best_trials[b] == winner["index"] and data.counts[b] == len(mine)
        assert data.best_values[b] == winner["best_value"]
    with pytest.raises(ValueError, match="no trial has the hyperparameter 'momentum'"):
        isolation_plot_data(trials, "momentum")
    with pytest.raises(ValueError, match="bins=0 must be a positive integer"):
        isolation_plot_data(trials, "lr", bins=0)


# ------------------------------------------------------------------ curves


STEPS = np.arange(0, 1000, 10)


def healthy():
    valid = 0.2 + np.exp(-5 * STEPS / 1000)  # converged by the end, but not halfway
    return STEPS, valid - 0.05, STEPS, valid


def test_healthy_curves_have_no_diagnosis():
    assert diagnose_curves(*healthy()) == []


def test_overfitting():
    train = 1.0 - 0.8 * STEPS / 1000
    valid = 0.5 + ((STEPS - 300) / 700.0) ** 2  # best at step 300, then worse
    found = diagnose_curves(STEPS, train, STEPS, valid, subject="trial 3")
    assert codes(found) == ["overfitting"]
    assert found[0].subject == "trial 3" and "step 300" in found[0].message
    # Validation rising while training rises too is not overfitting (it is divergence).
    assert "overfitting" not in codes(diagnose_curves(STEPS, valid, STEPS, valid))


def test_still_improving_and_saturated_early():
    slow = 0.2 + np.exp(-1.5 * STEPS / 1000)
    assert codes(diagnose_curves(STEPS, slow, STEPS, slow)) == ["still_improving"]
    fast = 0.2 + np.exp(-40 * STEPS / 1000)
    found = diagnose_curves(STEPS, fast, STEPS, fast)
    assert codes(found) == ["saturated_early"]
    # Accuracy-like curves (mode="max") are the same checks upside down.
    assert codes(diagnose_curves(STEPS, -slow, STEPS, -slow, mode="max")) == ["still_improving"]


def test_high_variance():
    rng = np.random.default_rng(4)
    steps, train, _, valid = healthy()
    noisy = valid + rng.normal(0, 0.15, valid.size)
    assert "high_variance" in codes(diagnose_curves(steps, train, steps, noisy))
    quiet = valid + rng.normal(0, 0.01, valid.size)
    assert "high_variance" not in codes(diagnose_curves(steps, train, steps, quiet))


def test_training_curves_takes_the_best_trials():
    trials = []
    for i, level in enumerate([0.5, 0.1, 0.3, 0.2]):
        s, tr, vs, va = healthy()
        trials.append(trial(i, {"x": i}, level, history={"train_loss": (s, tr + level), "valid_loss": (vs, va + level)}))
    trials.append(trial(4, {"x": 4}, None, state="infeasible"))
    data = training_curves_data(trials, top=2)
    assert [c.trial for c in data.curves] == [1, 3]
    np.testing.assert_array_equal(data.curves[0].valid_values, healthy()[3] + 0.1)
    assert data.warnings == ()
    with pytest.raises(ValueError, match="top=0 must be a positive integer"):
        training_curves_data(trials, top=0)


# ------------------------------------------------------------------ best step


def test_best_step_fractions_and_warnings():
    history = {"valid_loss": (np.arange(0, 1001, 100), np.zeros(11))}
    early = [trial(i, {}, 1.0, step=s, history=history) for i, s in enumerate([0, 50, 100, 100, 80])]
    data = best_step_data(early)
    np.testing.assert_allclose(data.fractions, [0, 0.05, 0.1, 0.1, 0.08])
    assert codes(data.warnings) == ["best_step_early"]
    late = [trial(i, {}, 1.0, step=s, history=history) for i, s in enumerate([800, 900, 1000, 1000])]
    assert codes(best_step_data(late).warnings) == ["best_step_late"]
    mixed = early[:2] + late[:2]
    assert best_step_data(mixed).warnings == ()
    # max_train_steps overrides the histories.
    np.testing.assert_allclose(best_step_data(late, max_train_steps=2000).fractions, [0.4, 0.45, 0.5, 0.5])


# ------------------------------------------------------------------ grad norms


def test_grad_norm_threshold_is_the_90th_percentile():
    rng = np.random.default_rng(5)
    a, b = rng.lognormal(0, 1, 500), rng.lognormal(0.5, 1, 300)
    b[7] = np.inf
    data = grad_norm_data({"trial 0": a, "trial 1": b})
    finite = np.concatenate([a, np.delete(b, 7)])
    assert data.suggested_clip == pytest.approx(np.percentile(finite, 90))
    assert data.nonfinite == 1 and data.norms.size == 799
    assert data.hist_counts.sum() == 799 and data.max_grad_norm is None
    assert data.warnings == ()
    clipped = grad_norm_data([a, b], max_grad_norm=float(np.median(finite)) * 0.9)
    assert clipped.clipped_fraction == pytest.approx(np.mean(finite > clipped.max_grad_norm))
    assert codes(clipped.warnings) == ["clip_fraction"]
    assert grad_norm_data(a, max_grad_norm=1e9).warnings == ()


def test_grad_norm_accepts_the_optimizer_log():
    torch = pytest.importorskip("torch")
    log = SimpleNamespace(norms=torch.tensor([1.0, 2.0, 3.0, 4.0]), clipped=2, skipped=0, steps=4, max_grad_norm=2.5)
    data = grad_norm_data(log)
    assert data.max_grad_norm == 2.5 and data.clipped_fraction == 0.5
    np.testing.assert_array_equal(data.series[0].steps, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="percentile=0 must be in"):
        grad_norm_data(log, percentile=0)


# ------------------------------------------------------------------ sampled enough


def brute_force_median_best(values, k, n_boot=4000, seed=0):
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(n_boot, k))
    return np.median(np.nanmin(np.where(np.isfinite(values), values, np.inf)[draws], axis=1))


def test_sampled_enough_matches_a_brute_force_bootstrap():
    rng = np.random.default_rng(6)
    values = rng.uniform(size=24)
    trials = [trial(i, {"opt": "ab"[i % 2]}, v) for i, v in enumerate(values)]
    trials += [trial(24, {"opt": "a"}, None, state="infeasible")]
    data = sampled_enough_data(trials, n_boot=4000)
    (group,) = data.groups
    assert group.n_trials == 25 and group.n_feasible == 24
    np.testing.assert_array_equal(group.budgets, default_budgets(25))
    with_bad = np.append(values, np.nan)
    for k, row in zip(group.budgets, group.values):
        assert row[2] == pytest.approx(brute_force_median_best(with_bad, int(k)), abs=0.03)
    by_opt = sampled_enough_data(trials, group_by="opt", n_boot=500)
    assert [g.label for g in by_opt.groups] == ["opt=a", "opt=b"]
    assert [g.n_trials for g in by_opt.groups] == [13, 12]


def test_not_sampled_enough_warning():
    rng = np.random.default_rng(7)
    # A needle: only a few trials find the good region, so doubling the budget helps.
    few = [trial(i, {}, v) for i, v in enumerate(np.where(rng.uniform(size=8) < 0.15, 0.0, 1.0 + rng.uniform(size=8)))]
    assert "not_sampled_enough" in codes(sampled_enough_data(few).warnings)
    plenty = [trial(i, {}, v) for i, v in enumerate(rng.uniform(size=256))]
    assert sampled_enough_data(plenty).warnings == ()
    assert list(default_budgets(20)) == [1, 2, 4, 8, 16, 20] and list(default_budgets(16)) == [1, 2, 4, 8, 16]


# ------------------------------------------------------------------ everything at once


def test_analyze_study_collects_every_warning():
    trials = lr_study(0.0, n=20)  # optimum past the upper bound
    for t in trials:
        t["params"]["opt"] = "ab"[t["index"] % 2]
        s, tr, vs, va = healthy()
        t["history"] = {"train_loss": (s, tr), "valid_loss": (vs, va), "grad_norm": (s, np.full(s.size, 3.0))}
    result = analyze_study(trials, LR_SPACE, max_grad_norm=1.0)
    assert result.scientific == ("opt",)
    assert [iso.scientific for iso in result.isolation] == ["opt"]
    assert "boundary" in codes(result.warnings) and "clip_fraction" in codes(result.warnings)
    assert result.grad_norms.suggested_clip == 3.0
    assert [g.label for g in result.sampled_enough.groups] == ["opt=a", "opt=b"]
    assert all(isinstance(w, AnalysisWarning) and w.message for w in result.warnings)


def test_data_functions_do_not_import_matplotlib():
    code = ("import sys, tunebook.analysis as a; a.axis_plot_data([]); "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ drawing


def test_every_plot_draws():
    pytest.importorskip("matplotlib")
    import tunebook.analysis as analysis
    from tunebook.schedules import lr_range_test

    trials = lr_study(-2.0, n=16)
    for t in trials:
        t["params"]["opt"] = "ab"[t["index"] % 2]
        s, tr, vs, va = healthy()
        t["history"] = {"train_loss": (s, tr), "valid_loss": (vs, va), "grad_norm": (s, 1 + 0.1 * np.sin(s))}
    trials.append(trial(16, {"lr": 0.05, "wd": 0.3, "opt": "a"}, None, state="infeasible"))
    result = analyze_study(trials, LR_SPACE)
    x = iter(np.random.default_rng(0).normal(size=100))
    state = {"w": 1.0}

    def step(lr):
        state["w"] -= lr * 2 * state["w"] + 0.01 * next(x)
        return state["w"] ** 2

    figures = [
        analysis.axis_plot(result.axis),
        analysis.isolation_plot(result.isolation[0]),
        analysis.isolation_plot(isolation_plot_data(trials, "lr", LR_SPACE, bins=3)),
        analysis.training_curves_plot(result.curves),
        analysis.best_step_plot(result.best_step),
        analysis.grad_norm_plot(result.grad_norms),
        analysis.sampled_enough_plot(result.sampled_enough),
        analysis.lr_range_plot(lr_range_test(step, 1e-3, 10.0, 60)),
        analysis.axis_plot(axis_plot_data([])),
    ]
    for figure in figures:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=40)
        assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n" and len(buffer.getvalue()) > 1000
