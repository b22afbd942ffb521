"""Warmup: the shortest warmup that unlocks a learning rate 10x the unstable one
(playbook, FAQ "How can optimization failures be debugged and mitigated?" > "Learning
rate warmup" > "How to apply learning rate warmup", Figures 6 and 8)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from tunebook.analysis import AnalysisWarning
from tunebook.analysis._trials import trial_views
from tunebook.playbook import _record
from tunebook.playbook._grid import GridSpace
from tunebook.playbook._detect import Instability, detect_instability
from tunebook.schedules import Schedule, ScalarOrSchedule, constant_schedule, linear_warmup

#: The longest warmup the playbook sweeps, as a share of max_train_steps.
MAX_WARMUP_FRACTION = 0.1
#: A warmup longer than this share of max_train_steps may call for more steps.
LONG_WARMUP_FRACTION = 0.05


def _check_steps(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return int(value)


def _check_lr(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive finite learning rate")
    return float(value)


class WarmupSweep(NamedTuple):
    """The plan of a warmup sweep: the study space and each trial's schedule.

    Attributes:
        space: a :class:`GridSpace` with one point per ``warmup_steps``; each point
            holds ``warmup_steps``, ``post_warmup_steps``, ``train_steps`` (their sum:
            how long the trial trains) and the learning rate.
        base_learning_rate: ``factor * unstable_base_learning_rate``.
        unstable_base_learning_rate: the learning rate at which training became unstable.
        factor: the multiple tried (10 by default; 100 for a second round).
        max_train_steps: the baseline's ``max_train_steps``.
        warmup_steps: the warmups swept, shortest first.
        post_warmup_factor: ``post_warmup_steps = post_warmup_factor * warmup_steps``.
        lr_param: the learning rate's name in the params.
        warnings: ``small_factor`` when ``factor < 10``.
    """

    space: GridSpace
    base_learning_rate: float
    unstable_base_learning_rate: float
    factor: float
    max_train_steps: int
    warmup_steps: tuple[int, ...]
    post_warmup_factor: int
    lr_param: str
    warnings: tuple[AnalysisWarning, ...]

    def schedule(self, trial: int | Mapping[str, Any]) -> Schedule:
        """The schedule of one trial (its ``warmup_steps``, or its params): a linear
        ramp from 0 to the base learning rate over ``warmup_steps``, then constant."""
        warmup = trial.get("warmup_steps") if isinstance(trial, Mapping) else trial
        warmup = _check_steps("warmup_steps", warmup, 1)
        return linear_warmup(constant_schedule(self.base_learning_rate), warmup)

    def train_steps(self, trial: int | Mapping[str, Any]) -> int:
        """How long one trial trains: ``warmup_steps + post_warmup_steps``."""
        warmup = trial.get("warmup_steps") if isinstance(trial, Mapping) else trial
        warmup = _check_steps("warmup_steps", warmup, 1)
        return warmup * (1 + self.post_warmup_factor)


def warmup_sweep(
    unstable_base_lr: float,
    max_train_steps: int,
    *,
    factor: float = 10.0,
    warmup_steps: Sequence[int] | None = None,
    post_warmup_factor: int = 2,
    lr_param: str = "learning_rate",
) -> WarmupSweep:
    """Plan the warmup sweep: which warmups to try, at which learning rate, how long.

    The playbook (FAQ "How can optimization failures be debugged and mitigated?" >
    "Learning rate warmup" > "How to apply learning rate warmup"):

    * ``unstable_base_learning_rate`` is the learning rate at which the model becomes
      unstable (see :func:`lr_sweep_instability` and :func:`early_instability_check`);
    * warmup ramps the learning rate from 0 to a ``base_learning_rate`` at least one
      order of magnitude larger: 10x by default (the procedure can be run again at 100x);
    * the schedule ramps up over ``warmup_steps``, then trains at the constant rate for
      ``post_warmup_steps``, usually ``2 * warmup_steps``;
    * ``warmup_steps`` is swept over a few orders of magnitude (e.g. 10, 10^3, 10^4,
      10^5); the largest point should not be more than 10% of ``max_train_steps``.

    Run each point as a trial of a :class:`tunebook.Study` (``space``,
    ``max_trials=space.size``), training ``train_steps`` steps with
    ``sweep.schedule(trial.params)`` and reporting the training loss; a trial that
    blows up is infeasible. Then :func:`shortest_stable_warmup` reads the answer.

    Args:
        unstable_base_lr: the learning rate at which training becomes unstable.
        max_train_steps: the baseline's number of training steps.
        factor: the base learning rate's multiple of ``unstable_base_lr``, > 1
            (default 10).
        warmup_steps: the warmups to try (default: 10, 100, 1000, ... up to 10% of
            ``max_train_steps``).
        post_warmup_factor: ``post_warmup_steps`` as a multiple of ``warmup_steps``
            (default 2).
        lr_param: the learning rate's name in the trials' params.

    Returns:
        A :class:`WarmupSweep`.

    Raises:
        ValueError: ``factor <= 1``, a ``warmup_steps`` over 10% of
            ``max_train_steps``, or another bad argument (the message names it).

    Example:
        >>> sweep = warmup_sweep(0.5, 10_000)
        >>> sweep.base_learning_rate, sweep.warmup_steps, sweep.train_steps(100)
        (5.0, (10, 100, 1000), 300)
    """
    unstable = _check_lr("unstable_base_lr", unstable_base_lr)
    max_train_steps = _check_steps("max_train_steps", max_train_steps, 1)
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not math.isfinite(factor) or factor <= 1:
        raise ValueError(f"{factor=} must be > 1: warmup is for reaching a learning rate above the unstable one "
                         "(the playbook uses 10)")
    post_warmup_factor = _check_steps("post_warmup_factor", post_warmup_factor, 0)
    if not isinstance(lr_param, str) or not lr_param:
        raise ValueError(f"lr_param must be a parameter name, got {lr_param!r}")
    limit = MAX_WARMUP_FRACTION * max_train_steps
    if warmup_steps is None:
        chosen = [10**k for k in range(1, 20) if 10**k <= limit]
        if not chosen:
            raise ValueError(f"{max_train_steps=} is too small for the default warmups: the shortest (10 steps) must "
                             f"be at most 10% of it; pass warmup_steps")
    else:
        if isinstance(warmup_steps, (str, bytes)) or not isinstance(warmup_steps, Sequence) or not warmup_steps:
            raise ValueError(f"warmup_steps must be a non-empty list of step counts, got {warmup_steps!r}")
        chosen = sorted({_check_steps("warmup_steps", w, 1) for w in warmup_steps})
        too_long = [w for w in chosen if w > limit]
        if too_long:
            raise ValueError(f"warmup_steps={too_long} is over 10% of {max_train_steps=} ({limit:g} steps): the "
                             "playbook keeps the longest warmup swept within 10%")
    base = factor * unstable
    if not math.isfinite(base):
        raise ValueError(f"factor * unstable_base_lr = {factor!r} * {unstable!r} overflows: not a learning rate")
    points = [{"warmup_steps": w, "post_warmup_steps": post_warmup_factor * w,
               "train_steps": (1 + post_warmup_factor) * w, lr_param: base} for w in chosen]
    info = {"max_train_steps": max_train_steps, "base_learning_rate": base, "unstable_base_learning_rate": unstable,
            "factor": float(factor), "post_warmup_factor": post_warmup_factor, "lr_param": lr_param}
    space = GridSpace(points, scales={"warmup_steps": "log"} if len(chosen) > 1 else None,
                      procedure="warmup_sweep", info=info)
    warnings = []
    if factor < 10:
        warnings.append(AnalysisWarning(
            "small_factor",
            f"factor={factor:g}: the playbook's base learning rate is at least one order of magnitude (10x) above "
            "the unstable one, so that warmup buys a much higher learning rate.",
            "factor"))
    return WarmupSweep(space, base, unstable, float(factor), max_train_steps, tuple(chosen), post_warmup_factor,
                       lr_param, tuple(warnings))


@_record.recordable
class ShortestStableWarmup(NamedTuple):
    """What :func:`shortest_stable_warmup` found.

    Attributes:
        warmup_steps: the shortest warmup that did not blow up, or None.
        max_train_steps: the baseline's ``max_train_steps``.
        new_max_train_steps: ``max_train_steps + warmup_steps`` (None without an answer).
        base_learning_rate: the learning rate the sweep warmed up to, when known.
        trials, tried, stable, states: every finished trial: its index, warmup, whether
            it trained stably, its state.
        curves: each one's training-loss :class:`Instability` (None without a curve).
        verdict: one paragraph for a person.
        warnings: ``no_stable_warmup``, ``long_warmup``, ``shortest_tried_is_stable``,
            ``longer_warmup_unstable``, ``unfinished_trials``.
    """

    warmup_steps: int | None
    max_train_steps: int
    new_max_train_steps: int | None
    base_learning_rate: float | None
    trials: np.ndarray
    tried: np.ndarray
    stable: np.ndarray
    states: tuple[str, ...]
    curves: tuple[Instability | None, ...]
    verdict: str
    warnings: tuple[AnalysisWarning, ...]

    procedure = "shortest_stable_warmup"

    def record(self, study: Any, key: str | None = None) -> str:
        """Stores this result with ``study`` for its report (see :func:`tunebook.playbook.record`)."""
        return _record.record(study, self, key)


def shortest_stable_warmup(
    study: Any,
    *,
    train_metric: str = "train_loss",
    warmup_param: str = "warmup_steps",
    max_train_steps: int | None = None,
    record: bool = False,
    **detect: Any,
) -> ShortestStableWarmup:
    """The shortest warmup of a warmup sweep that does not blow up training.

    The playbook (FAQ "How can optimization failures be debugged and mitigated?" >
    "Learning rate warmup" > "How to apply learning rate warmup"): the goal is the
    shortest ``warmup_steps`` that gives access to peak learning rates much higher
    than ``unstable_base_learning_rate``. Once a ``warmup_steps`` that does not blow up
    training at ``base_learning_rate`` is found, prepend it to the baseline schedule
    (:func:`with_warmup`), adding its steps to ``max_train_steps``. If a long warmup is
    needed (more than 5% of ``max_train_steps``), ``max_train_steps`` may need to grow.

    A trial is stable when it completed (an infeasible trial blew up) and its
    training loss shows no rise and no non-finite value (:func:`detect_instability`;
    isolated spikes are allowed).

    Args:
        study: the warmup sweep's :class:`tunebook.Study` (from :func:`warmup_sweep`),
            or its trials.
        train_metric: the training-loss metric the trials reported.
        warmup_param: the warmup's name in the params.
        max_train_steps: the baseline's ``max_train_steps`` (default: from the sweep's
            space).
        record: store the result with ``study`` for its report.
        **detect: thresholds for :func:`detect_instability`.

    Returns:
        A :class:`ShortestStableWarmup`.

    Raises:
        ValueError: an empty study, no finished trial, or ``max_train_steps`` unknown.
    """
    is_study = hasattr(study, "trials") and callable(study.trials)
    if record and not is_study:
        raise ValueError("record=True needs a Study, not a list of trials")
    info = (getattr(getattr(study, "space", None), "info", None) or {}) if is_study else {}
    if max_train_steps is None:
        max_train_steps = info.get("max_train_steps")
        if max_train_steps is None:
            raise ValueError("max_train_steps is unknown: pass it, or run the study on warmup_sweep(...).space")
    max_train_steps = _check_steps("max_train_steps", max_train_steps, 1)
    views = trial_views(list(study.trials()) if is_study else list(study))
    if not views:
        raise ValueError("study has no trials: run the warmup sweep first")
    done = [v for v in views if v.state in ("complete", "infeasible") and isinstance(v.params.get(warmup_param), int)]
    if not done:
        raise ValueError(f"study has no finished trial with {warmup_param!r}: run the warmup sweep first")
    done.sort(key=lambda v: (v.params[warmup_param], v.index))
    curves, stable = [], []
    for view in done:
        steps, losses = view.history(train_metric)
        found = detect_instability(steps, losses, **detect) if steps.size else None
        blew_up = view.state != "complete" or (
            found is not None and any(e.kind in ("rise", "nonfinite") for e in found.events))
        curves.append(found)
        stable.append(not blew_up)
    tried = np.asarray([v.params[warmup_param] for v in done], dtype=np.int64)
    stable_array = np.asarray(stable, dtype=bool)
    base = info.get("base_learning_rate")
    warnings = []
    if stable_array.any():
        answer = int(tried[stable_array].min())
        new_max = max_train_steps + answer
        if answer > LONG_WARMUP_FRACTION * max_train_steps:
            warnings.append(AnalysisWarning(
                "long_warmup",
                f"the shortest stable warmup, {answer} steps, is more than 5% of max_train_steps={max_train_steps}: "
                "max_train_steps may need to grow to account for it.",
                warmup_param))
        if answer == int(tried.min()):
            warnings.append(AnalysisWarning(
                "shortest_tried_is_stable",
                f"the shortest warmup tried ({answer} steps) is already stable: a shorter one may do as well; "
                "sweep shorter warmups (or check that the base learning rate really is unstable without warmup).",
                warmup_param))
        unstable_longer = sorted({int(w) for w, ok in zip(tried, stable_array) if w > answer and not ok})
        if unstable_longer:
            warnings.append(AnalysisWarning(
                "longer_warmup_unstable",
                f"longer warmups ({unstable_longer}) blew up where {answer} steps did not: the boundary is noisy; "
                "rerun the sweep with other seeds before trusting it.",
                warmup_param))
        at = f" at base learning rate {base:.4g}" if isinstance(base, (int, float)) else ""
        verdict = (f"Use warmup_steps = {answer}: the shortest warmup that trained stably{at} "
                   f"({int(stable_array.sum())} of {len(done)} warmups were stable). Prepend it to the baseline "
                   f"schedule (with_warmup) and train {max_train_steps} + {answer} = {new_max} steps.")
    else:
        answer = new_max = None
        warnings.append(AnalysisWarning(
            "no_stable_warmup",
            f"every warmup tried (up to {int(tried.max())} steps) blew up: try a smaller factor over the unstable "
            "learning rate, gradient clipping, or the other fixes for instability.",
            warmup_param))
        verdict = f"No warmup of the {len(done)} tried (up to {int(tried.max())} steps) trained stably."
    running = sum(v.state in ("running", "pending") for v in views)
    if running:
        warnings.append(AnalysisWarning(
            "unfinished_trials", f"{running} trials of the sweep are still running: the answer may change.", "study"))
    result = ShortestStableWarmup(answer, max_train_steps, new_max, float(base) if base is not None else None,
                                  np.asarray([v.index for v in done], dtype=np.int64), tried, stable_array,
                                  tuple(v.state for v in done), tuple(curves), verdict, tuple(warnings))
    if record:
        result.record(study)
    return result


class WithWarmup(NamedTuple):
    """The baseline schedule with a warmup prepended (:func:`with_warmup`).

    Attributes:
        schedule: the new schedule.
        max_train_steps: the new ``max_train_steps``: the old one plus the warmup.
        warmup_steps: the warmup prepended.
        warnings: ``long_warmup`` when the warmup is more than 5% of the old
            ``max_train_steps``.
    """

    schedule: Schedule
    max_train_steps: int
    warmup_steps: int
    warnings: tuple[AnalysisWarning, ...]


def with_warmup(schedule: ScalarOrSchedule, warmup_steps: int, max_train_steps: int) -> WithWarmup:
    """Prepend a linear warmup to the baseline schedule and lengthen training by it.

    The playbook (FAQ "How can optimization failures be debugged and mitigated?" >
    "Learning rate warmup" > "How to apply learning rate warmup"): prepend the warmup
    schedule onto the existing one and add its steps: 10,000 ``max_train_steps`` with
    1,000 ``warmup_steps`` train for 11,000 steps in total. The baseline schedule keeps
    its shape and length; it starts where the warmup ends
    (:func:`tunebook.schedules.linear_warmup`).

    Args:
        schedule: the baseline schedule (a float is a constant learning rate).
        warmup_steps: the warmup, e.g. :func:`shortest_stable_warmup`'s answer; at most
            10% of ``max_train_steps``.
        max_train_steps: the baseline's number of steps.

    Returns:
        A :class:`WithWarmup`: the schedule and the new ``max_train_steps``.

    Raises:
        ValueError: ``warmup_steps`` over 10% of ``max_train_steps``, or negative.

    Example:
        >>> from tunebook.schedules import cosine_decay_schedule
        >>> warm = with_warmup(cosine_decay_schedule(0.1, 10_000), 1_000, 10_000)
        >>> warm.max_train_steps, warm.schedule(500), warm.schedule(1_000)
        (11000, 0.05, 0.1)
    """
    max_train_steps = _check_steps("max_train_steps", max_train_steps, 1)
    warmup_steps = _check_steps("warmup_steps", warmup_steps, 0)
    if warmup_steps > MAX_WARMUP_FRACTION * max_train_steps:
        raise ValueError(f"{warmup_steps=} is over 10% of {max_train_steps=}: the playbook's warmups stay within "
                         "10% of training")
    warnings = []
    if warmup_steps > LONG_WARMUP_FRACTION * max_train_steps:
        warnings.append(AnalysisWarning(
            "long_warmup",
            f"warmup_steps={warmup_steps} is more than 5% of max_train_steps={max_train_steps}: max_train_steps may "
            "need to grow beyond the warmup's own steps.",
            "warmup_steps"))
    return WithWarmup(linear_warmup(schedule, warmup_steps), max_train_steps + warmup_steps, warmup_steps,
                      tuple(warnings))


class _WarmupPlotData(NamedTuple):
    """What the warmup plot draws: each warmup's training loss on a log-step axis
    (Figure 6), and stable / blew up against the warmup length with the 5% and 10%
    marks of max_train_steps."""

    curves: tuple[tuple[str, np.ndarray, np.ndarray, bool], ...]  # (label, steps, finite losses, stable)
    tried: np.ndarray
    stable: np.ndarray
    answer: int | None
    long_mark: float
    max_mark: float
    title: str


def _warmup_plot_data(result: ShortestStableWarmup) -> _WarmupPlotData:
    curves = []
    for warmup, ok, found in zip(result.tried, result.stable, result.curves):
        if found is None:
            continue
        finite = np.isfinite(found.losses)
        curves.append((f"warmup {int(warmup)}", found.steps[finite], found.losses[finite], bool(ok)))
    title = (f"shortest stable warmup: {result.warmup_steps} steps" if result.warmup_steps is not None
             else "no stable warmup")
    return _WarmupPlotData(tuple(curves), result.tried, result.stable, result.warmup_steps,
                           LONG_WARMUP_FRACTION * result.max_train_steps, MAX_WARMUP_FRACTION * result.max_train_steps,
                           title)
