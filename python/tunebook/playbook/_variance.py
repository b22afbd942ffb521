"""Trial variance and study variance: how much a result moves when nothing but chance
changes.

The playbook distinguishes two kinds of variance:

* *trial variance*: trainings of the same hyperparameters with different seeds give
  different results. Before adopting a change, run the best trial several times
  (:meth:`tunebook.Study.rerun`) to measure it: :func:`trial_variance`.
* *study variance*: rerunning the same search with another quasi-random seed finds a
  different best result. :func:`study_variance` estimates it by bootstrap from the
  study's own trials (the Rust core of :func:`tunebook.checkpoints.bootstrap_best_of_k`).

Either can be the larger; the report shows them side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from tunebook.analysis._warnings import AnalysisWarning


class TrialVariance(NamedTuple):
    """The spread of one configuration's result over training seeds.

    Attributes:
        study: the study's name ("" for values given directly).
        trial: the replicated trial's index (-1 for values given directly).
        metric, mode: the metric and its direction.
        values: each finished, feasible replicate's best value of the metric.
        replicates: those replicates' trial indices.
        seeds: their training seeds.
        n: ``len(values)``.
        mean: their mean (NaN without values).
        std: their sample standard deviation, ``ddof=1`` (NaN when ``n < 2``).
        original: the replicated trial's own best value. It is not among ``values``:
            a trial picked as the best of many was picked partly for its luck (the
            winner's curse), so only fresh replicates measure what retraining gives.
        infeasible: replicates that diverged or ended without a finite value.
        pending: replicates not finished yet.
        warnings: what to know before using the numbers.
    """

    study: str
    trial: int
    metric: str
    mode: str
    values: np.ndarray
    replicates: tuple[int, ...]
    seeds: tuple[int | None, ...]
    n: int
    mean: float
    std: float
    original: float | None
    infeasible: int
    pending: int
    warnings: tuple[AnalysisWarning, ...]

    @property
    def sem(self) -> float:
        """The standard error of the mean, ``std / sqrt(n)`` (NaN when ``n < 2``)."""
        return self.std / math.sqrt(self.n) if self.n >= 2 else math.nan

    def __str__(self) -> str:
        where = f"trial {self.trial} of {self.study}" if self.study else "values"
        if self.n == 0:
            return f"{where}: no finished replicate"
        return f"{where}: {self.metric} {self.mean:.5g} ± {self.std:.2g} (std over {self.n} replicates)"


def variance_of_values(
    values: Sequence[float] | np.ndarray, *, metric: str = "value", mode: str = "min"
) -> TrialVariance:
    """A :class:`TrialVariance` of replicate values given directly (non-finite ones
    count as infeasible)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    return _summarise("", -1, metric, mode, finite, (), (), None, int(array.size - finite.size), 0)


def _summarise(
    study: str, trial: int, metric: str, mode: str, values: np.ndarray, replicates: tuple[int, ...],
    seeds: tuple[int | None, ...], original: float | None, infeasible: int, pending: int,
) -> TrialVariance:
    n = int(values.size)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n >= 2 else math.nan
    warnings = []
    where = f"trial {trial}" if trial >= 0 else "the configuration"
    if n < 2:
        fix = f"study.rerun({trial}, n=5)" if trial >= 0 else "more replicates"
        warnings.append(AnalysisWarning(
            "few_replicates",
            f"{where} has {n} finished replicate{'s' if n != 1 else ''}: a trial variance needs at least 2; "
            f"run {fix}.",
            str(trial),
        ))
    if infeasible:
        warnings.append(AnalysisWarning(
            "unstable_replicates",
            f"{infeasible} of {n + infeasible} replicates of {where} diverged or ended without a finite value: "
            "the configuration is unstable at these hyperparameters (the spread above leaves them out).",
            str(trial),
        ))
    if pending:
        warnings.append(AnalysisWarning(
            "pending_replicates", f"{pending} replicates of {where} are not finished yet.", str(trial)))
    return TrialVariance(study, trial, metric, mode, values, replicates, seeds, n, mean, std, original, infeasible,
                         pending, tuple(warnings))


def trial_variance(study: Any, trial_index: int, *, include_original: bool = False) -> TrialVariance:
    """The trial variance of one trial, from its replicates (:meth:`tunebook.Study.rerun`).

    Args:
        study: a :class:`tunebook.Study`.
        trial_index: the replicated trial (a replicate's index means its parent).
        include_original: also count the trial's own value. Off by default: a trial
            chosen as the best of a search is biased towards lucky seeds.

    Returns:
        A :class:`TrialVariance`: each replicate's best-checkpoint value, their mean,
        standard deviation and n.

    Raises:
        ValueError: ``trial_index`` is not a trial of the study.
    """
    record = study._find(trial_index, "trial_index")
    parent = record.parent if record.kind == "replicate" else record.index
    if parent != record.index:
        record = study.trial(parent)
    replicates = study.replicates(parent)
    done = [r for r in replicates if r.state == "complete" and r.best_value is not None
            and math.isfinite(r.best_value)]
    done_indices = {r.index for r in done}
    infeasible = sum(1 for r in replicates if r.finished and r.state != "failed" and r.index not in done_indices)
    pending = sum(1 for r in replicates if not r.finished)
    values = [r.best_value for r in done]
    indices = tuple(r.index for r in done)
    seeds = tuple(r.seed for r in done)
    original = record.best_value if record.state == "complete" else None
    if include_original and original is not None and math.isfinite(original):
        values, indices, seeds = [original, *values], (record.index, *indices), (record.seed, *seeds)
    return _summarise(study.name, parent, study.metric, study.mode, np.asarray(values, dtype=np.float64), indices,
                      seeds, original, infeasible, pending)


class StudyVariance(NamedTuple):
    """How much the study's best result would move with another quasi-random seed.

    Attributes:
        study: the study's name.
        metric, mode: the metric and its direction.
        budget: the number of trials the estimate is for (default: the study's).
        n_trials: the finished quasi-random trials it is estimated from (infeasible
            ones count as drawn, never as best).
        std: the standard deviation of the best of ``budget`` trials over bootstrap
            resamples: the study variance, as a standard deviation.
        median, low, high: the median, 5% and 95% quantiles of that best.
        n_boot: bootstrap samples.
        warnings: what to know before using the numbers.
    """

    study: str
    metric: str
    mode: str
    budget: int
    n_trials: int
    std: float
    median: float
    low: float
    high: float
    n_boot: int
    warnings: tuple[AnalysisWarning, ...]

    def __str__(self) -> str:
        return (f"best of {self.budget} trials: {self.metric} {self.median:.5g} ± {self.std:.2g} "
                f"(90% of searches between {self.low:.5g} and {self.high:.5g})")


def study_variance(
    study: Any,
    *,
    budget: int | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    metric: str | None = None,
    mode: str | None = None,
) -> StudyVariance:
    """The study variance, by bootstrap of the best of ``budget`` quasi-random trials.

    Another quasi-random seed would draw another sample of the search space; the
    bootstrap draws ``budget`` of the study's finished quasi-random trials with
    replacement ``n_boot`` times and takes the best of each draw
    (:func:`tunebook.checkpoints.bootstrap_best_of_k`, in Rust). The spread of those
    bests is how much the study's result would move. Replicates and exploitation
    trials are left out: they are not draws from the search space.

    Args:
        study: a :class:`tunebook.Study`, or its trials (``study.trials()`` or dicts).
        budget: the trial budget (default: the number of finished quasi-random trials).
        n_boot: bootstrap samples, >= 100.
        seed: the bootstrap's seed.
        metric, mode: for trials given directly (default "valid_loss", "min").

    Raises:
        ValueError: no finished quasi-random trial, or bad arguments.
    """
    from tunebook.analysis._trials import trial_views
    from tunebook.checkpoints import bootstrap_best_of_k

    if hasattr(study, "trials") and callable(study.trials):
        name, trials = study.name, study.trials()
        metric, mode = metric or study.metric, mode or study.mode
    else:
        name, trials = "", list(study)
    metric, mode = metric or "valid_loss", mode or "min"
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    views = [v for v in trial_views(trials) if v.kind == "quasirandom" and (v.feasible or v.infeasible)]
    if not views:
        raise ValueError("the study has no finished quasi-random trial: nothing to bootstrap yet")
    values = np.asarray([v.value if v.feasible else np.nan for v in views], dtype=np.float64)
    if budget is None:
        budget = len(views)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    boot = bootstrap_best_of_k(values, [int(budget)], n_boot=int(n_boot), quantiles=(0.05, 0.5, 0.95), seed=seed,
                               mode=mode, return_samples=True)
    samples = boot.samples[0]
    finite = samples[np.isfinite(samples)]
    low, median, high = (float(q) for q in boot.values[0])
    warnings = []
    if finite.size < samples.size:
        warnings.append(AnalysisWarning(
            "infeasible_draws",
            f"{samples.size - finite.size} of {samples.size} bootstrap draws of {budget} trials held no feasible "
            "trial: at this budget a search can fail outright.",
            name or "study",
        ))
    if len(views) < 10:
        warnings.append(AnalysisWarning(
            "few_trials",
            f"the study variance is estimated from only {len(views)} trials: treat it as rough.", name or "study"))
    std = float(finite.std(ddof=1)) if finite.size >= 2 else math.nan
    return StudyVariance(name, metric, mode, int(budget), len(views), std, median, low, high, int(n_boot),
                         tuple(warnings))
