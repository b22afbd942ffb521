"""Training instability: curves with instabilities planted at known steps, the
learning-rate sweep check (Figures 7a/7b), the early check (Figure 5) on synthetic and
real CPU training, bad arguments, and fuzzing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tunebook.playbook import detect_instability, early_instability_check, lr_sweep_instability
from tunebook.playbook._instability import _early_check_plot_data, _lr_sweep_plot_data


def decaying(steps, start=2.3, floor=0.1, scale=200.0, noise=0.0, seed=0):
    steps = np.asarray(steps, dtype=np.float64)
    rng = np.random.default_rng(seed)
    clean = floor + (start - floor) * np.exp(-steps / scale)
    return clean * (1 + noise * rng.standard_normal(steps.size))


# ------------------------------------------------------------------ detect_instability


@pytest.mark.parametrize("at", [300, 720, 1500])
def test_a_rise_after_a_decline_is_found_where_it_began(at):
    steps = np.arange(0, 2000, 10)
    losses = decaying(steps, noise=0.01)
    after = steps >= at
    losses[after] += 0.8 + np.linspace(0, 1.0, int(after.sum()))  # a sudden rise at `at`, still climbing
    found = detect_instability(steps, losses)
    rises = [e for e in found.events if e.kind == "rise"]
    assert len(rises) == 1 and found.unstable
    assert abs(rises[0].step - at) <= 30  # within 3 evaluations of where the climb began
    assert rises[0].detected_step >= rises[0].step and rises[0].declined_first
    assert rises[0].end_step is None  # it never came back
    assert found.phase == ("early" if at <= 200 else "mid") and found.began == rises[0].step
    assert [w.code for w in found.warnings] == ["loss_rises"]


def test_a_rise_that_recovers_has_an_end_and_the_early_phase():
    steps = np.arange(0, 1000)
    losses = decaying(steps, scale=30.0)
    losses[40:70] += 1.5  # an early burst of instability, then back on track (Figure 5)
    found = detect_instability(steps, losses)
    (event,) = found.events
    assert event.kind == "rise" and event.phase == "early" and abs(event.step - 40) <= 2
    assert event.end_step is not None and 68 <= event.end_step <= 73
    late = detect_instability(steps, losses, early_fraction=0.01)
    assert late.events[0].phase == "mid"


def test_a_loss_rising_from_the_start_is_early_instability():
    steps = np.arange(200)
    found = detect_instability(steps, 2.3 + 0.01 * steps)
    assert found.unstable and found.events[0].kind == "rise" and found.phase == "early"
    assert not found.events[0].declined_first and found.began == 0


def test_nan_and_inf_are_found_at_their_step():
    steps = np.arange(0, 500, 5)
    for bad in (np.nan, np.inf):
        losses = decaying(steps)
        losses[60:] = bad
        found = detect_instability(steps, losses)
        assert [e.kind for e in found.events] == ["nonfinite"]
        assert found.began == 300 and found.events[0].phase == "mid"
        assert np.isnan(found.trend[60:]).all() and np.isfinite(found.trend[:60]).all()
        assert found.warnings[0].code == "nonfinite_loss"
    everything_bad = detect_instability([0, 1], [np.nan, np.nan])
    assert everything_bad.began == 0 and everything_bad.events[0].kind == "nonfinite"


def test_an_isolated_spike_is_a_spike_not_a_rise():
    steps = np.arange(0, 3000, 10)
    losses = decaying(steps, scale=400.0, noise=0.01)
    losses[150] *= 4  # step 1500
    found = detect_instability(steps, losses)
    assert [(e.kind, e.step) for e in found.events] == [("spike", 1500)]
    assert found.events[0].end_step == 1510
    assert [w.code for w in found.warnings] == ["loss_spikes"]


@pytest.mark.parametrize("seed", range(5))
def test_noisy_but_stable_curves_raise_nothing(seed):
    steps = np.arange(0, 5000, 25)
    found = detect_instability(steps, decaying(steps, scale=800.0, noise=0.03, seed=seed))
    assert not found.unstable and found.events == () and found.phase == "" and found.began is None
    assert found.verdict.startswith("Stable")


@pytest.mark.parametrize(("noise", "n"), [(0.1, 2000), (0.2, 200), (0.2, 2000)])
def test_noisy_minibatch_losses_raise_nothing(noise, n):
    steps = np.linspace(0, 5000, n).astype(int)
    for seed in range(5):
        found = detect_instability(steps, decaying(steps, scale=800.0, noise=noise, seed=seed))
        assert found.events == (), (seed, found.verdict)


def test_a_rise_stands_out_of_noise():
    steps = np.arange(0, 5000, 5)
    losses = decaying(steps, scale=400.0, noise=0.1, seed=3)
    losses[steps >= 3000] *= 3.0  # the loss triples at step 3000 and stays there
    found = detect_instability(steps, losses)
    (event,) = found.events
    assert event.kind == "rise" and abs(event.step - 3000) <= 15 and event.phase == "mid"


def test_a_short_burst_in_a_steep_decline_needs_the_raw_curve():
    # Figure 5's pattern, evaluated exactly: a 3-step burst during the first steep fall.
    steps = np.arange(500)
    losses = 0.01 + 2.3 * np.exp(-steps / 6.0)
    losses[9:12] = [1.3, 1.2, 0.85]
    raw = detect_instability(steps, losses, smooth=1)
    assert raw.unstable and raw.phase == "early" and 8 <= raw.began <= 9
    assert raw.events[0].end_step == 12
    assert not detect_instability(steps, losses).unstable  # the running median smears it away


def test_the_docstring_example():
    steps = list(range(100))
    losses = [2.0 - 0.015 * s if s <= 60 else 1.1 + 0.05 * (s - 60) for s in steps]
    found = detect_instability(steps, losses)
    assert (found.events[0].kind, found.phase, found.began) == ("rise", "mid", 60)


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (([0, 1], [1.0]), {}, "same length"),
    (([], []), {}, "losses must not be empty"),
    (([0, 2, 1], [1.0, 1.0, 1.0]), {}, "steps must be strictly increasing"),
    (([0, 1.5], [1.0, 1.0]), {}, "steps must be integers"),
    (([0, 1], [1.0, 1.0]), {"rise": 0}, "rise=0 must be"),
    (([0, 1], [1.0, 1.0]), {"window": 0}, "window=0 must be >= 1"),
    (([0, 1], [1.0, 1.0]), {"spike": 1.0}, "spike=1.0 must be"),
    (([0, 1], [1.0, 1.0]), {"early_fraction": 1.5}, "early_fraction=1.5 must be"),
    (([0, 1], [1.0, 1.0]), {"give_back": -0.1}, "give_back=-0.1 must be"),
])
def test_bad_curves_and_thresholds_name_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect_instability(*args, **kwargs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(math.nan), st.just(math.inf)), min_size=1, max_size=60),
       st.integers(1, 9), st.integers(1, 5))
def test_any_curve_gives_a_consistent_answer(losses, smooth, window):
    steps = np.arange(len(losses)) * 3
    found = detect_instability(steps, losses, smooth=smooth, window=window)
    assert found.unstable == bool(found.events)
    for event in found.events:
        assert steps[0] <= event.step <= steps[-1] and event.phase in ("early", "mid")
        assert event.step <= event.detected_step <= event.peak_step or event.kind != "rise"
    finite = np.isfinite(losses)
    if not finite.all():
        assert any(e.kind == "nonfinite" and e.step == steps[np.argmin(finite)] for e in found.events)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1e3), min_size=1, max_size=80))
def test_a_curve_that_never_goes_up_is_stable(values):
    losses = np.sort(np.asarray(values))[::-1]
    assert not detect_instability(np.arange(losses.size), losses).unstable


# ------------------------------------------------------------------ lr_sweep_instability


def sweep_trials(unstable_above: bool, edge: bool = False, optimizers=("sgd",)):
    """A learning-rate sweep: 8 log-spaced learning rates per optimizer, the best at the
    4th; above it the training loss rises mid-run when ``unstable_above``; with
    ``edge``, the 5th diverges (infeasible)."""
    trials = []
    lrs = np.geomspace(1e-3, 1.0, 8)
    steps = np.arange(0, 1000, 10)
    for o, optimizer in enumerate(optimizers):
        for k, lr in enumerate(lrs):
            index = len(trials)
            value = 0.2 + 0.05 * abs(k - 3) + 0.01 * o
            curve = decaying(steps, scale=150.0)
            state = "complete"
            if k > 3 and unstable_above:
                curve[steps >= 500] += np.linspace(0, 1.0 + k, int((steps >= 500).sum()))
            if edge and k == 4:
                state, value, curve = "infeasible", None, np.where(steps < 200, curve, np.nan)
            trials.append({"index": index, "params": {"optimizer": optimizer, "learning_rate": float(lr)},
                           "state": state, "best_value": value, "best_step": 900,
                           "history": {"train_loss": (steps, curve)}})
    return trials, lrs


def test_rising_losses_just_above_lr_star_mean_unstable():
    trials, lrs = sweep_trials(unstable_above=True)
    result = lr_sweep_instability(trials)
    assert result.best_trial == 3 and result.best_learning_rate == pytest.approx(lrs[3])
    assert [c.trial for c in result.above] == [4, 5]  # the next ones within 10x (lrs are 2.7x apart)
    assert all(c.unstable for c in result.above) and result.unstable
    assert all(abs(c.instability.began - 500) <= 30 for c in result.above)
    assert [w.code for w in result.warnings] == ["unstable_above_best_lr"]
    assert result.verdict.startswith("Unstable above lr*")


def test_stable_above_lr_star():
    trials, _ = sweep_trials(unstable_above=False)
    result = lr_sweep_instability(trials, n_above=1)
    assert not result.unstable and [c.trial for c in result.above] == [4]
    wider = lr_sweep_instability(trials, max_factor=30)
    assert [c.trial for c in wider.above] == [4, 5, 6]
    assert result.warnings == () and result.verdict.startswith("Stable above lr*")


def test_the_best_lr_at_the_edge_of_the_feasible_region_is_flagged():
    trials, _ = sweep_trials(unstable_above=False, edge=True)
    result = lr_sweep_instability(trials)
    assert "best_lr_at_feasibility_edge" in [w.code for w in result.warnings]
    assert result.above[0].trial == 4 and result.above[0].unstable and result.unstable
    assert result.above[0].instability.events[0].kind == "nonfinite"
    data = _lr_sweep_plot_data(result)
    assert data.edge_warning and data.infeasible_lr.tolist() == [result.above[0].learning_rate]
    assert data.best_lr == result.best_learning_rate and len(data.curves) == 2


def test_only_trials_of_the_best_optimizer_are_compared():
    trials, _ = sweep_trials(unstable_above=False, optimizers=("sgd", "adam"))
    for trial in trials:  # adam's curves above its own lr* rise, but sgd is the best optimizer
        if trial["params"]["optimizer"] == "adam":
            trial["history"]["train_loss"][1][50:] += 3.0
    result = lr_sweep_instability(trials)
    assert result.group == {"optimizer": "sgd"} and not result.unstable
    assert set(result.trials.tolist()) == set(range(8))
    adam = lr_sweep_instability(trials, where={"optimizer": "adam"})
    assert adam.best_trial == 11 and adam.unstable


def test_nothing_above_lr_star():
    trials, _ = sweep_trials(unstable_above=False)
    result = lr_sweep_instability(trials[:4])
    assert result.above == () and [w.code for w in result.warnings] == ["no_trials_above_best_lr"]
    assert result.verdict.startswith("Cannot tell")


def test_lr_sweep_bad_input():
    with pytest.raises(ValueError, match="study has no trials"):
        lr_sweep_instability([])
    with pytest.raises(ValueError, match="no trial has a positive lr_param='lr'"):
        lr_sweep_instability(sweep_trials(False)[0], "lr")
    bad = [{"index": 0, "params": {"learning_rate": 0.1}, "state": "infeasible"}]
    with pytest.raises(ValueError, match="no feasible trial"):
        lr_sweep_instability(bad)
    with pytest.raises(ValueError, match="n_above=0 must be >= 1"):
        lr_sweep_instability(sweep_trials(False)[0], n_above=0)
    with pytest.raises(ValueError, match="record=True needs a Study"):
        lr_sweep_instability(sweep_trials(False)[0], record=True)


# ------------------------------------------------------------------ early_instability_check


def test_early_check_finds_a_planted_early_rise_and_sees_every_step():
    calls = []

    def train(lr, steps, eval_every, report):
        calls.append((lr, steps, eval_every))
        for step in range(0, steps + 1, eval_every):
            loss = 2.3 * math.exp(-step / 40) + 0.1 + (1.2 if 25 <= step < 45 else 0.0)
            report(step, loss)

    check = early_instability_check(train, 0.05)
    assert calls == [(0.1, 500, 1)]
    assert check.learning_rate == pytest.approx(0.1) and check.evaluations == 501
    assert check.unstable and check.instability.events[0].kind == "rise"
    assert abs(check.instability.began - 25) <= 2 and check.instability.phase == "early"
    assert check.instability.events[0].end_step is not None  # it recovered: Figure 5's pattern
    assert "early instability" in check.verdict and "every step" in check.verdict
    data = _early_check_plot_data(check)
    assert data.log_x and data.curve.steps.size == 501 and data.curve.event_kinds == ("rise",)


def test_early_check_stable_and_sparse_evaluations():
    def train(lr, steps, eval_every, report):
        for step in range(0, steps + 1, 50):  # ignores eval_every
            report(step, 2.3 * math.exp(-step / 100))

    check = early_instability_check(train, 0.01, factor=3.0, steps=300)
    assert not check.unstable and check.learning_rate == pytest.approx(0.03)
    assert [w.code for w in check.warnings] == ["sparse_evaluations"]
    assert "stable" in check.verdict


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"factor": 1.0}, "factor=1.0 must be > 1"),
    ({"factor": 0.5}, "factor=0.5 must be > 1"),
    ({"steps": 0}, "steps=0 must be >= 1"),
    ({"eval_every": 0}, "eval_every=0 must be >= 1"),
    ({"steps": 10, "eval_every": 20}, "eval_every=20 must be <= steps=10"),
])
def test_early_check_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        early_instability_check(lambda *a: None, 0.1, **kwargs)
    with pytest.raises(ValueError, match="best_lr=-1 must be a finite number|best_lr=-1 must be > 0"):
        early_instability_check(lambda *a: None, -1)
    with pytest.raises(ValueError, match=r"factor \* best_lr = .* overflows"):
        early_instability_check(lambda *a: None, 1e300, factor=1e10)


def test_early_check_needs_reports():
    with pytest.raises(ValueError, match="train reported no losses"):
        early_instability_check(lambda lr, steps, every, report: None, 0.1)


def regression_train(seed: int = 0):
    """Real training on the CPU: a linear model on least squares, plain SGD. The loss's
    curvature is 2, so a learning rate above 1 diverges."""

    def train(lr, steps, eval_every, report):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(256, 4, generator=generator)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(256, generator=generator)
        w = torch.zeros(4, requires_grad=True)
        for step in range(1, steps + 1):
            loss = ((x @ w - y) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                w -= lr * w.grad
                w.grad.zero_()
            if step % eval_every == 0:
                with torch.no_grad():
                    value = float(((x @ w - y) ** 2).mean())
                report(step, value)
                if not math.isfinite(value):
                    break

    return train


def test_early_check_on_real_training():
    stable = early_instability_check(regression_train(), 0.2, steps=200)
    assert not stable.unstable and stable.evaluations == 200
    diverging = early_instability_check(regression_train(), 0.6, steps=200)  # 2 x 0.6 = 1.2 > 1
    assert diverging.unstable and diverging.instability.phase == "early"
    assert {e.kind for e in diverging.instability.events} <= {"rise", "nonfinite"}
