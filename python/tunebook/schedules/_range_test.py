"""The learning-rate range test (Smith 2017, section 3.3): ramp the learning rate over a
short run, record the loss, and read the usable range off the curve."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from tunebook.schedules._base import check_int, check_positive


class LRRangeTest(NamedTuple):
    """What :func:`lr_range_test` recorded and suggests.

    Attributes:
        learning_rates: the learning rate of each step that ran.
        losses: the loss each step returned (may end in a non-finite value).
        smoothed: the bias-corrected exponential moving average of the losses.
        diverged: whether the run stopped early because the loss blew up.
        min_loss_lr: the learning rate at the lowest smoothed loss: past it the loss
            stops falling. A sensible peak (``max_lr``) for cyclical / 1cycle schedules.
        steepest_lr: where the smoothed loss falls fastest against log(lr).
        suggested_range: ``(low, high)``: from where the loss starts to fall (5% of the
            total drop) to ``min_loss_lr``; the bounds for a cyclical schedule.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    diverged: bool
    min_loss_lr: float
    steepest_lr: float
    suggested_range: tuple[float, float]


MAX_RANGE_TEST_STEPS = 10_000_000


def lr_range_schedule(min_lr: float, max_lr: float, num_steps: int, mode: str = "exponential") -> np.ndarray:
    r"""The learning rates of a range test: :math:`\eta_i = \eta_{\min}(\eta_{\max}/\eta_{\min})^{i/(n-1)}`
    (``"exponential"``) or evenly spaced (``"linear"``), for :math:`i = 0..n-1`."""
    min_lr = check_positive("min_lr", min_lr)
    max_lr = check_positive("max_lr", max_lr)
    num_steps = check_int("num_steps", num_steps, 2)
    if num_steps > MAX_RANGE_TEST_STEPS:
        # The schedule is materialised as an array: refuse a size that cannot be a range
        # test (a few hundred steps) before it turns into a MemoryError.
        raise ValueError(f"{num_steps=} must be <= {MAX_RANGE_TEST_STEPS} (a range test takes a few hundred steps)")
    if max_lr <= min_lr:
        raise ValueError(f"{max_lr=} must be > {min_lr=}")
    if mode == "exponential":
        return np.geomspace(min_lr, max_lr, num_steps)
    if mode == "linear":
        return np.linspace(min_lr, max_lr, num_steps)
    raise ValueError(f"{mode=} must be 'exponential' or 'linear'")


def _set_learning_rate(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        if hasattr(group["lr"], "fill_"):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def lr_range_test(
    step_fn: Callable[[float], float],
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    *,
    mode: str = "exponential",
    smoothing: float = 0.05,
    divergence_factor: float = 4.0,
    optimizer: Any = None,
) -> LRRangeTest:
    r"""Run the LR range test.

    Step :math:`i` trains one step at learning rate :math:`\eta_i` (see
    :func:`lr_range_schedule`) and records its loss. The loss is smoothed with a
    bias-corrected moving average :math:`\bar L_i = \text{EMA}_{1-\text{smoothing}}(L)_i`;
    the test stops early when a loss is non-finite or
    :math:`\bar L_i > \text{divergence\_factor}\cdot\min_{j\le i}\bar L_j`.

    Args:
        step_fn: called as ``step_fn(lr)``; trains one step at that learning rate and
            returns the (training) loss as a float.
        min_lr: the first learning rate, > 0.
        max_lr: the last learning rate, > ``min_lr``.
        num_steps: how many steps to ramp over, >= 2.
        mode: ``"exponential"`` (the usual choice) or ``"linear"``.
        smoothing: the weight of each new loss in the moving average, in (0, 1].
        divergence_factor: stop when the smoothed loss exceeds this multiple of its
            minimum, > 1.
        optimizer: if given, every param group's ``lr`` is set to :math:`\eta_i` before
            ``step_fn`` runs (tensor learning rates are filled in place).

    Returns:
        An :class:`LRRangeTest` with the curve and the suggestions.

    Example:
        >>> result = lr_range_test(lambda lr: abs(math.log10(lr) + 2), 1e-4, 1.0, 41, smoothing=1.0)
        >>> round(result.min_loss_lr, 6)
        0.01
    """
    lrs = lr_range_schedule(min_lr, max_lr, num_steps, mode)
    smoothing = check_positive("smoothing", smoothing)
    if smoothing > 1:
        raise ValueError(f"{smoothing=} must be in (0, 1]")
    divergence_factor = check_positive("divergence_factor", divergence_factor)
    if divergence_factor <= 1:
        raise ValueError(f"{divergence_factor=} must be > 1")

    losses: list[float] = []
    smoothed: list[float] = []
    average = 0.0
    best = math.inf
    diverged = False
    for index, lr in enumerate(lrs):
        if optimizer is not None:
            _set_learning_rate(optimizer, float(lr))
        loss = float(step_fn(float(lr)))
        losses.append(loss)
        if not math.isfinite(loss):
            smoothed.append(math.nan)
            diverged = True
            break
        average = (1.0 - smoothing) * average + smoothing * loss
        value = average / (1.0 - (1.0 - smoothing) ** (index + 1))
        smoothed.append(value)
        best = min(best, value)
        if index > 0 and value > divergence_factor * best and best > 0:
            diverged = True
            break

    count = len(losses)
    lrs = lrs[:count]
    curve = np.asarray(smoothed)
    finite = np.isfinite(curve)
    if not finite.any():
        raise ValueError(
            f"the first loss was {losses[0]!r}: lower {min_lr=} so the range test starts where training is stable"
        )
    valid = np.flatnonzero(finite)
    best_index = int(valid[np.argmin(curve[valid])])
    if best_index >= 1:
        slopes = np.diff(curve[: best_index + 1]) / np.diff(np.log(lrs[: best_index + 1]))
        steepest_index = int(np.argmin(slopes))
    else:
        steepest_index = 0
    drop = curve[0] - curve[best_index]
    start_index = 0
    if drop > 0:
        falling = np.flatnonzero(curve[: best_index + 1] <= curve[0] - 0.05 * drop)
        start_index = int(falling[0]) if falling.size else 0
    return LRRangeTest(
        learning_rates=lrs,
        losses=np.asarray(losses, dtype=np.float64),
        smoothed=curve,
        diverged=diverged,
        min_loss_lr=float(lrs[best_index]),
        steepest_lr=float(lrs[steepest_index]),
        suggested_range=(float(lrs[start_index]), float(lrs[best_index])),
    )
