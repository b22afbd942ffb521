"""Leslie Smith's cyclical schedules: cyclical learning rates and the 1cycle policy.

References:
    L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
    (arXiv 1506.01186): triangular, triangular2 and exp_range cycles.
    L. N. Smith, "A disciplined approach to neural network hyper-parameters: Part 1",
    arXiv 1803.09820, and Smith & Topin, "Super-Convergence", arXiv 1708.07120: the
    1cycle policy, with momentum cycled inversely to the learning rate.

Both follow ``torch.optim.lr_scheduler.CyclicLR`` / ``OneCycleLR`` step for step, so a
run moved between the two sees the same values (the tests check this).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tunebook.schedules._base import (
    Schedule,
    StepLike,
    as_steps,
    check_finite,
    check_fraction,
    check_int,
    check_positive,
    finish,
)

_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def cyclic_schedule(
    base_value: float,
    max_value: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> Schedule:
    r"""A cyclical schedule between ``base_value`` and ``max_value`` (Smith 2017).

    With cycle length :math:`L = u + d`, cycle :math:`c = \lfloor 1 + t/L \rfloor`,
    position :math:`x = 1 + t/L - c` and up fraction :math:`r = u/L`:

    .. math::
        f = \begin{cases} x/r & x \le r \\ (x-1)/(r-1) & x > r\end{cases},\qquad
        \eta_t = \eta_{\text{base}} + (\eta_{\max} - \eta_{\text{base}})\, f\, g

    where the amplitude scale :math:`g` is 1 (``"triangular"``), :math:`2^{1-c}`
    (``"triangular2"``) or :math:`\gamma^{t}` (``"exp_range"``).

    For the inverse momentum cycle, pass the high momentum as ``base_value`` and the low
    one as ``max_value``: the value then falls while the learning rate rises.

    Args:
        base_value: the value at the start of each cycle.
        max_value: the value at the turning point.
        step_size_up: :math:`u \ge 1`, steps from base to max.
        step_size_down: :math:`d \ge 1`, steps back; defaults to ``step_size_up``.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma: the per-step factor of ``"exp_range"``, in (0, 1].

    Example:
        >>> clr = cyclic_schedule(0.1, 1.0, step_size_up=10)
        >>> clr(0), clr(10), clr(20)
        (0.1, 1.0, 0.1)
    """
    base_value = check_finite("base_value", base_value)
    max_value = check_finite("max_value", max_value)
    step_size_up = check_int("step_size_up", step_size_up, 1)
    step_size_down = step_size_up if step_size_down is None else check_int("step_size_down", step_size_down, 1)
    if mode not in _CYCLIC_MODES:
        raise ValueError(f"{mode=} must be one of {_CYCLIC_MODES}")
    gamma = check_fraction("gamma", check_positive("gamma", gamma))
    total = float(step_size_up + step_size_down)
    up_ratio = step_size_up / total

    def schedule(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        steps = np.maximum(steps, 0.0)
        cycle = np.floor(1.0 + steps / total)
        x = 1.0 + steps / total - cycle
        factor = np.where(x <= up_ratio, x / up_ratio, (x - 1.0) / (up_ratio - 1.0))
        if mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = 1.0 / 2.0 ** (cycle - 1.0)
        else:
            scale = gamma**steps
        return finish(base_value + (max_value - base_value) * factor * scale, scalar)

    return schedule


class OneCycle(NamedTuple):
    """The two schedules of the 1cycle policy; drive both (``ScheduleLR(momentum=...)``)."""

    learning_rate: Schedule
    momentum: Schedule


def _anneal(kind: str, start: float, end: float, pct: np.ndarray) -> np.ndarray:
    if kind == "cos":
        return end + (start - end) / 2.0 * (np.cos(np.pi * pct) + 1.0)
    return (end - start) * pct + start


def one_cycle(
    total_steps: int,
    max_value: float,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> OneCycle:
    r"""The 1cycle policy: the learning rate rises then falls far below its start, while
    momentum does the opposite (Smith 2018; Smith & Topin 2017).

    The learning rate starts at :math:`\eta_{\max}/\text{div}`, rises to
    :math:`\eta_{\max}` over ``pct_start * total_steps`` steps, then anneals to
    :math:`\eta_{\max}/(\text{div}\cdot\text{final\_div})` at step ``total_steps - 1``.
    Momentum goes from ``max_momentum`` down to ``base_momentum`` and back. With
    ``three_phase`` the rise is mirrored back to the start value before the final anneal
    (fast.ai's variant). Values match ``torch.optim.lr_scheduler.OneCycleLR`` for steps
    ``0 .. total_steps - 1``; later steps hold the final value.

    Args:
        total_steps: the length of the cycle, >= 2.
        max_value: the peak learning rate.
        pct_start: the fraction of steps spent rising, in (0, 1) (in (0, 0.5) with
            ``three_phase``).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        div_factor: start value = ``max_value / div_factor``.
        final_div_factor: end value = start value / ``final_div_factor``.
        three_phase: use three phases instead of two.
        base_momentum: the momentum at the learning rate's peak.
        max_momentum: the momentum at the start and end.

    Returns:
        ``OneCycle(learning_rate, momentum)``.
    """
    total_steps = check_int("total_steps", total_steps, 2)
    max_value = check_positive("max_value", max_value)
    pct_start = check_fraction("pct_start", pct_start, open_low=True, open_high=True)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"{anneal_strategy=} must be 'cos' or 'linear'")
    div_factor = check_positive("div_factor", div_factor)
    final_div_factor = check_positive("final_div_factor", final_div_factor)
    base_momentum = check_finite("base_momentum", base_momentum)
    max_momentum = check_finite("max_momentum", max_momentum)
    if base_momentum > max_momentum:
        raise ValueError(f"{base_momentum=} must be <= {max_momentum=}")

    initial = max_value / div_factor
    final = initial / final_div_factor
    rise_end = float(pct_start * total_steps) - 1.0
    if three_phase:
        if pct_start >= 0.5:
            raise ValueError(f"{pct_start=} must be < 0.5 with three_phase=True")
        phases = [
            (rise_end, initial, max_value, max_momentum, base_momentum),
            (2.0 * pct_start * total_steps - 2.0, max_value, initial, base_momentum, max_momentum),
            (total_steps - 1.0, initial, final, max_momentum, max_momentum),
        ]
    else:
        phases = [
            (rise_end, initial, max_value, max_momentum, base_momentum),
            (total_steps - 1.0, max_value, final, base_momentum, max_momentum),
        ]
    starts = [0.0] + [phase[0] for phase in phases[:-1]]
    if any(end <= start for start, (end, *_) in zip(starts, phases)):
        raise ValueError(
            f"{total_steps=} is too short for {pct_start=}: every phase needs at least one step"
        )

    def make(value_slot: int) -> Schedule:
        def schedule(step: StepLike) -> float | np.ndarray:
            steps, scalar = as_steps(step)
            steps = np.clip(steps, 0.0, total_steps - 1.0)
            values = np.zeros_like(steps)
            done = np.zeros(steps.shape, dtype=bool)
            for index, (start, phase) in enumerate(zip(starts, phases)):
                end = phase[0]
                mine = ~done & ((steps <= end) | (index == len(phases) - 1))
                pct = (steps - start) / (end - start)
                values = np.where(mine, _anneal(anneal_strategy, phase[value_slot], phase[value_slot + 1], pct), values)
                done |= mine
            return finish(values, scalar)

        return schedule

    return OneCycle(learning_rate=make(1), momentum=make(3))
