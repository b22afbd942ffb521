"""Training curves of the best trials, with the playbook's automatic diagnoses."""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple

import numpy as np

from tunebook.analysis._trials import oriented, trial_views
from tunebook.analysis._warnings import AnalysisWarning


class Curve(NamedTuple):
    """One trial's curves: ``(steps, values)`` of the training and validation metrics."""

    trial: int
    params: dict
    train_steps: np.ndarray
    train_values: np.ndarray
    valid_steps: np.ndarray
    valid_values: np.ndarray


class TrainingCurvesData(NamedTuple):
    """The best trials' curves and what the diagnoses found in them."""

    train_metric: str
    valid_metric: str
    mode: str
    curves: tuple[Curve, ...]
    warnings: tuple[AnalysisWarning, ...]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends (no padding bias)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size < 3:
        return values.copy()
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(values.size)
    lo = np.maximum(index - half, 0)
    hi = np.minimum(index + half + 1, values.size)
    return (sums[hi] - sums[lo]) / (hi - lo)


def diagnose_curves(
    train_steps: Any,
    train_values: Any,
    valid_steps: Any,
    valid_values: Any,
    *,
    mode: str = "min",
    train_mode: str | None = None,
    subject: str = "",
    overfit_tolerance: float = 0.1,
    variance_tolerance: float = 0.1,
    improving_tolerance: float = 0.02,
    saturation_tolerance: float = 0.02,
    saturated_by: float = 0.5,
) -> list[AnalysisWarning]:
    r"""The playbook's checks on one trial's training and validation curves.

    Values are oriented so that lower is better, smoothed with a centred moving average
    (window = a tenth of the evaluations), and compared with the total improvement
    :math:`\Delta = \bar v_0 - \min_i \bar v_i` of the smoothed validation curve
    :math:`\bar v`. With :math:`i^*` the position of that minimum:

    * ``overfitting``: the validation curve ends more than ``overfit_tolerance``
      :math:`\cdot\Delta` above its best, while the training curve fell after
      :math:`i^*`. Problematic overfitting: regularise or tune regularisers.
    * ``high_variance``: the residuals of the validation curve around its smoothed
      version, over the second half, have a standard deviation above
      ``variance_tolerance`` :math:`\cdot\Delta` (the same check runs on the training
      curve). Such noise hurts reproducibility: raise the batch size, decay the
      learning rate, or average weights (Polyak).
    * ``still_improving``: over the last 20% of steps the smoothed validation curve
      improved by more than ``improving_tolerance`` :math:`\cdot\Delta` and its best is in
      the last 10%: compute-bound, train longer.
    * ``saturated_early``: the smoothed validation curve was within
      ``saturation_tolerance`` :math:`\cdot\Delta` of its best by ``saturated_by`` of the
      steps and never much better after: fewer steps would do.

    ``mode`` is the validation metric's direction, ``train_mode`` the training
    metric's (default: the same).

    Returns:
        A list of :class:`AnalysisWarning` (empty when the curves look healthy or are
        too short to judge: fewer than 5 validation points).
    """
    ts, tv = np.asarray(train_steps, dtype=np.float64), oriented(np.asarray(train_values, dtype=np.float64), train_mode or mode)
    vs, vv = np.asarray(valid_steps, dtype=np.float64), oriented(np.asarray(valid_values, dtype=np.float64), mode)
    keep = np.isfinite(vv)
    vs, vv = vs[keep], vv[keep]
    keep = np.isfinite(tv)
    ts, tv = ts[keep], tv[keep]
    if vv.size < 5:
        return []
    who = f"{subject}: " if subject else ""
    found = []
    window = max(1, vv.size // 10)
    sv = smooth(vv, window)
    best = int(np.argmin(sv))
    delta = sv[0] - sv[best]
    span = float(np.ptp(sv))
    scale = delta if delta > 0 else span
    if scale <= 0 or not math.isfinite(scale):
        return []
    first, last = vs[0], vs[-1]
    length = max(last - first, 1.0)
    sign = 1.0 if mode == "min" else -1.0

    overfit = False
    if ts.size >= 3 and best < vv.size - 1:
        st = smooth(tv, max(1, ts.size // 10))
        rise = sv[-1] - sv[best]
        at_best = np.interp(vs[best], ts, st)
        train_fell = at_best - st[-1] > 0.01 * max(float(np.ptp(st)), 1e-12)
        if rise > overfit_tolerance * scale and train_fell:
            overfit = True
            found.append(AnalysisWarning(
                "overfitting",
                f"{who}validation fell to {sign * sv[best]:.4g} at step {int(vs[best])}, then rose to "
                f"{sign * sv[-1]:.4g} by step {int(last)} while training kept improving: problematic "
                "overfitting; add or tune regularisation (weight decay, dropout, label smoothing, "
                "augmentation) as nuisance hyperparameters.",
                subject,
            ))

    for name, steps, values in (("validation", vs, vv), ("training", ts, tv)):
        if values.size < 10:
            continue
        trend = smooth(values, max(3, values.size // 10))
        half = values.size // 2
        noise = float(np.std(values[half:] - trend[half:]))
        if noise > variance_tolerance * scale:
            found.append(AnalysisWarning(
                "high_variance",
                f"{who}the {name} curve varies a lot from step to step (residual std {noise:.3g}, "
                f"{noise / scale:.0%} of its total improvement) in its second half: results will be hard "
                "to reproduce; increase the batch size, decay the learning rate, or average the weights.",
                subject,
            ))

    tail_start = last - 0.2 * length
    recent_gain = float(np.interp(tail_start, vs, sv) - sv[-1])
    best_in_tail = vs[best] >= last - 0.1 * length
    if best_in_tail and recent_gain > improving_tolerance * scale:
        found.append(AnalysisWarning(
            "still_improving",
            f"{who}validation was still improving at the end ({recent_gain / scale:.0%} of its total "
            "gain came in the last 20% of steps): the run is compute-bound, train longer.",
            subject,
        ))
    elif not overfit:
        close = np.flatnonzero(sv <= sv[best] + saturation_tolerance * scale)
        reached = vs[close[0]]
        if reached <= first + saturated_by * length:
            found.append(AnalysisWarning(
                "saturated_early",
                f"{who}validation was within {saturation_tolerance:.0%} of its best by step {int(reached)} "
                f"({(reached - first) / length:.0%} of training) and gained little after: fewer steps "
                "would do.",
                subject,
            ))
    return found


def training_curves_data(
    trials: Iterable[Any],
    *,
    train_metric: str = "train_loss",
    valid_metric: str = "valid_loss",
    mode: str = "min",
    train_mode: str | None = None,
    top: int = 3,
    **thresholds: float,
) -> TrainingCurvesData:
    """The curves of the ``top`` best feasible trials, each diagnosed by
    :func:`diagnose_curves` (extra keyword arguments are its thresholds).

    ``mode`` ranks the trials by the validation metric; ``train_mode`` is the training
    metric's direction (default: ``mode``). Curves missing a metric come back empty.
    """
    if int(top) != top or top < 1:
        raise ValueError(f"{top=} must be a positive integer")
    views = [t for t in trial_views(trials) if t.feasible and t.kind != "replicate"]
    views.sort(key=lambda t: (oriented(t.value, mode), t.index))
    curves, warnings = [], []
    for trial in views[:top]:
        train_steps, train_values = trial.history(train_metric)
        valid_steps, valid_values = trial.history(valid_metric)
        curves.append(Curve(trial.index, dict(trial.params), train_steps, train_values, valid_steps, valid_values))
        warnings.extend(diagnose_curves(train_steps, train_values, valid_steps, valid_values,
                                        mode=mode, train_mode=train_mode, subject=f"trial {trial.index}",
                                        **thresholds))
    return TrainingCurvesData(train_metric, valid_metric, mode, tuple(curves), tuple(warnings))
