"""Study-level ranking: each trial's best step, the order of trials, the best trial per
bucket of a hyperparameter, and the bootstrap of best-of-k over trial budgets.

Thin NumPy wrappers over the Rust core (``tunebook._rust``): they validate and shape
the inputs and name the outputs; the loops run in Rust without the GIL.

Rules shared by every function:

* **Non-finite values never rank.** NaN, +inf and -inf are never a trial's best, never
  a bucket's best, and sort after every finite value (in trial order among
  themselves). Missing evaluations of a 2-D history are written as NaN.
* **Ties keep the earlier step** (``tie="earlier"``; ``tie="later"`` keeps the later
  one) and, between trials, the lower trial index.
* ``mode="min"`` ranks smaller values first, ``mode="max"`` larger values first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from tunebook import _rust
from tunebook._checks import as_seed

ArrayLike = npt.ArrayLike


class TrialBests(NamedTuple):
    """Each trial's best evaluation.

    Attributes:
        step: the step of the best value, int64; -1 for a trial with no finite value.
        value: the best value, float64; NaN for a trial with no finite value.
        position: the best value's position within the trial's history; -1 if none.
    """

    step: np.ndarray
    value: np.ndarray
    position: np.ndarray


class Buckets(NamedTuple):
    """The best trial per bucket of a hyperparameter (isolation-plot data).

    Attributes:
        edges: ``n + 1`` bucket edges; bucket i is ``[edges[i], edges[i+1])``, the last
            one closed on the right.
        centers: ``n`` bucket centres (geometric when the buckets are log-spaced).
        index: ``n`` trial indices (positions in ``x``), -1 for an empty bucket.
        value: ``n`` best values, NaN for an empty bucket.
    """

    edges: np.ndarray
    centers: np.ndarray
    index: np.ndarray
    value: np.ndarray


class BestOfK(NamedTuple):
    """Bootstrap of the best of k trials.

    Attributes:
        budgets: the budgets k, int64, shape ``(b,)``.
        quantiles: the quantile levels, shape ``(q,)``.
        values: the quantiles of the best of k, shape ``(b, q)``.
        samples: the bootstrap samples, shape ``(b, n_boot)``, or None unless asked for.
    """

    budgets: np.ndarray
    quantiles: np.ndarray
    values: np.ndarray
    samples: np.ndarray | None


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def _check_tie(tie: str) -> None:
    if tie not in ("earlier", "later"):
        raise ValueError(f"tie must be 'earlier' or 'later', got {tie!r}")


def _flatten(rows: Sequence[ArrayLike], name: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = [np.asarray(row, dtype=np.float64 if name == "values" else np.int64).ravel() for row in rows]
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(arrays) if arrays else np.zeros(0)
    return flat, offsets


def best_per_trial(
    values: ArrayLike | Sequence[ArrayLike],
    steps: ArrayLike | Sequence[ArrayLike] | None = None,
    *,
    mode: str = "min",
    tie: str = "earlier",
) -> TrialBests:
    """The best value of each trial's history and the step it came at.

    Args:
        values: a 2-D array ``(trials, evaluations)`` with NaN for missing
            evaluations, or a sequence of 1-D arrays (ragged histories).
        steps: the step of each evaluation. For 2-D ``values``: a 1-D array of length
            ``evaluations`` shared by all trials, or a 2-D array of the same shape. For
            ragged ``values``: a sequence of 1-D arrays matching it. None: the step is
            the position in the history.
        mode: "min" or "max".
        tie: "earlier" keeps the smaller step on equal values, "later" the larger.

    Returns:
        A :class:`TrialBests` of per-trial arrays.

    Raises:
        ValueError: on a bad mode or tie, or shapes that do not match.

    Example:
        >>> best_per_trial([[3.0, 1.0, 2.0], [float("nan"), 5.0, 4.0]]).step
        array([1, 2])
    """
    _check_mode(mode)
    _check_tie(tie)
    ragged = not isinstance(values, np.ndarray) and isinstance(values, Sequence) and len(values) > 0 and (
        len({np.size(row) for row in values}) > 1 or any(isinstance(row, np.ndarray) for row in values)
    )
    if ragged:
        flat, offsets = _flatten(values, "values")
        flat_steps = None
        if steps is not None:
            if not isinstance(steps, Sequence) or len(steps) != len(values):
                raise ValueError("steps must be a sequence with one 1-D array per trial for ragged values")
            flat_steps, step_offsets = _flatten(steps, "steps")
            if not np.array_equal(step_offsets, offsets):
                raise ValueError("steps must have the same length as values for every trial")
    else:
        matrix = np.asarray(values, dtype=np.float64)
        if matrix.ndim == 1:
            matrix = matrix[None, :] if matrix.size else matrix.reshape(0, 0)
        if matrix.ndim != 2:
            raise ValueError(f"values must be 2-D (trials, evaluations) or ragged, got {matrix.ndim}-D")
        n, m = matrix.shape
        flat = np.ascontiguousarray(matrix).ravel()
        offsets = np.arange(n + 1, dtype=np.int64) * m
        flat_steps = None
        shared_steps = None
        if steps is not None:
            step_array = np.asarray(steps, dtype=np.int64)
            if step_array.shape == (m,) and np.all(np.diff(step_array) > 0):
                # Increasing shared steps: positions rank ties the same way, so the Rust
                # core needs no n x m step matrix; map positions to steps afterwards.
                shared_steps = step_array
            else:
                if step_array.shape == (m,):
                    step_array = np.broadcast_to(step_array, (n, m))
                if step_array.shape != (n, m):
                    raise ValueError(
                        f"steps must have shape ({m},) or {(n, m)} to match values, got {step_array.shape}"
                    )
                flat_steps = np.ascontiguousarray(step_array).ravel()
        if shared_steps is not None:
            position, value = _rust.best_per_row(flat, offsets, None, mode, tie)
            step = np.where(position >= 0, shared_steps[np.maximum(position, 0)], -1) if m else position.copy()
            return TrialBests(step=step.astype(np.int64), value=value, position=position)
    position, value = _rust.best_per_row(flat, offsets, flat_steps, mode, tie)
    if flat_steps is None:
        step = position.copy()
    else:
        step = np.where(position >= 0, flat_steps[np.maximum(offsets[:-1] + position, 0)] if flat.size else -1, -1)
    return TrialBests(step=np.asarray(step, dtype=np.int64), value=value, position=position)


def rank_trials(values: ArrayLike | Sequence[ArrayLike], *, mode: str = "min") -> np.ndarray:
    """Trial indices ordered best first.

    Args:
        values: each trial's best value (1-D), or whole histories (2-D or ragged, as
            :func:`best_per_trial` takes), which are reduced to their best first.
        mode: "min" or "max".

    Returns:
        int64 indices, best first; ties by lower index; trials without a finite value
        last, in index order.
    """
    _check_mode(mode)
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype != object:
        best = values
    elif not isinstance(values, np.ndarray) and isinstance(values, Sequence) and values and np.ndim(values[0]) >= 1:
        best = best_per_trial(values, mode=mode).value
    else:
        best = np.asarray(values, dtype=np.float64)
        if best.ndim == 2:
            best = best_per_trial(best, mode=mode).value
    best = np.ascontiguousarray(best, dtype=np.float64)
    if best.ndim != 1:
        raise ValueError(f"values must be 1-D best values or 2-D histories, got {best.ndim}-D")
    return _rust.rank(best, mode)


def best_per_bucket(
    x: ArrayLike,
    y: ArrayLike,
    bins: int | ArrayLike = 10,
    *,
    mode: str = "min",
    log: bool = False,
) -> Buckets:
    """The best trial in each bucket of a hyperparameter: isolation-plot data.

    The playbook's isolation plot shows, for each value of the scientific
    hyperparameter, the best trial after optimising away the nuisance hyperparameters;
    with a continuous hyperparameter the values are bucketed first.

    Args:
        x: the hyperparameter value of each trial.
        y: each trial's best metric value (non-finite: never chosen).
        bins: the number of equal-width buckets spanning the finite ``x`` (log-width
            when ``log``), or the bucket edges themselves (strictly increasing).
        mode: "min" or "max".
        log: space the buckets evenly in ``log(x)``; only positive ``x`` are used.

    Returns:
        A :class:`Buckets`. ``x`` outside the edges, non-finite ``x`` and (with
        ``log``) non-positive ``x`` fall in no bucket. Ties go to the lower index.
    """
    _check_mode(mode)
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if x.ndim != 1 or y.shape != x.shape:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {x.shape} and {y.shape}")
    if np.ndim(bins) == 0:
        if int(bins) != bins or int(bins) < 1:
            raise ValueError(f"bins must be a positive integer or an array of edges, got {bins!r}")
        edges = _rust.bucket_edges(x, int(bins), bool(log))
    else:
        edges = np.ascontiguousarray(bins, dtype=np.float64)
        if log and np.any(edges <= 0):
            raise ValueError("edges must be positive when log=True")
    if log:
        x = np.where(x > 0, x, np.nan)
    index, value = _rust.best_per_bucket(x, y, edges, mode)
    centers = np.sqrt(edges[:-1] * edges[1:]) if log else 0.5 * (edges[:-1] + edges[1:])
    return Buckets(edges=edges, centers=centers, index=index, value=value)


def bootstrap_best_of_k(
    best_values: ArrayLike,
    budgets: ArrayLike,
    *,
    n_boot: int = 2000,
    quantiles: ArrayLike = (0.05, 0.25, 0.5, 0.75, 0.95),
    seed: int = 0,
    mode: str = "min",
    return_samples: bool = False,
) -> BestOfK:
    """Bootstrap of the best of k trials: the playbook's "have we sampled enough" plot.

    For each budget k, draws k trials with replacement from the ``n`` trials
    ``n_boot`` times and takes the best of each draw; returns quantiles of those bests.
    The best of k draws is the value at rank ``J = min(U_1, ..., U_k)``, with
    ``P(J >= j) = (1 - j/n)^k``; the Rust core samples ``J`` from that law directly,
    which is the same distribution as drawing the k trials, in O(1) per sample.

    Args:
        best_values: each trial's best metric value. Non-finite values (infeasible
            trials) count as drawn trials but never as the best; a draw of only
            infeasible trials is +inf (min) or -inf (max).
        budgets: the budgets k (positive integers, may exceed the number of trials).
        n_boot: samples per budget.
        quantiles: quantile levels in [0, 1], linear interpolation (numpy's default).
        seed: the random seed, in ``[0, 2**64)``; a budget's samples depend only on (seed, k).
        mode: "min" or "max".
        return_samples: also return the raw samples, shape ``(len(budgets), n_boot)``.

    Returns:
        A :class:`BestOfK`.
    """
    _check_mode(mode)
    best = np.ascontiguousarray(best_values, dtype=np.float64).ravel()
    budget_array = np.ascontiguousarray(budgets, dtype=np.int64).ravel()
    q = np.ascontiguousarray(quantiles, dtype=np.float64).ravel()
    if int(n_boot) < 1:
        raise ValueError(f"{n_boot=} must be >= 1")
    seed = as_seed(seed, limit=2**64)  # the Rust core's u64
    values = _rust.bootstrap_quantiles(best, budget_array, int(n_boot), q, int(seed), mode)
    samples = None
    if return_samples:
        samples = _rust.bootstrap_best_of_k(best, budget_array, int(n_boot), int(seed), mode)
    return BestOfK(budget_array, q, values, samples)
