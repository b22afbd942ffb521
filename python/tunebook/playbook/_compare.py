"""Adopting a change: is the candidate better than the baseline, beyond the retrain noise?

The playbook's rule: if the candidate is better after accounting for the retrain
variance of both, adopt it as the new baseline. It also warns against demanding
certainty, and against adopting changes whose gain does not outweigh the complexity
they add. :func:`compare` applies the rule to two trials, each with its replicates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from tunebook.analysis._warnings import AnalysisWarning
from tunebook.playbook._variance import TrialVariance, trial_variance, variance_of_values

ADOPT = "adopt"
NO_DIFFERENCE = "no detectable difference"
WORSE = "worse"
TOO_FEW = "too few replicates"
VERDICTS = (ADOPT, NO_DIFFERENCE, WORSE, TOO_FEW)

CAVEAT = (
    "The playbook adopts a change that wins after accounting for the retrain variance of both sides; it does not "
    "demand certainty, and it keeps a change only if its gain outweighs the complexity the change adds."
)


class Comparison(NamedTuple):
    """The verdict on a candidate against a baseline.

    Attributes:
        baseline, candidate: each side's :class:`TrialVariance` (its replicates).
        metric, mode: the metric compared and its direction.
        difference: ``candidate.mean - baseline.mean``, in the metric's units.
        improvement: the same difference oriented so that positive means the
            candidate is better (``-difference`` for mode "min").
        relative: ``improvement / |baseline.mean|`` (NaN for a zero baseline).
        uncertainty: the standard error of the difference from both trial variances,
            ``sqrt(s_b^2 / n_b + s_c^2 / n_c)``.
        interval: the ``confidence`` interval of ``improvement`` (Welch's t).
        confidence: its level.
        verdict: "adopt", "no detectable difference", "worse" or "too few replicates".
        rerun_n: with "too few replicates": the replicates per side to rerun with
            (``study.rerun(trial, n=rerun_n)``); else None.
        message: the verdict in words, with its caveat.
        warnings: the replicates' warnings (unstable, pending, few).
    """

    baseline: TrialVariance
    candidate: TrialVariance
    metric: str
    mode: str
    difference: float
    improvement: float
    relative: float
    uncertainty: float
    interval: tuple[float, float]
    confidence: float
    verdict: str
    rerun_n: int | None
    message: str
    warnings: tuple[AnalysisWarning, ...]

    def __str__(self) -> str:
        return self.message


def _side(value: Any, argument: str, include_original: bool, mode: str | None) -> TrialVariance:
    if isinstance(value, TrialVariance):
        return value
    if hasattr(value, "trials") and callable(value.trials):  # a Study: its best trial
        best = value.best_trial()
        if best is None:
            raise ValueError(f"{argument}: study {value.name!r} has no trial with a finite value to compare")
        return trial_variance(value, best.index, include_original=include_original)
    if isinstance(value, tuple) and len(value) == 2 and hasattr(value[0], "trials"):
        return trial_variance(value[0], value[1], include_original=include_original)
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        try:
            return variance_of_values(value, mode=mode or "min")
        except (TypeError, ValueError):
            pass
    raise ValueError(
        f"{argument} must be a Study (its best trial), a (study, trial_index) pair, a TrialVariance or a "
        f"sequence of replicate values, got {type(value).__name__}"
    )


def _t(level: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(level, df))


def _welch_df(sb2: float, nb: int, sc2: float, nc: int) -> float:
    a, b = sb2 / nb, sc2 / nc
    if a + b == 0.0:
        return float(nb + nc - 2)
    return (a + b) ** 2 / (a * a / (nb - 1) + b * b / (nc - 1))


def replicates_needed(
    improvement: float, std_baseline: float, std_candidate: float, *, confidence: float, power: float = 0.8,
    limit: int = 1000,
) -> int | None:
    r"""The replicates per side that would tell an ``improvement`` apart from zero with
    probability ``power``, if the standard deviations are what they seem:

    .. math:: n = \min\{n : (t_{1-\alpha/2,\,\nu} + t_{\text{power},\,\nu}) \sqrt{(s_b^2 + s_c^2)/n} \le |d|\},

    with Welch's degrees of freedom :math:`\nu` for ``n`` per side. None beyond ``limit``.
    """
    if improvement == 0.0 or not math.isfinite(improvement):
        return None
    total = std_baseline**2 + std_candidate**2
    if total == 0.0:
        return 2
    for n in range(2, limit + 1):
        df = _welch_df(std_baseline**2, n, std_candidate**2, n)
        if (_t(1 - (1 - confidence) / 2, df) + _t(power, df)) * math.sqrt(total / n) <= abs(improvement):
            return n
    return None


def compare(
    baseline: Any,
    candidate: Any,
    *,
    confidence: float = 0.9,
    min_replicates: int = 3,
    max_replicates: int = 20,
    include_original: bool = False,
    mode: str | None = None,
) -> Comparison:
    r"""Should the candidate replace the baseline? The playbook's rule, with its caveat.

    Each side is a trial with its replicates (:meth:`tunebook.Study.rerun`): their
    best-checkpoint values measure what retraining the configuration gives. With means
    :math:`m_b, m_c`, standard deviations :math:`s_b, s_c` and counts :math:`n_b, n_c`,
    the improvement :math:`d` (positive: the candidate is better) has the standard error
    :math:`u = \sqrt{s_b^2/n_b + s_c^2/n_c}` and the Welch interval
    :math:`d \pm t_{1-\alpha/2,\nu}\,u`. The verdict:

    * **adopt**: the interval lies above zero: better beyond the retrain variance;
    * **worse**: the interval lies below zero;
    * **too few replicates**: a side has fewer than ``min_replicates``, or the
      interval holds zero but ``rerun_n <= max_replicates`` replicates per side would
      likely (80% power) decide: "rerun with n=... to decide", instead of guessing;
    * **no detectable difference**: the interval holds zero and even
      ``max_replicates`` replicates would likely not tell them apart: keep the simpler.

    ``confidence`` defaults to 0.9 (a one-sided 95% that the candidate is better): the
    playbook warns against demanding certainty.

    Args:
        baseline, candidate: a :class:`tunebook.Study` (its best trial), a
            ``(study, trial_index)`` pair, a :class:`TrialVariance`, or a sequence of
            replicate values.
        confidence: the interval's level, in (0, 1).
        min_replicates: fewer finished replicates on a side means "too few", >= 2.
        max_replicates: the most replicates per side worth asking for.
        include_original: also count each trial's own value (see
            :func:`trial_variance`: off, because the best trial of a search is lucky).
        mode: "min" or "max" for values given directly (studies carry their own).

    Raises:
        ValueError: arguments of the wrong kind or range, an unknown trial, or two
            studies measuring different metrics or directions.
    """
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if isinstance(min_replicates, bool) or not isinstance(min_replicates, int) or min_replicates < 2:
        raise ValueError(f"min_replicates must be an integer >= 2, got {min_replicates!r}")
    if isinstance(max_replicates, bool) or not isinstance(max_replicates, int) or max_replicates < min_replicates:
        raise ValueError(f"max_replicates must be an integer >= min_replicates={min_replicates}, got {max_replicates!r}")
    if mode is not None and mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    base = _side(baseline, "baseline", include_original, mode)
    cand = _side(candidate, "candidate", include_original, mode)
    if base.study and cand.study and (base.metric, base.mode) != (cand.metric, cand.mode):
        raise ValueError(
            f"baseline measures {base.metric} ({base.mode}) and candidate {cand.metric} ({cand.mode}): "
            "compare trials of the same metric and direction"
        )
    metric = base.metric if base.study else cand.metric
    the_mode = base.mode if base.study else cand.mode
    sign = -1.0 if the_mode == "min" else 1.0
    difference = cand.mean - base.mean if base.n and cand.n else math.nan
    improvement = sign * difference
    relative = improvement / abs(base.mean) if base.n and base.mean != 0 else math.nan
    warnings = (*base.warnings, *cand.warnings)
    enough = base.n >= 2 and cand.n >= 2
    uncertainty = math.sqrt(base.std**2 / base.n + cand.std**2 / cand.n) if enough else math.nan
    interval = (math.nan, math.nan)
    needed = None
    if enough:
        df = _welch_df(base.std**2, base.n, cand.std**2, cand.n)
        half = _t(1 - (1 - confidence) / 2, df) * uncertainty
        interval = (improvement - half, improvement + half)
        needed = replicates_needed(improvement, base.std, cand.std, confidence=confidence, limit=max_replicates)
    if base.n < min_replicates or cand.n < min_replicates:
        verdict, rerun_n = TOO_FEW, min(max(min_replicates, needed or 0), max_replicates)
    elif interval[0] > 0:
        verdict, rerun_n = ADOPT, None
    elif interval[1] < 0:
        verdict, rerun_n = WORSE, None
    elif needed is not None and needed > min(base.n, cand.n):
        verdict, rerun_n = TOO_FEW, needed
    else:
        verdict, rerun_n = NO_DIFFERENCE, None
    message = _message(base, cand, metric, verdict, rerun_n, improvement, relative, uncertainty, interval, confidence,
                       max_replicates)
    return Comparison(base, cand, metric, the_mode, difference, improvement, relative, uncertainty, interval,
                      float(confidence), verdict, rerun_n, message, warnings)


def _name(side: TrialVariance, fallback: str) -> str:
    return f"{side.study}:{side.trial}" if side.study else fallback


def _message(base: TrialVariance, cand: TrialVariance, metric: str, verdict: str, rerun_n: int | None,
             improvement: float, relative: float, uncertainty: float, interval: tuple[float, float],
             confidence: float, max_replicates: int) -> str:
    b, c = _name(base, "baseline"), _name(cand, "candidate")
    lines = [f"baseline  {b}: {_spread(base, metric)}", f"candidate {c}: {_spread(cand, metric)}"]
    if math.isfinite(uncertainty):
        gain = f"{improvement:+.4g}" + (f" ({relative:+.1%})" if math.isfinite(relative) else "")
        lines.append(f"improvement {gain} ± {uncertainty:.2g} (standard error from both trial variances; "
                     f"{confidence:.0%} interval {interval[0]:+.4g} .. {interval[1]:+.4g})")
    if verdict == ADOPT:
        lines.append(f"verdict: adopt. {c} is better than {b} beyond the retrain variance. Adopt it as the new "
                     "baseline if its gain is worth the complexity it adds.")
    elif verdict == WORSE:
        lines.append(f"verdict: worse. {c} is worse than {b} beyond the retrain variance: keep the baseline.")
    elif verdict == NO_DIFFERENCE:
        lines.append(f"verdict: no detectable difference. Even {max_replicates} replicates per side would "
                     "likely not tell them apart: keep the simpler of the two.")
    else:
        lines.append(f"verdict: too few replicates. Rerun with n={rerun_n} to decide "
                     f"(study.rerun(trial, n={rerun_n}) on each side).")
    lines.append(CAVEAT)
    return "\n".join(lines)


def _spread(side: TrialVariance, metric: str) -> str:
    if side.n == 0:
        return f"no finished replicate ({metric})"
    if side.n == 1:
        return f"{metric} {side.mean:.5g} (1 replicate)"
    return f"{metric} {side.mean:.5g} ± {side.std:.2g} (mean ± std of {side.n} replicates)"

