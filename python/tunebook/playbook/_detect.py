"""Instability in one training-loss curve: rises after a decline, non-finite losses and
isolated spikes, early or mid-training (playbook, FAQ "How can optimization failures
be debugged and mitigated?" > "Identifying unstable workloads")."""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Sequence

import numpy as np

from tunebook.analysis import AnalysisWarning
from tunebook.playbook import _record

_NOISE_WINDOW = 101  # evaluations over which the noise is measured
_TREND_SIGMAS = 4.0  # a rise of the trend must exceed this many of its deviations (plus the minimum's bias)
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
    evaluations (see "Noise" below). With :math:`s_0` the starting loss and
    :math:`m_t = \min_{u \le t} s_u` the best so far, the loss is *over the threshold*
    at :math:`t` when

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
    changes from their running median, over 101 evaluations, divided by
    :math:`\sqrt{2}`). The threshold is at least :math:`4 + \sqrt{2 \ln(t + 1)}`
    standard deviations of the trend (the second term is how far below its mean the
    running minimum of :math:`t + 1` noisy values falls), and a spike must stand 6
    standard deviations of the losses above the trend. A loss evaluated exactly on a
    fixed set has no such noise: judge it raw (``smooth=1``), since a running median
    lags in a steep early decline and would hide a short burst there.

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
