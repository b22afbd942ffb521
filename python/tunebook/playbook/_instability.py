"""Training instability in a study: just above the best learning rate (Figures 7a, 7b)
and early in training at twice it (Figure 5) (playbook, FAQ "How can optimization
failures be debugged and mitigated?" > "Identifying unstable workloads")."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from tunebook.analysis import AnalysisWarning
from tunebook.analysis._trials import check_mode, oriented, trial_views
from tunebook.playbook import _record
from tunebook.playbook._detect import (
    Instability,
    _check_positive_int,
    _check_real,
    _curve_plot_data,
    _CurvePlotData,
    detect_instability,
)


# ------------------------------------------------------------------ a learning-rate sweep


@_record.recordable
class CurveAboveBest(NamedTuple):
    """A trial with a learning rate just above the best one, and what its curve shows.

    Attributes:
        trial: its index.
        learning_rate: its learning rate.
        state: its state ("complete", "infeasible", ...).
        instability: :func:`detect_instability` on its training loss, or None when it
            reported none.
        unstable: whether it shows instability (any event but a lone spike) or is
            infeasible (diverged).
    """

    trial: int
    learning_rate: float
    state: str
    instability: Instability | None
    unstable: bool


@_record.recordable
class LRSweepInstability(NamedTuple):
    """What :func:`lr_sweep_instability` found.

    Attributes:
        lr_param: the learning rate's name in the trials' params.
        metric, mode: the metric that ranks trials.
        group: the hyperparameter values shared by the trials compared (e.g. the optimizer).
        best_trial, best_learning_rate: the best trial and its learning rate, lr*.
        learning_rates, values, feasible, trials: every compared trial (the axis plot,
            Figure 7a): its learning rate, best metric value (NaN if none), whether it
            is feasible, its index.
        above: the trials just above lr* and their curves (Figure 7b).
        unstable: whether any of them shows instability.
        verdict: one paragraph for a person.
        warnings: ``unstable_above_best_lr``, ``best_lr_at_feasibility_edge``,
            ``no_trials_above_best_lr``.
    """

    lr_param: str
    metric: str
    mode: str
    group: dict[str, Any]
    best_trial: int
    best_learning_rate: float
    learning_rates: np.ndarray
    values: np.ndarray
    feasible: np.ndarray
    trials: np.ndarray
    above: tuple[CurveAboveBest, ...]
    unstable: bool
    verdict: str
    warnings: tuple[AnalysisWarning, ...]

    procedure = "lr_sweep_instability"

    def record(self, study: Any, key: str | None = None) -> str:
        """Stores this result with ``study`` for its report (see :func:`tunebook.playbook.record`)."""
        return _record.record(study, self, key)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def lr_sweep_instability(
    study: Any,
    lr_param: str = "learning_rate",
    *,
    metric: str | None = None,
    mode: str | None = None,
    train_metric: str = "train_loss",
    n_above: int = 3,
    max_factor: float = 10.0,
    where: Mapping[str, Any] | None = None,
    record: bool = False,
    **detect: Any,
) -> LRSweepInstability:
    """Is the workload unstable just above its best learning rate?

    The playbook (FAQ "How can optimization failures be debugged and mitigated?" >
    "Identifying unstable workloads", and "Learning rate warmup" > "When to apply
    learning rate warmup", Figures 7a and 7b): do a learning-rate sweep and find the
    best learning rate lr*; plot the training loss of learning rates just above lr*;
    if they show instability (the loss goes up during periods of training), fixing the
    instability will likely give better training. An axis plot whose best learning
    rate sits right at the edge of the feasible region (Figure 7a) is the same sign;
    any workload is unstable at a large enough learning rate, and instability only
    matters when it forces a learning rate that is too small.

    Trials are compared with the best one only when they share its value of every
    non-numeric hyperparameter (Adam's learning rates are not Nesterov's), or, with
    ``where``, the given values. The curves examined are those of the ``n_above``
    trials with the next larger learning rates, up to ``max_factor`` times lr*
    (the playbook looks at 5x to 10x). An infeasible trial there counts as unstable.

    Args:
        study: a :class:`tunebook.Study` or its trials (``study.trials()`` or dicts).
        lr_param: the learning rate's name in the params (default "learning_rate").
        metric, mode: what ranks trials (default: the study's, else valid_loss / min).
        train_metric: the training-loss metric whose curves are examined.
        n_above: how many trials above lr* to examine (default 3).
        max_factor: how far above lr* to look (default 10).
        where: the params the compared trials must have (default: the best trial's
            non-numeric ones).
        record: store the result with ``study`` for its report.
        **detect: thresholds for :func:`detect_instability`.

    Returns:
        A :class:`LRSweepInstability`.

    Raises:
        ValueError: an empty study, no trial with ``lr_param``, no feasible trial, or a
            bad argument.
    """
    is_study = hasattr(study, "trials") and callable(study.trials)
    if record and not is_study:
        raise ValueError("record=True needs a Study, not a list of trials")
    trials = list(study.trials()) if is_study else list(study)
    metric = metric or (getattr(study, "metric", None) if is_study else None) or "valid_loss"
    mode = mode or (getattr(study, "mode", None) if is_study else None) or "min"
    check_mode(mode)
    n_above = _check_positive_int("n_above", n_above)
    max_factor = _check_real("max_factor", max_factor, low=1)
    if not isinstance(lr_param, str) or not lr_param:
        raise ValueError(f"lr_param must be a parameter name, got {lr_param!r}")
    views = trial_views(trials)
    if not views:
        raise ValueError("study has no trials: run the learning-rate sweep first")
    with_lr = [v for v in views if _is_number(v.params.get(lr_param)) and v.params[lr_param] > 0]
    if not with_lr:
        raise ValueError(f"no trial has a positive {lr_param=}; name the learning rate's parameter")
    feasible = [v for v in with_lr if v.feasible]
    if not feasible and where is None:
        raise ValueError(f"study has no feasible trial with {lr_param!r}: lr* is undefined (every trial diverged?)")
    if where is None:
        best = min(feasible, key=lambda v: (oriented(v.value, mode), v.index))
        group = {k: v for k, v in best.params.items() if not _is_number(v) and k != lr_param}
    else:
        if not isinstance(where, Mapping):
            raise ValueError(f"where must be a dict of params, got {where!r}")
        group = dict(where)
    compared = [v for v in with_lr if all(k in v.params and v.params[k] == x for k, x in group.items())]
    mine = [v for v in compared if v.feasible]
    if not mine:
        raise ValueError(f"no feasible trial matches where={group!r}")
    best = min(mine, key=lambda v: (oriented(v.value, mode), v.index))
    lr_best = float(best.params[lr_param])
    compared.sort(key=lambda v: (float(v.params[lr_param]), v.index))
    higher = [v for v in compared if float(v.params[lr_param]) > lr_best]
    nearby = [v for v in higher if float(v.params[lr_param]) <= max_factor * lr_best][:n_above]
    above = []
    for view in nearby:
        steps, losses = view.history(train_metric)
        found = detect_instability(steps, losses, **detect) if steps.size else None
        shaky = found is not None and any(e.kind in ("rise", "nonfinite") for e in found.events)
        above.append(CurveAboveBest(view.index, float(view.params[lr_param]), view.state, found,
                                    bool(view.infeasible or shaky)))
    unstable = any(c.unstable for c in above)
    warnings = []
    label = f"{lr_param}" + "".join(f" | {k}={v}" for k, v in group.items())
    if higher and higher[0].infeasible and float(higher[0].params[lr_param]) <= max_factor * lr_best:
        warnings.append(AnalysisWarning(
            "best_lr_at_feasibility_edge",
            f"the best learning rate {lr_best:.4g} sits at the edge of the feasible region: the next larger one "
            f"tried ({float(higher[0].params[lr_param]):.4g}, trial {higher[0].index}) is infeasible (Figure 7a). "
            "The workload is likely held back by instability: try warmup or gradient clipping.",
            label))
    if not nearby:
        warnings.append(AnalysisWarning(
            "no_trials_above_best_lr",
            f"no trial has a learning rate above lr* = {lr_best:.4g} (within {max_factor:g}x): instability "
            "cannot be judged; extend the search above lr*.",
            label))
    if unstable:
        shaky = [c for c in above if c.unstable]
        warnings.append(AnalysisWarning(
            "unstable_above_best_lr",
            f"{len(shaky)} of {len(above)} learning rates just above lr* = {lr_best:.4g} are unstable "
            f"({', '.join(_curve_text(c) for c in shaky)}): fixing the instability (warmup, clipping) will "
            "likely allow a larger learning rate and better training.",
            label))
    if unstable:
        verdict = (f"Unstable above lr* = {lr_best:.4g} (trial {best.index}): the training loss of "
                   f"{sum(c.unstable for c in above)} of the {len(above)} trials just above it goes up during "
                   "training or diverges. Fixing the instability will likely help.")
    elif above:
        which = "the trial just above it" if len(above) == 1 else f"the {len(above)} trials just above it"
        verdict = (f"Stable above lr* = {lr_best:.4g} (trial {best.index}): {which} (up to "
                   f"{above[-1].learning_rate:.4g}) trained without rises or divergence; instability is not what "
                   "limits the learning rate.")
    else:
        verdict = f"Cannot tell: no trial was run above lr* = {lr_best:.4g} (trial {best.index})."
    values = np.asarray([v.value for v in compared], dtype=np.float64)
    result = LRSweepInstability(
        lr_param, metric, mode, group, best.index, lr_best,
        np.asarray([float(v.params[lr_param]) for v in compared]), values,
        np.asarray([v.feasible for v in compared], dtype=bool), np.asarray([v.index for v in compared], dtype=np.int64),
        tuple(above), unstable, verdict, tuple(warnings))
    if record:
        result.record(study)
    return result


def _curve_text(curve: CurveAboveBest) -> str:
    if curve.instability is None or not curve.instability.events:
        return f"lr {curve.learning_rate:.3g}: {curve.state}"
    event = next((e for e in curve.instability.events if e.kind != "spike"), curve.instability.events[0])
    return f"lr {curve.learning_rate:.3g}: {event.kind} at step {event.step}"


# ------------------------------------------------------------------ the early check


@_record.recordable
class EarlyInstabilityCheck(NamedTuple):
    """What :func:`early_instability_check` found.

    Attributes:
        learning_rate: the learning rate trained at, ``factor * best_learning_rate``.
        best_learning_rate, factor, steps, eval_every: the check's settings.
        evaluations: how many losses were reported.
        instability: :func:`detect_instability` on the reported curve.
        unstable: whether it found any instability.
        verdict: one paragraph for a person.
        warnings: the instability's, plus ``sparse_evaluations``.
    """

    learning_rate: float
    best_learning_rate: float
    factor: float
    steps: int
    eval_every: int
    evaluations: int
    instability: Instability
    unstable: bool
    verdict: str
    warnings: tuple[AnalysisWarning, ...]

    procedure = "early_instability_check"

    def record(self, study: Any, key: str | None = None) -> str:
        """Stores this result with ``study`` for its report (see :func:`tunebook.playbook.record`)."""
        return _record.record(study, self, key)


def early_instability_check(
    train: Callable[[float, int, int, Callable[[int, float], None]], Any],
    best_lr: float,
    *,
    factor: float = 2.0,
    steps: int = 500,
    eval_every: int = 1,
    study: Any = None,
    **detect: Any,
) -> EarlyInstabilityCheck:
    """Train briefly at twice the best learning rate, evaluating every step.

    The playbook (FAQ "How can optimization failures be debugged and mitigated?" >
    "Identifying unstable workloads", Figure 5): some models show very early
    instability followed by a recovery that results in slow but stable training, and
    common evaluation schedules miss it by not evaluating often enough. To check, train
    an abbreviated run of ~500 steps at ``lr = 2 * current best``, evaluating every step.

    Every evaluation is recorded and the curve goes through :func:`detect_instability`
    (every event counts as early: the whole check is the start of training). Plot it on
    a log-step axis (:func:`early_instability_plot`) to see the first steps.

    Args:
        train: ``train(lr, steps, eval_every, report)`` trains a fresh model for
            ``steps`` steps at learning rate ``lr`` and calls ``report(step, loss)``
            every ``eval_every`` steps. It may stop early once the loss is not finite.
        best_lr: the best learning rate found so far, lr*.
        factor: the multiple of lr* to train at, > 1 (default 2).
        steps: how many steps (default 500).
        eval_every: steps between evaluations (default 1: every step).
        study: a :class:`tunebook.Study` to record the result with, for its report.
        **detect: thresholds for :func:`detect_instability` (``early_fraction``
            defaults to 1 here). When ``report`` gives the loss on a fixed evaluation
            set (no minibatch noise), pass ``smooth=1``: a running median lags in the
            steep first steps and would hide a short burst there.

    Returns:
        An :class:`EarlyInstabilityCheck`.

    Raises:
        ValueError: a bad argument, or ``train`` reported nothing.
    """
    if not callable(train):
        raise TypeError(f"train must be a callable train(lr, steps, eval_every, report), got {type(train).__name__}")
    best_lr = _check_real("best_lr", best_lr, low=0)
    factor = _check_real("factor", factor, low=1)
    steps = _check_positive_int("steps", steps)
    eval_every = _check_positive_int("eval_every", eval_every)
    if eval_every > steps:
        raise ValueError(f"{eval_every=} must be <= {steps=}")
    if study is not None:
        _record._check_study(study)
    detect.setdefault("early_fraction", 1.0)
    detect.setdefault("total_steps", steps)
    lr = factor * best_lr
    if not math.isfinite(lr):
        raise ValueError(f"factor * best_lr = {factor!r} * {best_lr!r} overflows: not a learning rate")
    reported: dict[int, float] = {}

    def report(step: int, loss: float) -> None:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"report(step, loss): step={step!r} must be an int")
        reported[int(step)] = float(loss)

    train(lr, steps, eval_every, report)
    if not reported:
        raise ValueError("train reported no losses: it must call report(step, loss) every eval_every steps")
    order = sorted(reported)
    found = detect_instability(order, [reported[s] for s in order], **detect)
    warnings = list(found.warnings)
    expected = steps // eval_every
    if len(order) < 0.5 * expected and not any(e.kind == "nonfinite" for e in found.events):
        warnings.append(AnalysisWarning(
            "sparse_evaluations",
            f"only {len(order)} evaluations were reported, fewer than half of the {expected} expected: the check "
            "needs frequent evaluations to see early instability.",
            "check"))
    every = "every step" if eval_every == 1 else f"every {eval_every} steps"
    head = f"At lr = {factor:g} x {best_lr:.4g} = {lr:.4g}, evaluated {every} for {steps} steps"
    if found.unstable:
        verdict = (f"{head}: early instability. {found.verdict[len('Unstable: '):].capitalize()} "
                   "Common evaluation schedules miss this; learning-rate warmup (warmup_sweep) or gradient "
                   "clipping are the usual fixes.")
    else:
        verdict = f"{head}: stable, no early instability (the loss never rose, spiked or became NaN)."
    result = EarlyInstabilityCheck(lr, best_lr, factor, steps, eval_every, len(order), found, found.unstable,
                                   verdict, tuple(warnings))
    if study is not None:
        result.record(study)
    return result


# ------------------------------------------------------------------ plot data


class _EarlyCheckPlotData(NamedTuple):
    """What the early-instability plot draws: the loss against the step, log x."""

    curve: _CurvePlotData
    title: str
    log_x: bool


def _early_check_plot_data(check: EarlyInstabilityCheck) -> _EarlyCheckPlotData:
    state = "unstable" if check.unstable else "stable"
    title = f"early-instability check: lr = {check.factor:g} x lr* = {check.learning_rate:.3g}: {state}"
    return _EarlyCheckPlotData(_curve_plot_data(f"lr {check.learning_rate:.3g}", check.instability), title, True)


class _LRSweepPlotData(NamedTuple):
    """What the learning-rate sweep plot draws: the axis plot (Figure 7a) and the
    training curves just above lr* (Figure 7b)."""

    lr_param: str
    metric: str
    feasible_lr: np.ndarray
    feasible_values: np.ndarray
    infeasible_lr: np.ndarray
    best_lr: float
    best_value: float
    edge_warning: bool
    curves: tuple[_CurvePlotData, ...]
    title: str


def _lr_sweep_plot_data(result: LRSweepInstability) -> _LRSweepPlotData:
    ok = result.feasible
    best_value = float(result.values[list(result.trials).index(result.best_trial)])
    curves = tuple(_curve_plot_data(f"lr {c.learning_rate:.3g} (trial {c.trial})", c.instability, c.unstable)
                   for c in result.above if c.instability is not None)
    group = "".join(f", {k}={v}" for k, v in result.group.items())
    state = "unstable above" if result.unstable else "stable above"
    title = f"lr* = {result.best_learning_rate:.3g}{group}: {state}"
    return _LRSweepPlotData(result.lr_param, result.metric, result.learning_rates[ok], result.values[ok],
                            result.learning_rates[~ok], result.best_learning_rate, best_value,
                            any(w.code == "best_lr_at_feasibility_edge" for w in result.warnings), curves, title)
