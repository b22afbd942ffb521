"""Isolation plots: the best result for each value of a scientific hyperparameter after
the nuisance hyperparameters are optimised away (the best trial per value, or per
bucket of a continuous axis)."""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np

from tunebook.analysis._trials import Hyperparameter, hyperparameters, oriented, trial_views


class IsolationPlotData(NamedTuple):
    """The best trial per value (or bucket) of the scientific hyperparameter.

    Attributes:
        scientific: the hyperparameter's name (the key in the trials' params).
        metric, mode: what is ranked.
        categorical: whether ``labels`` are the distinct values (else buckets).
        labels: one label per value or bucket ("0.001–0.003" for a bucket).
        positions: x positions: 0..n-1 for categorical, bucket centres otherwise.
        edges: the bucket edges (``n + 1``), or None for categorical.
        log: whether the buckets are log-spaced.
        best_values: the best metric value per value/bucket; NaN when none is feasible.
        best_trials: the best trial's index per value/bucket; -1 when none.
        counts: feasible trials per value/bucket.
        infeasible_counts: infeasible trials per value/bucket.
    """

    scientific: str
    metric: str
    mode: str
    categorical: bool
    labels: tuple[str, ...]
    positions: np.ndarray
    edges: np.ndarray | None
    log: bool
    best_values: np.ndarray
    best_trials: np.ndarray
    counts: np.ndarray
    infeasible_counts: np.ndarray


def _find(scientific: str, space: Any, views: list) -> Hyperparameter | None:
    for hp in hyperparameters(space, views):
        if hp.name == scientific or hp.key == scientific:
            return hp
    return None


def isolation_plot_data(
    trials: Iterable[Any],
    scientific: str,
    space: Any = None,
    *,
    metric: str = "valid_loss",
    mode: str = "min",
    bins: int = 8,
) -> IsolationPlotData:
    """The numbers behind an isolation plot.

    For a categorical (or integer with few values) scientific hyperparameter, each value
    gets the best trial among those that used it; a continuous one is split into
    ``bins`` buckets (log-spaced on a log scale) by
    :func:`tunebook.checkpoints.best_per_bucket`.

    Args:
        trials: ``study.trials()`` or dicts.
        scientific: the name of the scientific hyperparameter.
        space: the study's search space (gives the scale; optional).
        metric, mode: the metric's name and direction.
        bins: buckets for a continuous hyperparameter, >= 1.

    Raises:
        ValueError: when no trial has the hyperparameter or ``bins < 1``.
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"{bins=} must be a positive integer")
    # Replicates re-measure a trial's point; they would let a lucky seed win a bucket.
    views = [t for t in trial_views(trials) if scientific in t.params and t.kind != "replicate"]
    if not views:
        raise ValueError(f"no trial has the hyperparameter {scientific!r}: check its name")
    feasible = [t for t in views if t.feasible]
    infeasible = [t for t in views if t.infeasible]
    hp = _find(scientific, space, views)
    values = [t.params[scientific] for t in views]
    distinct = list(dict.fromkeys(repr(v) for v in values))
    categorical = hp is None or not hp.numeric or (hp.kind == "int" and len(distinct) <= bins)
    if categorical:
        key_of = (lambda v: v) if all(_hashable(v) for v in values) else repr
        seen = list(dict.fromkeys(key_of(v) for v in values))
        # The search space's order of choices when there is one, then any others.
        keys = [c for c in (hp.choices if hp is not None else ()) if c in seen]
        keys += [k for k in seen if k not in keys]
        best_values, best_trials, counts, bad = [], [], [], []
        for key in keys:
            mine = [t for t in feasible if key_of(t.params[scientific]) == key]
            counts.append(len(mine))
            bad.append(sum(1 for t in infeasible if key_of(t.params[scientific]) == key))
            if mine:
                scores = oriented(np.asarray([t.value for t in mine]), mode)
                winner = mine[int(np.argmin(scores))]
                best_values.append(winner.value)
                best_trials.append(winner.index)
            else:
                best_values.append(np.nan)
                best_trials.append(-1)
        return IsolationPlotData(
            scientific, metric, mode, True, tuple(str(k) for k in keys),
            np.arange(len(keys), dtype=np.float64), None, False,
            np.asarray(best_values, dtype=np.float64), np.asarray(best_trials, dtype=np.int64),
            np.asarray(counts, dtype=np.int64), np.asarray(bad, dtype=np.int64),
        )

    from tunebook.checkpoints import best_per_bucket

    log = hp.scale == "log"
    x = np.asarray([t.params[scientific] for t in feasible], dtype=np.float64)
    y = np.asarray([t.value for t in feasible], dtype=np.float64)
    all_x = np.asarray(values, dtype=np.float64)
    low = hp.low if hp.low is not None else float(all_x.min())
    high = hp.high if hp.high is not None else float(all_x.max())
    edges = np.geomspace(low, high, bins + 1) if log else np.linspace(low, high, bins + 1)
    buckets = best_per_bucket(x, y, edges, mode=mode, log=log)
    trial_index = np.asarray([t.index for t in feasible], dtype=np.int64)
    best_trials = np.where(buckets.index >= 0, trial_index[np.maximum(buckets.index, 0)] if len(x) else -1, -1)
    counts = _bucket_counts(x, edges)
    bad = _bucket_counts(np.asarray([t.params[scientific] for t in infeasible], dtype=np.float64), edges)
    labels = tuple(f"{a:.3g}–{b:.3g}" for a, b in zip(edges[:-1], edges[1:]))
    return IsolationPlotData(
        scientific, metric, mode, False, labels, buckets.centers, edges, log,
        buckets.value, best_trials.astype(np.int64), counts, bad,
    )


def _hashable(value: Any) -> bool:
    try:
        hash(value)
        return True
    except TypeError:
        return False


def _bucket_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Trials per bucket, with the last bucket closed on the right (as best_per_bucket)."""
    if x.size == 0:
        return np.zeros(len(edges) - 1, dtype=np.int64)
    inside = (x >= edges[0]) & (x <= edges[-1])
    index = np.clip(np.searchsorted(edges, x[inside], side="right") - 1, 0, len(edges) - 2)
    return np.bincount(index, minlength=len(edges) - 1).astype(np.int64)
