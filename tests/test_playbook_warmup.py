"""Warmup (the sweep, the shortest stable warmup, prepending it) and Round 2's
schedule: known answers, the playbook's limits as errors and warnings, and a real
warmup sweep on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunebook.playbook import (
    round_two,
    shortest_stable_warmup,
    warmup_sweep,
    with_warmup,
)
from tunebook.playbook._round_two import _round_two_plot_data
from tunebook.playbook._warmup import _warmup_plot_data
from tunebook.schedules import cosine_decay_schedule, extend_constant_phase, linear_schedule, linear_warmup
from tunebook.study import Study

# ------------------------------------------------------------------ warmup_sweep


def test_warmup_sweep_follows_the_playbook():
    sweep = warmup_sweep(0.5, 100_000)
    assert sweep.base_learning_rate == 5.0 and sweep.factor == 10.0
    assert sweep.warmup_steps == (10, 100, 1000, 10_000)  # orders of magnitude, <= 10% of max_train_steps
    assert sweep.space.size == 4 and sweep.space.procedure == "warmup_sweep"
    assert sweep.space.points[2] == {"warmup_steps": 1000, "post_warmup_steps": 2000, "train_steps": 3000,
                                     "learning_rate": 5.0}
    assert sweep.space.info["max_train_steps"] == 100_000
    schedule = sweep.schedule(sweep.space.points[1])  # ramp 0 -> 5 over 100 steps, then constant
    assert schedule(0) == 0.0 and schedule(50) == pytest.approx(2.5) and schedule(100) == 5.0
    assert schedule(299) == 5.0 and sweep.train_steps(100) == 300
    assert sweep.warnings == ()
    hundred = warmup_sweep(0.5, 100_000, factor=100, warmup_steps=[1000, 300, 1000])
    assert hundred.base_learning_rate == 50.0 and hundred.warmup_steps == (300, 1000)


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((0.5, 10_000), {"factor": 1.0}, "factor=1.0 must be > 1"),
    ((0.5, 10_000), {"factor": 0.1}, "factor=0.1 must be > 1"),
    ((0.5, 10_000), {"warmup_steps": [100, 1001]}, r"warmup_steps=\[1001\] is over 10% of max_train_steps=10000"),
    ((0.5, 50), {}, "max_train_steps=50 is too small"),
    ((0.0, 10_000), {}, "unstable_base_lr=0.0 must be a positive"),
    ((0.5, 10_000), {"warmup_steps": []}, "warmup_steps must be a non-empty list"),
    ((0.5, 10_000), {"warmup_steps": [0]}, "warmup_steps=0 must be >= 1"),
    ((1e300, 10_000), {"factor": 1e10}, "factor \\* unstable_base_lr = .* overflows"),
])
def test_warmup_sweep_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        warmup_sweep(*args, **kwargs)


def test_a_factor_below_ten_is_allowed_with_a_warning():
    assert [w.code for w in warmup_sweep(0.5, 10_000, factor=3).warnings] == ["small_factor"]


# ------------------------------------------------------------------ shortest_stable_warmup


def warmup_trials(blows_up: dict[int, str]):
    """A warmup sweep's trials: warmup w trains 3w steps; ``blows_up[w]`` is "nan"
    (diverged: infeasible), "rise" (the loss climbs after the warmup) or absent."""
    trials = []
    for index, warmup in enumerate(sorted(blows_up)):
        steps = np.unique(np.geomspace(1, 3 * warmup, 60).astype(int))
        loss = 0.1 + 2.2 * np.exp(-steps / (warmup + 20))
        state = "complete"
        if blows_up[warmup] == "rise":
            loss = np.where(steps > warmup, loss + 0.02 * (steps - warmup), loss)
        elif blows_up[warmup] == "nan":
            loss = np.where(steps > warmup, np.nan, loss)
            state = "infeasible"
        trials.append({"index": index, "params": {"warmup_steps": warmup, "learning_rate": 5.0}, "state": state,
                       "best_value": float(np.nanmin(loss)), "best_step": 1,
                       "history": {"train_loss": (steps, loss)}})
    return trials


def test_the_shortest_warmup_that_does_not_blow_up():
    trials = warmup_trials({10: "nan", 100: "rise", 1000: "", 10_000: ""})
    result = shortest_stable_warmup(trials, max_train_steps=200_000)
    assert result.warmup_steps == 1000 and result.new_max_train_steps == 201_000
    assert result.stable.tolist() == [False, False, True, True] and result.tried.tolist() == [10, 100, 1000, 10_000]
    assert result.warnings == ()
    assert "Use warmup_steps = 1000" in result.verdict and "200000 + 1000 = 201000" in result.verdict
    data = _warmup_plot_data(result)
    assert data.answer == 1000 and data.long_mark == 10_000 and data.max_mark == 20_000
    assert [c[3] for c in data.curves] == [False, False, True, True]


def test_a_long_warmup_may_need_more_steps():
    result = shortest_stable_warmup(warmup_trials({10: "nan", 1000: ""}), max_train_steps=15_000)
    assert result.warmup_steps == 1000
    assert [w.code for w in result.warnings] == ["long_warmup"]  # 1000 > 5% of 15,000


def test_warmup_warnings_for_odd_sweeps():
    result = shortest_stable_warmup(warmup_trials({10: "", 100: "nan", 1000: ""}), max_train_steps=100_000)
    assert result.warmup_steps == 10
    assert {w.code for w in result.warnings} == {"shortest_tried_is_stable", "longer_warmup_unstable"}
    nothing = shortest_stable_warmup(warmup_trials({10: "nan", 100: "rise"}), max_train_steps=10_000)
    assert nothing.warmup_steps is None and nothing.new_max_train_steps is None
    assert [w.code for w in nothing.warnings] == ["no_stable_warmup"]


def test_shortest_stable_warmup_bad_input():
    with pytest.raises(ValueError, match="max_train_steps is unknown"):
        shortest_stable_warmup(warmup_trials({10: ""}))
    with pytest.raises(ValueError, match="study has no trials"):
        shortest_stable_warmup([], max_train_steps=1000)
    running = [{"index": 0, "params": {"warmup_steps": 10}, "state": "running"}]
    with pytest.raises(ValueError, match="no finished trial"):
        shortest_stable_warmup(running, max_train_steps=1000)


def test_a_real_warmup_sweep_on_the_cpu(tmp_path):
    """A real warmup sweep study: the sweep's space, its schedules driving SGD, the
    training loss reported, then the answer read from the study.
    Least squares with curvature 2 is stable for learning rates below 1 whatever the
    warmup, and diverges above 1 once the ramp passes 1: so at 10 x 0.05 every warmup is
    stable, and at 10 x 0.3 = 3 every warmup blows up."""
    def run(unstable_lr, name):
        sweep = warmup_sweep(unstable_lr, 1000, warmup_steps=[5, 20, 80])
        study = Study(name, sweep.space, storage=f"sqlite:///{tmp_path}/w.db", max_trials=sweep.space.size)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(128, 4, generator=generator)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(128, generator=generator)
        while (trial := study.ask()) is not None:
            w = torch.zeros(4, requires_grad=True)
            schedule = sweep.schedule(trial.params)
            diverged = False
            for step in range(trial.params["train_steps"]):
                loss = ((x @ w - y) ** 2).mean()
                loss.backward()
                with torch.no_grad():  # SGD at the trial's scheduled learning rate
                    w -= schedule(step) * w.grad
                    w.grad.zero_()
                trial.report(step=step, train_loss=float(loss.detach()))
                if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e6:
                    diverged = True
                    break
            trial.infeasible("diverged") if diverged else trial.complete()
        return shortest_stable_warmup(study, record=True)

    calm = run(0.05, "calm")
    assert calm.warmup_steps == 5 and calm.new_max_train_steps == 1005 and calm.stable.all()
    assert calm.base_learning_rate == pytest.approx(0.5)
    assert "shortest_tried_is_stable" in [w.code for w in calm.warnings]
    wild = run(0.3, "wild")
    assert wild.warmup_steps is None and not wild.stable.any()


# ------------------------------------------------------------------ with_warmup


def test_with_warmup_prepends_and_adds_the_steps():
    baseline = cosine_decay_schedule(0.1, 10_000)
    warm = with_warmup(baseline, 1_000, 10_000)
    assert warm.max_train_steps == 11_000 and warm.warmup_steps == 1000  # the playbook's example
    assert [w.code for w in warm.warnings] == ["long_warmup"]  # 10% > 5%: more steps may be needed
    steps = np.arange(0, 11_001, 250)
    np.testing.assert_allclose(warm.schedule(steps), linear_warmup(baseline, 1000)(steps))
    assert warm.schedule(1000 + 5000) == pytest.approx(baseline(5000))  # the baseline keeps its shape
    assert with_warmup(0.1, 0, 10_000).schedule(0) == 0.1
    assert with_warmup(0.1, 500, 10_000).warnings == ()
    with pytest.raises(ValueError, match="warmup_steps=1001 is over 10% of max_train_steps=10000"):
        with_warmup(baseline, 1001, 10_000)
    with pytest.raises(ValueError, match="warmup_steps=-1 must be >= 0"):
        with_warmup(baseline, -1, 10_000)


# ------------------------------------------------------------------ round_two


def test_round_two_linear_keeps_the_decay_and_extends_the_constant_phase():
    result = round_two({"learning_rate": 0.2, "momentum": 0.9}, "linear", 1000, 1500, warmup_steps=100)
    round_one = linear_warmup(linear_schedule(0.2, 0.0, 900), 100)
    expected = extend_constant_phase(round_one, 100, 500)  # the existing helper, reused
    steps = np.arange(1501)
    np.testing.assert_allclose(result.schedule(steps), expected(steps))
    assert result.schedule(100) == result.schedule(599) == 0.2  # held at the peak
    np.testing.assert_allclose(result.schedule(np.arange(600, 1501)), round_one(np.arange(100, 1001)))  # same decay
    assert result.config == {"learning_rate": 0.2, "momentum": 0.9, "max_train_steps": 1500}
    assert result.kind == "linear" and result.warnings == ()
    assert result.low_lr_share[1] < result.low_lr_share[0]


def test_round_two_cosine_keeps_the_base_lr_and_stretches():
    result = round_two({"learning_rate": 0.1}, "cosine", 1000, 3000, warmup_steps=50)
    assert max(result.schedule(np.arange(3000))) == pytest.approx(0.1)
    assert result.schedule(3000) == pytest.approx(0.0, abs=1e-12) and result.schedule(1000) > 0.05
    expected = linear_warmup(cosine_decay_schedule(0.1, 2950), 50)
    np.testing.assert_allclose(result.schedule(np.arange(0, 3001, 7)), expected(np.arange(0, 3001, 7)))
    assert result.warnings == ()
    data = _round_two_plot_data(result)
    assert np.isnan(data.round_one_lr[data.steps > 1000]).all() and data.new_max_train_steps == 3000


def test_round_two_warns_about_extra_steps_at_a_tiny_learning_rate():
    round_one = linear_warmup(linear_schedule(0.1, 0.0, 900), 100)
    good = round_two({}, round_one, 1000, 2000, at_step=100)
    assert good.kind == "custom" and good.warnings == ()
    pitfall = round_two({}, round_one, 1000, 2000, at_step=1000)  # holds the final, near-zero rate
    assert [w.code for w in pitfall.warnings] == ["extra_steps_at_low_lr"]


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (({"learning_rate": 0.1}, "linear", 1000, 1000), {}, "new_max_train_steps=1000 must be > max_train_steps=1000"),
    (({"learning_rate": 0.1}, "step", 1000, 2000), {}, "schedule='step' must be 'linear', 'cosine'"),
    (({"lr": 0.1}, "cosine", 1000, 2000), {}, r"best_config\['learning_rate'\]=None must be a positive"),
    (({}, lambda s: 0.1, 1000, 2000), {}, "at_step is needed"),
    (({"learning_rate": 0.1}, "linear", 1000, 2000), {"warmup_steps": 1000}, "warmup_steps=1000 must be <"),
])
def test_round_two_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        round_two(*args, **kwargs)
