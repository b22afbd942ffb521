"""How many steps: the grid space, the constant learning-rate sweep, and
max_train_steps from it (with the best-checkpoint diagnosis wired in); synthetic
sweeps whose fastest perfect-fit step is known, and a real one on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunebook.playbook import GridSpace, constant_lr_sweep, max_train_steps_from_sweep
from tunebook.playbook._steps import _max_train_steps_plot_data
from tunebook.study import Study

# ------------------------------------------------------------------ the grid


def test_grid_space_visits_each_point_once_through_a_study(tmp_path):
    space = constant_lr_sweep(1e-3, 1.0, 4, fixed={"optimizer": "nesterov", "momentum": 0.9})
    assert space.size == len(space) == 4 and space.procedure == "constant_lr_sweep"
    assert [p["learning_rate"] for p in space.points] == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    assert space.points[0] == {"learning_rate": 0.001, "optimizer": "nesterov", "momentum": 0.9}
    storage = f"sqlite:///{tmp_path}/grid.db"
    study = Study("sweep", space, storage=storage, max_trials=space.size)
    seen = []
    while (trial := study.ask()) is not None:
        seen.append(trial.params)
        trial.complete()
    assert seen == space.points
    reopened = Study("sweep", storage=storage)  # the space comes back from storage alone
    assert isinstance(reopened.space, GridSpace) and reopened.space == space
    assert reopened.space.info == {"lr_param": "learning_rate"}
    kinds = {p.name: (p.kind, p.scale) for p in reopened.space.parameters}
    assert kinds == {"learning_rate": ("float", "log"), "optimizer": ("fixed", None), "momentum": ("fixed", None)}


def test_a_grid_study_without_max_trials_says_how_to_fix_it(tmp_path):
    space = constant_lr_sweep(0.01, 1.0, 3)
    study = Study("open-ended", space, storage=f"sqlite:///{tmp_path}/g.db")
    for _ in range(3):
        study.ask().complete()
    with pytest.raises(ValueError, match=r"past the end of this grid of 3 points: create the study with max_trials=3"):
        study.ask()


def test_grid_space_product_and_checks():
    space = GridSpace.product({"a": [1, 2], "b": ["x", "y", "z"]}, fixed={"c": 0.5})
    assert space.size == 6 and space.points[1] == {"a": 1, "b": "y", "c": 0.5}
    assert space.sample(2, seed=123, start=4) == [{"a": 2, "b": "y", "c": 0.5}, {"a": 2, "b": "z", "c": 0.5}]
    assert GridSpace.from_dict(space.to_dict()) == space
    kinds = {p.name: p.kind for p in space.parameters}
    assert kinds == {"a": "int", "b": "categorical", "c": "fixed"}
    with pytest.raises(ValueError, match="non-empty list of dicts"):
        GridSpace([])
    with pytest.raises(ValueError, match=r"points\[1\] has the keys"):
        GridSpace([{"a": 1}, {"b": 2}])
    with pytest.raises(ValueError, match="finite JSON values"):
        GridSpace([{"a": math.nan}])
    with pytest.raises(ValueError, match="'log' needs positive values"):
        GridSpace([{"a": 0}, {"a": 1}], scales={"a": "log"})
    with pytest.raises(ValueError, match=r"\['a'\] are both fixed and varied"):
        GridSpace.product({"a": [1, 2]}, fixed={"a": 3})


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((0.0, 1.0, 5), {}, "low=0.0 must be a positive"),
    ((1.0, 0.1, 5), {}, "low=1.0 must be < high=0.1"),
    ((1e-3, 1.0, 2), {}, "n=2 must be an int >= 3"),
    ((1e-3, math.inf, 5), {}, "high=inf must be a positive finite"),
    ((1e-3, 1.0, 5), {"fixed": {"learning_rate": 0.1}}, "must not set 'learning_rate'"),
])
def test_constant_lr_sweep_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        constant_lr_sweep(*args, **kwargs)


# ------------------------------------------------------------------ max_train_steps


def fit_sweep(fit_at: dict[int, int | None], sweep_steps: int = 1000, best_at: float = 0.5):
    """Trials of a constant learning-rate sweep: trial k has lr 10^(k-4) and its training
    error reaches 0 at ``fit_at[k]`` (never when None); its validation loss is best at
    ``best_at`` of the run."""
    trials = []
    steps = np.arange(0, sweep_steps + 1, 10)
    for k, at in fit_at.items():
        error = np.clip(1 - steps / at, 0, None) if at else 0.5 * np.exp(-steps / 300) + 0.05
        valid = (steps - best_at * sweep_steps) ** 2 / sweep_steps**2 + 0.1 * k
        trials.append({"index": k, "params": {"learning_rate": 10.0 ** (k - 4)}, "state": "complete",
                       "best_value": float(valid.min()), "best_step": int(steps[np.argmin(valid)]),
                       "history": {"train_error": (steps, error), "valid_loss": (steps, valid)}})
    return trials


def test_the_fastest_perfect_fit_is_the_answer():
    trials = fit_sweep({0: None, 1: 900, 2: 420, 3: 300, 4: 610, 5: None})
    result = max_train_steps_from_sweep(trials)
    assert (result.max_train_steps, result.fit_step, result.trial) == (300, 300, 3)
    assert result.learning_rate == pytest.approx(0.1) and result.sweep_steps == 1000
    assert result.fit_steps.tolist() == [-1, 900, 420, 300, 610, -1]
    assert result.warnings == () and result.verdict.startswith("Use max_train_steps = 300")
    data = _max_train_steps_plot_data(result)
    assert data.fit_step == 300 and data.never_lr.tolist() == pytest.approx([1e-4, 10.0])
    assert [c[0] for c in data.curves][:2] == ["lr 0.0001", "lr 0.001"]


def test_a_fastest_learning_rate_at_the_end_of_the_sweep_is_self_deception():
    result = max_train_steps_from_sweep(fit_sweep({0: 700, 1: 500, 2: 200}))
    assert result.max_train_steps == 200 and result.trial == 2
    (warning,) = result.warnings
    assert warning.code == "lr_at_sweep_boundary" and "largest" in warning.message


def test_training_accuracy_with_mode_max():
    trials = fit_sweep({0: 800, 1: 250, 2: 400})
    for t in trials:
        steps, error = t["history"]["train_error"]
        t["history"]["train_accuracy"] = (steps, 1 - error)
    result = max_train_steps_from_sweep(trials, "train_accuracy", 1.0, mode="max")
    assert result.max_train_steps == 250 and result.trial == 1


def test_late_best_checkpoints_lengthen_the_recommendation():
    # Every validation best comes in the last 25%: train longer (the sweep's N).
    result = max_train_steps_from_sweep(fit_sweep({0: 900, 1: 300, 2: 600}, best_at=0.95))
    assert result.fit_step == 300 and result.max_train_steps == 1000
    assert "best_step_late" in [w.code for w in result.warnings] and "training longer helps" in result.verdict


def test_no_fit_and_late_best_checkpoints_double_the_steps():
    result = max_train_steps_from_sweep(fit_sweep({0: None, 1: None, 2: None}, best_at=0.95))
    assert result.fit_step is None and result.max_train_steps == 2000
    assert {"never_fit", "best_step_late"} <= {w.code for w in result.warnings}


def test_no_fit_gives_no_recommendation():
    result = max_train_steps_from_sweep(fit_sweep({0: None, 1: None, 2: None}))
    assert result.max_train_steps is None and result.trial is None
    assert [w.code for w in result.warnings] == ["never_fit"] and "No recommendation" in result.verdict


def test_early_best_checkpoints_are_reported():
    result = max_train_steps_from_sweep(fit_sweep({0: 900, 1: 300, 2: 600}, best_at=0.02))
    assert result.max_train_steps == 300 and "best_step_early" in [w.code for w in result.warnings]


def test_max_train_steps_bad_input():
    with pytest.raises(ValueError, match="study has no trials"):
        max_train_steps_from_sweep([])
    with pytest.raises(ValueError, match="no complete trial reported metric='train_loss_zero'"):
        max_train_steps_from_sweep(fit_sweep({0: 10}), "train_loss_zero")
    with pytest.raises(ValueError, match="no trial has lr_param='lr'"):
        max_train_steps_from_sweep(fit_sweep({0: 10}), lr_param="lr")
    with pytest.raises(ValueError, match="target=nan must be a finite number"):
        max_train_steps_from_sweep(fit_sweep({0: 10}), target=math.nan)
    with pytest.raises(ValueError, match="mode='best' must be"):
        max_train_steps_from_sweep(fit_sweep({0: 10}), mode="best")


def test_a_real_constant_lr_sweep_on_the_cpu(tmp_path):
    """A small MLP on XOR with a margin: each learning rate trains until every training
    example is classified correctly; the answer must be the first zero-error step of
    the fastest trial, computed independently here."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=generator) * 2 - 1
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).float()
    x = x + 0.2 * torch.sign(x)
    space = constant_lr_sweep(0.1, 10.0, 3)
    study = Study("lr-sweep", space, storage=f"sqlite:///{tmp_path}/s.db", max_trials=space.size, metric="train_loss")
    first_zero = {}
    while (trial := study.ask()) is not None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        for step in range(1, 101):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= trial.params["learning_rate"] * p.grad
                error = float(((model(x)[:, 0] > 0).float() != y).float().mean())
            if step % 2 == 0:
                trial.report(step=step, train_error=error, train_loss=float(loss.detach()))
                if error == 0 and trial.index not in first_zero:
                    first_zero[trial.index] = step
        trial.complete()
    result = max_train_steps_from_sweep(study, record=True)
    assert first_zero, "no learning rate fit the training set"
    fastest = min(first_zero, key=lambda i: (first_zero[i], i))
    assert (result.trial, result.fit_step) == (fastest, first_zero[fastest])
    assert result.learning_rate == pytest.approx(space.points[fastest]["learning_rate"])
    assert result.max_train_steps in (result.fit_step, result.sweep_steps)
    from tunebook.playbook import recorded

    (record,) = recorded(study, "max_train_steps")
    assert record.result.fit_step == result.fit_step and record.key == "playbook.max_train_steps"
