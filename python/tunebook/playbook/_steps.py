"""How many steps: ``max_train_steps`` from a constant learning-rate sweep (playbook,
"Determining the number of steps for each training run" > "Deciding how long to train
when training is not compute-bound")."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, NamedTuple

import numpy as np

from tunebook.analysis import AnalysisWarning, BestStepData, best_step_data
from tunebook.analysis._trials import check_mode, trial_views
from tunebook.playbook import _record
from tunebook.playbook._grid import GridSpace


def constant_lr_sweep(
    low: float,
    high: float,
    n: int,
    *,
    lr_param: str = "learning_rate",
    fixed: Mapping[str, Any] | None = None,
) -> GridSpace:
    """The search space of a constant learning-rate sweep: ``n`` learning rates from
    ``low`` to ``high``, evenly spaced in log scale, each visited once.

    The playbook ("Deciding how long to train when training is not compute-bound" >
    "Algorithm for picking an initial candidate for max_train_steps using a learning
    rate sweep"): grid-search a *constant* learning rate, without data augmentation
    and without regularisation, each trial training for the same ``N`` steps (any
    ``N`` at which some configuration perfectly fits the training set). Then
    :func:`max_train_steps_from_sweep` reads the answer from the study.

    Args:
        low, high: the smallest and largest learning rate, ``0 < low < high``.
        n: how many learning rates, >= 3 (so the best can lie inside the range).
        lr_param: the learning rate's name in each trial's params.
        fixed: other params every trial gets (the optimizer, its momentum, ...).

    Returns:
        A :class:`GridSpace`; create the study with ``max_trials=space.size``.

    Raises:
        ValueError: ``low``/``high`` not positive and increasing, ``n < 3``, or
            ``fixed`` naming ``lr_param``.

    Example:
        >>> space = constant_lr_sweep(1e-3, 1.0, 4)
        >>> [round(p["learning_rate"], 6) for p in space.points]
        [0.001, 0.01, 0.1, 1.0]
    """
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive finite learning rate")
    if not low < high:
        raise ValueError(f"{low=} must be < {high=}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 3:
        raise ValueError(f"{n=} must be an int >= 3: the best learning rate must be able to lie inside the sweep")
    if not isinstance(lr_param, str) or not lr_param:
        raise ValueError(f"lr_param must be a parameter name, got {lr_param!r}")
    fixed = dict(fixed or {})
    if lr_param in fixed:
        raise ValueError(f"fixed must not set {lr_param!r}: the sweep varies it")
    ratio = math.log(high / low) / (n - 1)
    rates = [float(low * math.exp(ratio * i)) for i in range(n)]
    rates[0], rates[-1] = float(low), float(high)
    return GridSpace.product({lr_param: rates}, fixed=fixed, scales={lr_param: "log"},
                             procedure="constant_lr_sweep", info={"lr_param": lr_param})


@_record.recordable
class MaxTrainSteps(NamedTuple):
    """What :func:`max_train_steps_from_sweep` found.

    Attributes:
        max_train_steps: the recommendation, or None when the sweep cannot give one.
        fit_step: the fewest steps any trial needed to reach the target, or None.
        trial: that trial's index, or None.
        learning_rate: that trial's learning rate, or None.
        sweep_steps: ``N``, the length of the sweep's runs.
        metric, target, mode: what "perfectly fit" meant.
        lr_param: the learning rate's name.
        trials, learning_rates, fit_steps: every complete trial, its learning rate and
            the first step at which it reached the target (-1: never).
        curves: each of those trials' ``(steps, values)`` of the metric.
        best_step: the retrospective best-checkpoint steps of the study metric, as
            fractions of ``N`` (:func:`tunebook.analysis.best_step_data`).
        verdict: one paragraph for a person.
        warnings: ``lr_at_sweep_boundary``, ``never_fit``, ``best_step_early``,
            ``best_step_late``.
    """

    max_train_steps: int | None
    fit_step: int | None
    trial: int | None
    learning_rate: float | None
    sweep_steps: int
    metric: str
    target: float
    mode: str
    lr_param: str
    trials: np.ndarray
    learning_rates: np.ndarray
    fit_steps: np.ndarray
    curves: tuple[tuple[np.ndarray, np.ndarray], ...]
    best_step: BestStepData
    verdict: str
    warnings: tuple[AnalysisWarning, ...]

    procedure = "max_train_steps"

    def record(self, study: Any, key: str | None = None) -> str:
        """Stores this result with ``study`` for its report (see :func:`tunebook.playbook.record`)."""
        return _record.record(study, self, key)


def _first_reaching(steps: np.ndarray, values: np.ndarray, target: float, mode: str) -> int:
    hit = (values <= target) if mode == "min" else (values >= target)
    hit &= np.isfinite(values)
    return int(steps[int(np.argmax(hit))]) if hit.any() else -1


def max_train_steps_from_sweep(
    study: Any,
    metric: str = "train_error",
    target: float = 0.0,
    *,
    mode: str = "min",
    lr_param: str | None = None,
    valid_metric: str | None = None,
    sweep_steps: int | None = None,
    record: bool = False,
) -> MaxTrainSteps:
    """The initial ``max_train_steps``: the steps the fastest trial of a constant
    learning-rate sweep needed to perfectly fit the training set.

    The playbook ("Deciding how long to train when training is not compute-bound" >
    "Algorithm for picking an initial candidate for max_train_steps using a learning
    rate sweep"): the number of steps the fastest trial in the sweep needs to reach
    perfect training performance (e.g. a training error of zero) is the initial guess
    for ``max_train_steps``. Bad search spaces invite self-deception (if every
    learning rate is too small, a huge ``max_train_steps`` seems needed), so at least
    check that the best learning rate is not at the boundary of the sweep.

    The same section's retrospective check is wired in: the best checkpoint's step
    (of the study metric, usually the validation loss) as a fraction of the sweep's
    ``N`` steps. Always in the last 25%: the runs would gain from training longer,
    so the recommendation is ``N`` when the fit came earlier ("when in doubt, err on
    the side of training longer"), or ``2 N`` when no trial fit. Always in the first
    10%: ``N`` is far more than needed, which agrees with an early fit.

    Args:
        study: a :class:`tunebook.Study` (its trials report ``metric``), or its trials.
        metric: the training metric that reaches ``target`` at a perfect fit
            (default "train_error": the misclassification rate on the training set).
        target: the value that counts as a perfect fit (default 0.0).
        mode: "min" (reach ``<= target``, the default) or "max" (``>= target``, e.g.
            a training accuracy of 1.0).
        lr_param: the learning rate's name (default: the sweep's, else "learning_rate").
        valid_metric: the metric of the best-checkpoint check (default: the study's).
        sweep_steps: ``N`` (default: the last step any trial reported ``metric`` at).
        record: store the result with ``study`` for its report.

    Returns:
        A :class:`MaxTrainSteps`.

    Raises:
        ValueError: an empty study, no complete trial reporting ``metric``, or a bad
            argument.
    """
    check_mode(mode)
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not math.isfinite(target):
        raise ValueError(f"{target=} must be a finite number")
    is_study = hasattr(study, "trials") and callable(study.trials)
    if record and not is_study:
        raise ValueError("record=True needs a Study, not a list of trials")
    trials = list(study.trials()) if is_study else list(study)
    if lr_param is None:
        info = getattr(getattr(study, "space", None), "info", None) if is_study else None
        lr_param = (info or {}).get("lr_param", "learning_rate")
    valid_metric = valid_metric or (getattr(study, "metric", None) if is_study else None) or "valid_loss"
    views = trial_views(trials)
    if not views:
        raise ValueError("study has no trials: run the constant learning-rate sweep first")
    swept = sorted({float(v.params[lr_param]) for v in views if isinstance(v.params.get(lr_param), (int, float))})
    if not swept:
        raise ValueError(f"no trial has {lr_param=}: name the learning rate's parameter")
    done = [v for v in views if v.state == "complete" and lr_param in v.params]
    rows = []
    for view in done:
        steps, values = view.history(metric)
        if steps.size:
            rows.append((view, steps, values))
    if not rows:
        raise ValueError(f"no complete trial reported {metric=}: report it, e.g. trial.report(step, {metric}=...)")
    if sweep_steps is None:
        sweep_steps = max(int(steps.max()) for _, steps, _ in rows)
    elif isinstance(sweep_steps, bool) or not isinstance(sweep_steps, numbers.Integral) or sweep_steps < 1:
        raise ValueError(f"{sweep_steps=} must be an int >= 1")
    sweep_steps = max(int(sweep_steps), 1)
    fits = np.asarray([_first_reaching(steps, values, float(target), mode) for _, steps, values in rows],
                      dtype=np.int64)
    rates = np.asarray([float(view.params[lr_param]) for view, _, _ in rows])
    indices = np.asarray([view.index for view, _, _ in rows], dtype=np.int64)
    best_step = best_step_data(views, metric=valid_metric, max_train_steps=sweep_steps)
    late = any(w.code == "best_step_late" for w in best_step.warnings)
    warnings = list(best_step.warnings)
    reached = np.flatnonzero(fits >= 0)
    goal = f"{metric} {'<=' if mode == 'min' else '>='} {target:g}"
    if reached.size:
        order = sorted(reached.tolist(), key=lambda i: (fits[i], indices[i]))
        k = order[0]
        fit_step, trial, lr = int(fits[k]), int(indices[k]), float(rates[k])
        if len(swept) >= 2 and lr in (swept[0], swept[-1]):
            end = "smallest" if lr == swept[0] else "largest"
            warnings.append(AnalysisWarning(
                "lr_at_sweep_boundary",
                f"the fastest trial's learning rate {lr:.4g} is the {end} one swept "
                f"({swept[0]:.4g} to {swept[-1]:.4g}): the answer may be self-deception; extend the sweep "
                f"past the {end} learning rate and run it again.",
                lr_param))
        if late:
            recommended = max(fit_step, sweep_steps)
            verdict = (f"Trial {trial} (lr {lr:.4g}) reached {goal} first, at step {fit_step}, but the best "
                       f"checkpoints of {valid_metric} came in the last 25% of the {sweep_steps}-step runs: "
                       f"training longer helps, so use max_train_steps = {recommended}.")
        else:
            recommended = fit_step
            verdict = (f"Use max_train_steps = {fit_step}: trial {trial} (lr {lr:.4g}) was the fastest to perfectly "
                       f"fit the training set ({goal} at step {fit_step} of {sweep_steps}; "
                       f"{reached.size} of {len(rows)} trials got there).")
    else:
        fit_step = trial = lr = None
        def distance(values: np.ndarray) -> float:
            finite = values[np.isfinite(values)]
            if not finite.size:
                return math.inf
            return float(finite.min() - target) if mode == "min" else float(target - finite.max())

        closest = int(np.argmin([distance(values) for _, _, values in rows]))
        warnings.append(AnalysisWarning(
            "never_fit",
            f"no trial reached {goal} within {sweep_steps} steps (closest: trial {int(indices[closest])}, lr "
            f"{rates[closest]:.4g}): run the sweep longer, or check that the model can fit the training set "
            "(no augmentation or regularisation, a wide enough learning-rate range).",
            metric))
        if late:
            recommended = 2 * sweep_steps
            verdict = (f"No trial perfectly fit the training set in {sweep_steps} steps and the best checkpoints "
                       f"came in the last 25% of training: train longer; try max_train_steps = {recommended}.")
        else:
            recommended = None
            verdict = (f"No recommendation: no trial reached {goal} in {sweep_steps} steps; rerun the sweep "
                       "with more steps.")
    result = MaxTrainSteps(recommended, fit_step, trial, lr, sweep_steps, metric, float(target), mode, lr_param,
                           indices, rates, fits, tuple((s, v) for _, s, v in rows), best_step, verdict,
                           tuple(warnings))
    if record:
        result.record(study)
    return result


class _MaxTrainStepsPlotData(NamedTuple):
    """What the max_train_steps plot draws: each trial's training metric against the
    step (the target as a line, the fastest fit marked), and the fit step against the
    learning rate (trials that never fit on the top edge)."""

    curves: tuple[tuple[str, np.ndarray, np.ndarray], ...]  # (label, steps, values), by learning rate
    target: float
    metric: str
    fit_step: int | None
    fit_trial_label: str
    fit_lr: np.ndarray
    fit_steps: np.ndarray
    never_lr: np.ndarray
    sweep_steps: int
    title: str


def _max_train_steps_plot_data(result: MaxTrainSteps) -> _MaxTrainStepsPlotData:
    order = np.argsort(result.learning_rates, kind="stable")
    curves = tuple((f"lr {result.learning_rates[i]:.3g}", result.curves[i][0], result.curves[i][1]) for i in order)
    reached = result.fit_steps >= 0
    label = f"lr {result.learning_rate:.3g}" if result.learning_rate is not None else ""
    title = (f"max_train_steps = {result.max_train_steps}" if result.max_train_steps is not None
             else "max_train_steps: no recommendation")
    return _MaxTrainStepsPlotData(curves, result.target, result.metric, result.fit_step, label,
                                  result.learning_rates[reached], result.fit_steps[reached],
                                  result.learning_rates[~reached], result.sweep_steps, title)
