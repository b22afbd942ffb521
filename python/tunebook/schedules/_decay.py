"""Basic schedules: constant, linear, polynomial, cosine, rsqrt, exponential, piecewise constant.

Each is a pure function of the step (as in optax): build it once, call it with an int or
an array of steps. Arguments are checked when the schedule is built, not when it runs.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from tunebook.schedules._base import (
    Schedule,
    StepLike,
    as_steps,
    check_finite,
    check_int,
    check_nonnegative,
    check_positive,
    finish,
)


def constant_schedule(value: float) -> Schedule:
    r"""A schedule that always returns ``value``: :math:`\eta_t = \eta`.

    Example:
        >>> constant_schedule(0.1)(1000)
        0.1
    """
    value = check_finite("value", value)

    def schedule(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        return finish(np.full_like(steps, value), scalar)

    return schedule


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Polynomial interpolation from ``init_value`` to ``end_value``.

    With :math:`c = \mathrm{clip}(t - t_0, 0, T)`:

    .. math:: \eta_t = (\eta_0 - \eta_T)\,(1 - c/T)^{p} + \eta_T

    Args:
        init_value: value before and at ``transition_begin``.
        end_value: value from ``transition_begin + transition_steps`` on.
        power: the exponent :math:`p` (1 is linear decay).
        transition_steps: :math:`T`, the length of the transition; must be >= 1.
        transition_begin: :math:`t_0`, steps spent at ``init_value`` first; >= 0.

    Raises:
        ValueError: on a non-finite value, ``power <= 0``, ``transition_steps < 1`` or
            ``transition_begin < 0``.
    """
    init_value = check_finite("init_value", init_value)
    end_value = check_finite("end_value", end_value)
    power = check_positive("power", power)
    transition_steps = check_int("transition_steps", transition_steps, 1)
    transition_begin = check_int("transition_begin", transition_begin, 0)

    def schedule(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        count = np.clip(steps - transition_begin, 0, transition_steps)
        frac = 1.0 - count / transition_steps
        return finish((init_value - end_value) * frac**power + end_value, scalar)

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    r"""Linear interpolation from ``init_value`` to ``end_value`` over ``transition_steps``.

    .. math:: \eta_t = \eta_0 + (\eta_T - \eta_0)\,\mathrm{clip}(t - t_0, 0, T) / T

    Linear decay (``end_value < init_value``) and linear warmup (``end_value >
    init_value``) are both this schedule. See :func:`polynomial_schedule` for the arguments.

    Example:
        >>> linear_schedule(1.0, 0.0, transition_steps=10)(5)
        0.5
    """
    return polynomial_schedule(init_value, end_value, 1.0, transition_steps, transition_begin)


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    r"""Cosine decay (Loshchilov & Hutter, SGDR) without restarts.

    .. math::
        \eta_t = \eta_0\left[(1-\alpha)\left(\tfrac12\bigl(1 + \cos(\pi\,\min(t, T)/T)\bigr)\right)^{e}
        + \alpha\right]

    Args:
        init_value: the value at step 0.
        decay_steps: :math:`T`, the step at which the value reaches ``alpha * init_value``
            and stays; must be >= 1.
        alpha: the final value as a fraction of ``init_value``, >= 0.
        exponent: :math:`e`, the power applied to the cosine factor, > 0.

    Example:
        >>> round(cosine_decay_schedule(1.0, decay_steps=100)(50), 12)
        0.5
    """
    init_value = check_finite("init_value", init_value)
    decay_steps = check_int("decay_steps", decay_steps, 1)
    alpha = check_nonnegative("alpha", alpha)
    exponent = check_positive("exponent", exponent)

    def schedule(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        count = np.clip(steps, 0, decay_steps)
        cosine = 0.5 * (1.0 + np.cos(np.pi * count / decay_steps))
        return finish(init_value * ((1.0 - alpha) * cosine**exponent + alpha), scalar)

    return schedule


def rsqrt_schedule(init_value: float, timescale: float = 10_000.0) -> Schedule:
    r"""Inverse square-root decay, as big_vision uses after warmup.

    .. math:: \eta_t = \eta_0 / \sqrt{1 + t/\tau}

    Args:
        init_value: the value at step 0.
        timescale: :math:`\tau`, the number of steps over which the value falls by
            :math:`\sqrt2`; must be > 0.

    Example:
        >>> rsqrt_schedule(1.0, timescale=100)(300)
        0.5
    """
    init_value = check_finite("init_value", init_value)
    timescale = check_positive("timescale", timescale)

    def schedule(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        with np.errstate(over="ignore"):  # steps / timescale past float64: the value is 0, as it should be
            return finish(init_value / np.sqrt(1.0 + np.maximum(steps, 0.0) / timescale), scalar)

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    r"""Exponential decay (or growth), optionally in a staircase, optionally bounded.

    With :math:`c = \max(t - t_0, 0)`:

    .. math:: \eta_t = \eta_0\, r^{c/T} \quad(\text{or } r^{\lfloor c/T \rfloor} \text{ with a staircase})

    then clipped at ``end_value`` (a floor when :math:`r < 1`, a ceiling when :math:`r > 1`).

    Args:
        init_value: the value up to ``transition_begin``.
        transition_steps: :math:`T`, steps per factor of ``decay_rate``; >= 1.
        decay_rate: :math:`r > 0`.
        transition_begin: :math:`t_0 \ge 0`.
        staircase: decay in whole steps of :math:`T`.
        end_value: optional bound on the value.

    Example:
        >>> exponential_decay(1.0, transition_steps=10, decay_rate=0.5)(20)
        0.25
    """
    init_value = check_finite("init_value", init_value)
    transition_steps = check_int("transition_steps", transition_steps, 1)
    decay_rate = check_positive("decay_rate", decay_rate)
    transition_begin = check_int("transition_begin", transition_begin, 0)
    if end_value is not None:
        end_value = check_finite("end_value", end_value)
    staircase = bool(staircase)

    def schedule(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        power = np.maximum(steps - transition_begin, 0.0) / transition_steps
        if staircase:
            power = np.floor(power)
        with np.errstate(over="ignore"):  # growth past float64 is inf, as the formula says
            values = init_value * decay_rate**power
        if end_value is not None:
            values = np.maximum(values, end_value) if decay_rate < 1 else np.minimum(values, end_value)
        return finish(values, scalar)

    return schedule


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    r"""Step decay: multiply the value by ``scale`` from each boundary step on.

    .. math:: \eta_t = \eta_0 \prod_{b \le t} s_b

    Args:
        init_value: the value before the first boundary.
        boundaries_and_scales: ``{boundary_step: scale}``; boundaries >= 0, scales >= 0.

    Example:
        >>> schedule = piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.1})
        >>> schedule(99), schedule(100), round(schedule(250), 12)
        (1.0, 0.1, 0.01)
    """
    init_value = check_finite("init_value", init_value)
    pairs = []
    for boundary, scale in sorted((boundaries_and_scales or {}).items()):
        check_int(f"boundaries_and_scales[{boundary!r}] boundary", boundary, 0)
        check_nonnegative(f"boundaries_and_scales[{boundary!r}]", scale)
        pairs.append((int(boundary), float(scale)))

    def schedule(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        values = np.full_like(steps, init_value)
        for boundary, scale in pairs:
            values = np.where(steps >= boundary, values * scale, values)
        return finish(values, scalar)

    return schedule
