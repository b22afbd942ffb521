"""Training instability: find it in a loss curve, in a learning-rate sweep, and early in
training (playbook, FAQ "How can optimization failures be debugged and mitigated?" >
"Identifying unstable workloads", Figures 5, 7a and 7b)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from tunebook.analysis import AnalysisWarning
from tunebook.analysis._trials import check_mode, oriented, trial_views
from tunebook.playbook import _record


_NOISE_WINDOW = 101  # evaluations over which the noise is measured
_TREND_SIGMAS = 4.0  # ... a rise of the trend must exceed this many of its deviations, beyond the minimum's bias
_SPIKE_SIGMAS = 6.0  # a single loss must exceed the trend by this many of the losses' deviations


@_record.recordable
class InstabilityEvent(NamedTuple):
    """One instability found in a loss curve.

    Attributes:
        kind: ``"nonfinite"`` (NaN or infinity), ``"rise"`` (the loss climbs above its
            best so far and stays there for a window of evaluations) or ``"spike"``
            (it jumps and comes straight back).
        step: where it began: for a rise, the start of the trend's climb that crossed
            the threshold (where the loss turned); for a spike, its first step; for a
            non-finite loss, its step.
        phase: ``"early"`` (initialisation / warmup) or ``"mid"`` (mid-training), by ``step``.
        detected_step: the first step over the threshold (the first non-finite one).
        peak_step: the step of its highest loss (``step`` for a non-finite loss).
        peak_loss: that loss (NaN or inf for a non-finite one).
        end_step: the first step back under the threshold, or None when it never came
            back (or the curve ends).
        declined_first: whether the loss had declined before (the playbook's "rise
            after a steady decline", Figure 7b) rather than rising from the start.
    """

    kind: str
    step: int
    phase: str
    detected_step: int
    peak_step: int
    peak_loss: float
    end_step: int | None
    declined_first: bool


@_record.recordable
class Instability(NamedTuple):
    """What :func:`detect_instability` found in one loss curve.

    Attributes:
        steps, losses: the curve, sorted by step.
        trend: the running median of the losses (the curve the rises are judged on);
            NaN from the first non-finite loss on.
        events: every :class:`InstabilityEvent`, in order.
        unstable: whether there is any event.
        phase: the first event's phase, or "".
        began: the first event's step, or None.
        verdict: one sentence for a person.
        warnings: ``nonfinite_loss``, ``loss_rises``, ``loss_spikes``.
        rise, give_back, window, smooth, spike, early_fraction, total_steps: the
            thresholds used.
    """

    steps: np.ndarray
    losses: np.ndarray
    trend: np.ndarray
    events: tuple[InstabilityEvent, ...]
    unstable: bool
    phase: str
    began: int | None
    verdict: str
    warnings: tuple[AnalysisWarning, ...]
    rise: float = 0.1
    give_back: float = 0.05
    window: int = 3
    smooth: int = 5
    spike: float = 2.0
    early_fraction: float = 0.1
    total_steps: int = 0


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return int(value)


def _check_real(name: str, value: Any, *, low: float, low_open: bool = True, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if (value <= low if low_open else value < low) or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name}={value!r} must be {bound}" + (f" and <= {high}" if high < math.inf else ""))
    return float(value)


def _running_median(values: np.ndarray, width: int) -> np.ndarray:
    """The centred running median over ``width`` points (narrower at the ends: only the
    points that exist count)."""
    half = width // 2
    if half == 0 or values.size <= 1:
        return values.astype(np.float64, copy=True)
    padded = np.pad(values.astype(np.float64), half, mode="constant", constant_values=np.nan)
    return np.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` index ranges of the True runs of ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def detect_instability(
    steps: Sequence[int] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    *,
    rise: float = 0.1,
    give_back: float = 0.05,
    window: int = 3,
    smooth: int = 5,
    spike: float = 2.0,
    early_fraction: float = 0.1,
    total_steps: int | None = None,
) -> Instability:
    r"""Find the instabilities in a training-loss curve.

    The playbook (FAQ "How can optimization failures be debugged and mitigated?" >
    "Identifying unstable workloads"): a workload is unstable when its loss goes up, not
    down, during periods of training; a sudden rise after a steady decline (Figure 7b)
    is the sign. It tells two kinds apart, instability at initialisation or early in
    training and sudden instability in the middle of training, and warns that outlier
    gradients cause spurious spikes.

    The curve is judged on its trend :math:`s_t`, a running median over ``smooth``
    evaluations (one noisy evaluation moves it little; see below). With :math:`s_0` the starting
    loss and :math:`m_t = \min_{u \le t} s_u` the best so far, the loss is *over the
    threshold* at :math:`t` when

    .. math:: s_t - m_t > \max\big(\text{rise} \cdot |m_t|,\ \text{give\_back} \cdot (s_0 - m_t)\big)

    i.e. it climbed more than 10% (``rise``) above its best so far *and* gave back more
    than 5% (``give_back``) of the progress made; the second term keeps noise on a
    loss near zero from counting. Then:

    * **nonfinite**: the first NaN or infinite loss (the curve is judged up to it);
    * **rise**: over the threshold for at least ``window`` consecutive evaluations, or
      from some point to the end of the curve (at least 2 evaluations). It began where
      the trend's climb started (the last step before it at which the trend stopped
      falling);
    * **spike**: a shorter excursion, or a single loss at least ``spike`` times the
      trend and more than the threshold above every loss before it.

    Noise: the running median keeps one noisy evaluation from counting, and the noise
    is measured locally (1.4826 x the median absolute deviation of the step-to-step
    changes from their running median, over 101 evaluations, divided by the square root
    of 2): the threshold is at least
    :math:`4 + \sqrt{2 \ln(t + 1)}` standard deviations of the trend (the second term
    is how far below its mean the running minimum of :math:`t + 1` noisy values
    falls), and a spike must stand 6 standard deviations of the losses above it. A loss evaluated exactly on a fixed set has no such noise: judge it raw
    (``smooth=1``), since a running median lags in a steep early decline and would
    hide a short burst there.

    An event is *early* when it begins within the first ``early_fraction`` of
    ``total_steps``, else *mid*-training.

    Args:
        steps: the steps of the evaluations (strictly increasing integers).
        losses: the training loss at each (lower is better).
        rise: the climb above the best loss so far, relative to it, that counts
            (default 0.1).
        give_back: the share of the progress so far that a climb must also give back
            (default 0.05).
        window: evaluations a rise must last (default 3).
        smooth: the running median's width in evaluations (default 5; 1 for none, for
            a loss evaluated exactly on a fixed set).
        spike: how many times the trend a single loss must reach to be a spike
            (default 2).
        early_fraction: the share of training that counts as early (default 0.1).
        total_steps: the planned length of training (default: the last step).

    Returns:
        An :class:`Instability`.

    Raises:
        ValueError: empty or mismatched curves, steps not increasing, bad thresholds.

    Example:
        >>> steps = list(range(100))
        >>> losses = [2.0 - 0.015 * s if s <= 60 else 1.1 + 0.05 * (s - 60) for s in steps]
        >>> found = detect_instability(steps, losses)
        >>> found.unstable, found.events[0].kind, found.phase, found.began
        (True, 'rise', 'mid', 60)
    """
    steps_array = np.asarray(steps)
    losses_array = np.asarray(losses, dtype=np.float64)
    if steps_array.ndim != 1 or losses_array.ndim != 1:
        raise ValueError("steps and losses must be 1-D sequences")
    if steps_array.size != losses_array.size:
        raise ValueError(f"steps and losses must have the same length, got {steps_array.size} and {losses_array.size}")
    if steps_array.size == 0:
        raise ValueError("losses must not be empty: the curve needs at least one evaluation")
    if not np.issubdtype(steps_array.dtype, np.integer):
        as_float = steps_array.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise ValueError("steps must be integers")
    steps_array = steps_array.astype(np.int64)
    if np.any(np.diff(steps_array) <= 0):
        raise ValueError("steps must be strictly increasing")
    rise = _check_real("rise", rise, low=0)
    give_back = _check_real("give_back", give_back, low=0, low_open=False, high=1)
    window = _check_positive_int("window", window)
    smooth = _check_positive_int("smooth", smooth)
    spike = _check_real("spike", spike, low=1)
    early_fraction = _check_real("early_fraction", early_fraction, low=0, low_open=False, high=1)
    total = int(steps_array[-1]) if total_steps is None else _check_positive_int("total_steps", total_steps)

    def phase_of(step: int) -> str:
        return "early" if step <= early_fraction * total else "mid"

    finite = np.isfinite(losses_array)
    cut = int(np.argmin(finite)) if not finite.all() else losses_array.size
    head = losses_array[:cut]
    trend = np.full(losses_array.size, np.nan)
    events: list[InstabilityEvent] = []
    if cut:
        s = _running_median(head, smooth)
        trend[:cut] = s
        best, tolerance = _tolerance(s, rise, give_back)
        # The noise around the trend, locally: the trend and its running minimum move
        # with it, so a rise (or a spike) must also stand out of it.
        noise = _local_noise(head) if smooth > 1 else np.zeros(cut)
        # The running minimum of n noisy values sits about sqrt(2 ln n) deviations low.
        sigmas = _TREND_SIGMAS + np.sqrt(2 * np.log(np.arange(1, cut + 1)))
        tolerance = np.maximum(tolerance, sigmas * 1.2533 * noise / math.sqrt(smooth))
        over = s - best > tolerance
        declined = s[0] - best > rise * np.abs(best)
        sustained = np.zeros(cut, dtype=bool)
        short = np.zeros(cut, dtype=bool)
        for start, end in _runs(over):
            length = end - start
            if length >= window or (end == cut and length >= min(2, window)):
                sustained[start:end] = True
                began = start
                while began > 0 and s[began - 1] < s[began]:
                    began -= 1  # back to where the trend's climb started
                peak = start + int(np.argmax(s[start:end]))
                events.append(InstabilityEvent(
                    "rise", int(steps_array[began]), phase_of(int(steps_array[began])), int(steps_array[start]),
                    int(steps_array[peak]), float(head[peak]), int(steps_array[end]) if end < cut else None,
                    bool(declined[start])))
            else:
                short[start:end] = True
        # A spike stands above every loss before it (the trend is centred: it already
        # knows of a drop to come), above the trend, and out of the noise.
        before = np.concatenate([[np.inf], np.minimum.accumulate(head)[:-1]])
        jumps = (head - before > tolerance) & (head >= spike * s) & (head - s > _SPIKE_SIGMAS * noise)
        for start, end in _runs((short | jumps) & ~sustained):
            peak = start + int(np.argmax(head[start:end]))
            events.append(InstabilityEvent(
                "spike", int(steps_array[start]), phase_of(int(steps_array[start])), int(steps_array[start]),
                int(steps_array[peak]), float(head[peak]), int(steps_array[end]) if end < cut else None,
                bool(declined[start])))
    if cut < losses_array.size:
        step = int(steps_array[cut])
        events.append(InstabilityEvent("nonfinite", step, phase_of(step), step, step, float(losses_array[cut]),
                                       None, bool(cut and head[0] - head.min() > rise * abs(head.min()))))
    events.sort(key=lambda e: (e.step, e.kind))
    warnings = _event_warnings(events)
    first = events[0] if events else None
    verdict = _describe(events) if events else (
        f"Stable: over {steps_array.size} evaluations (steps {int(steps_array[0])} to {int(steps_array[-1])}) "
        "the loss stayed finite and never climbed back over the threshold.")
    return Instability(steps_array, losses_array, trend, tuple(events), bool(events),
                       first.phase if first else "", first.step if first else None, verdict, tuple(warnings),
                       rise, give_back, window, smooth, spike, early_fraction, total)


def _local_noise(values: np.ndarray) -> np.ndarray:
    """The standard deviation of the noise on ``values``, locally: from the step-to-step
    changes (the trend's own slope removed by their running median), robustly, so that
    neither a smooth decline nor a few outliers count as noise."""
    if values.size < 3:
        return np.zeros(values.size)
    changes = np.diff(values)
    spread = np.abs(changes - _running_median(changes, _NOISE_WINDOW))
    scale = 1.4826 * _running_median(spread, _NOISE_WINDOW) / math.sqrt(2)
    return np.concatenate([scale[:1], scale])


def _tolerance(trend: np.ndarray, rise: float, give_back: float) -> tuple[np.ndarray, np.ndarray]:
    """The best trend so far and the threshold above it (see :func:`detect_instability`)."""
    best = np.minimum.accumulate(trend)
    return best, np.maximum(rise * np.abs(best), give_back * (trend[0] - best))


def _event_text(event: InstabilityEvent) -> str:
    where = f"{'early in training' if event.phase == 'early' else 'in mid-training'}, at step {event.step}"
    if event.kind == "nonfinite":
        return f"the loss became {event.peak_loss} {where}"
    back = f", back down by step {event.end_step}" if event.end_step is not None else ", and it did not come back"
    if event.kind == "rise":
        how = "after declining" if event.declined_first else "from the start"
        return (f"the loss rose {how} {where} (over the threshold from step {event.detected_step}, peak "
                f"{event.peak_loss:.4g} at step {event.peak_step}{back})")
    return f"the loss spiked {where} (to {event.peak_loss:.4g}{back})"


def _describe(events: Sequence[InstabilityEvent]) -> str:
    text = "; ".join(_event_text(e) for e in events[:3])
    more = f"; and {len(events) - 3} more" if len(events) > 3 else ""
    return f"Unstable: {text}{more}."


def _event_warnings(events: Sequence[InstabilityEvent]) -> list[AnalysisWarning]:
    warnings = []
    for kind, code, advice in (
        ("nonfinite", "nonfinite_loss", "the run diverged: apply learning-rate warmup (early) or gradient "
                                        "clipping, or lower the learning rate as a last resort"),
        ("rise", "loss_rises", "fixing the instability will likely allow a better result: warmup for early "
                               "instability, gradient clipping for either kind"),
        ("spike", "loss_spikes", "outlier gradients cause spikes: log the gradient norm and clip just above "
                                 "its typical value (the 90th percentile)"),
    ):
        mine = [e for e in events if e.kind == kind]
        if mine:
            phases = sorted({e.phase for e in mine})
            warnings.append(AnalysisWarning(code, f"{_event_text(mine[0])}" + (
                f" ({len(mine)} times)" if len(mine) > 1 else "") + f" [{'/'.join(phases)}]: {advice}.", "loss"))
    return warnings


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


class _CurvePlotData(NamedTuple):
    """One loss curve to draw, with its instability markers."""

    label: str
    steps: np.ndarray
    losses: np.ndarray  # non-finite values dropped
    trend: np.ndarray
    event_steps: np.ndarray
    event_losses: np.ndarray
    event_kinds: tuple[str, ...]
    diverged_at: int | None  # the first non-finite step, drawn as a red x on the top edge
    unstable: bool


def _curve_plot_data(label: str, found: Instability, unstable: bool | None = None) -> _CurvePlotData:
    finite = np.isfinite(found.losses)
    kinds = tuple(e.kind for e in found.events if e.kind != "nonfinite")
    marks = [e for e in found.events if e.kind != "nonfinite"]
    at = {int(s): float(v) for s, v in zip(found.steps, found.losses)}
    diverged = next((e.step for e in found.events if e.kind == "nonfinite"), None)
    return _CurvePlotData(label, found.steps[finite], found.losses[finite], found.trend[finite],
                          np.asarray([e.step for e in marks], dtype=np.int64),
                          np.asarray([at.get(e.step, np.nan) for e in marks], dtype=np.float64),
                          kinds, diverged, found.unstable if unstable is None else unstable)


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
