"""Gradient norms: their history, their distribution, and a clipping threshold."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from tunebook.analysis._warnings import AnalysisWarning


class GradNormSeries(NamedTuple):
    label: str
    steps: np.ndarray
    norms: np.ndarray


class GradNormData(NamedTuple):
    """Gradient norms of one or more runs.

    Attributes:
        series: one ``(label, steps, norms)`` per run, for the norm-against-step plot.
        norms: all finite norms together.
        nonfinite: how many logged norms were inf or NaN (skipped steps).
        percentile: the percentile used for the suggestion (90).
        suggested_clip: that percentile of the norms: a clipping threshold that leaves
            about 90% of updates untouched and tames the outliers. NaN without norms.
        max_grad_norm: the threshold in use, if any.
        clipped_fraction: the share of finite norms above ``max_grad_norm`` (or above the
            suggestion when none is in use).
        hist_counts, hist_edges: a histogram of the norms (log-spaced bins when the
            norms span more than a decade).
        warnings: ``clip_fraction`` when more than half of the updates are clipped.
    """

    series: tuple[GradNormSeries, ...]
    norms: np.ndarray
    nonfinite: int
    percentile: float
    suggested_clip: float
    max_grad_norm: float | None
    clipped_fraction: float
    hist_counts: np.ndarray
    hist_edges: np.ndarray
    warnings: tuple[AnalysisWarning, ...]


def _as_series(norms: Any) -> list[tuple[str, np.ndarray, np.ndarray, float | None]]:
    """Accept one run or many: an array, a ``grad_norms()`` tuple, ``(steps, norms)``,
    a mapping ``{label: run}`` or a sequence of runs."""
    if isinstance(norms, dict):
        runs = list(norms.items())
    elif hasattr(norms, "norms") or isinstance(norms, np.ndarray) or (
        isinstance(norms, (list, tuple)) and norms and np.ndim(norms[0]) == 0
    ):
        runs = [("run", norms)]
    elif isinstance(norms, tuple) and len(norms) == 2 and np.ndim(norms[0]) == 1 and np.size(norms[0]) == np.size(norms[1]) and not hasattr(norms[0], "norms"):
        runs = [("run", norms)]
    else:
        runs = [(f"run {i}", run) for i, run in enumerate(norms)]
    result = []
    for label, run in runs:
        threshold = None
        if hasattr(run, "norms"):
            threshold = getattr(run, "max_grad_norm", None)
            values = np.asarray(_to_numpy(run.norms), dtype=np.float64)
            steps = np.arange(values.size, dtype=np.int64)
        elif isinstance(run, tuple) and len(run) == 2 and np.ndim(run[0]) == 1:
            steps = np.asarray(_to_numpy(run[0]), dtype=np.int64)
            values = np.asarray(_to_numpy(run[1]), dtype=np.float64)
        else:
            values = np.asarray(_to_numpy(run), dtype=np.float64).ravel()
            steps = np.arange(values.size, dtype=np.int64)
        if steps.shape != values.shape:
            raise ValueError(f"{label}: steps and norms differ in length ({steps.size} vs {values.size})")
        result.append((str(label), steps, values, threshold))
    return result


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def grad_norm_data(
    norms: Any,
    *,
    max_grad_norm: float | None = None,
    percentile: float = 90.0,
    bins: int = 40,
    max_clipped_fraction: float = 0.5,
) -> GradNormData:
    """Summarise logged gradient norms and suggest a clipping threshold.

    Args:
        norms: one run's norms (array, tensor, or ``opt.grad_norms()``), a
            ``(steps, norms)`` pair, or several runs as a list or ``{label: run}``.
        max_grad_norm: the clipping threshold in use; taken from a ``grad_norms()``
            result when not given.
        percentile: the percentile of the norms to suggest as the threshold.
        bins: histogram bins.
        max_clipped_fraction: warn when more than this share of updates is clipped.

    Returns:
        A :class:`GradNormData`.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"{percentile=} must be in (0, 100]")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"{bins=} must be a positive integer")
    runs = _as_series(norms)
    if max_grad_norm is None:
        max_grad_norm = next((t for *_, t in runs if t is not None), None)
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"{max_grad_norm=} must be > 0")
    every = np.concatenate([values for _, _, values, _ in runs]) if runs else np.zeros(0)
    finite = every[np.isfinite(every)]
    nonfinite = int(every.size - finite.size)
    warnings = []
    if finite.size:
        suggested = float(np.percentile(finite, percentile))
        threshold = max_grad_norm if max_grad_norm is not None else suggested
        clipped = float(np.mean(finite > threshold))
        positive = finite[finite > 0]
        if positive.size and positive.max() / positive.min() > 10:
            edges = np.geomspace(positive.min(), positive.max(), bins + 1)
        else:
            edges = np.linspace(finite.min(), finite.max() if finite.max() > finite.min() else finite.min() + 1, bins + 1)
        counts, edges = np.histogram(finite, bins=edges)
        if max_grad_norm is not None and clipped > max_clipped_fraction:
            warnings.append(AnalysisWarning(
                "clip_fraction",
                f"{clipped:.0%} of updates were clipped at max_grad_norm={max_grad_norm:.4g} (more than "
                f"{max_clipped_fraction:.0%}): clipping is changing the optimizer, not just taming outliers; "
                f"raise the threshold (the {percentile:.0f}th percentile is {suggested:.4g}).",
                "grad_norm",
            ))
    else:
        suggested, clipped = float("nan"), 0.0
        counts, edges = np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
    series = tuple(GradNormSeries(label, steps, values) for label, steps, values, _ in runs)
    return GradNormData(series, finite, nonfinite, float(percentile), suggested, max_grad_norm,
                        clipped, counts.astype(np.int64), edges, tuple(warnings))
