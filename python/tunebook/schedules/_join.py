"""Composing schedules: join in time, prepend a linear warmup, extend the peak phase."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tunebook.schedules._base import (
    ScalarOrSchedule,
    Schedule,
    StepLike,
    as_schedule,
    as_steps,
    check_finite,
    check_int,
    evaluate,
    finish,
)
from tunebook.schedules._decay import cosine_decay_schedule, linear_schedule


def join_schedules(schedules: Sequence[ScalarOrSchedule], boundaries: Sequence[int]) -> Schedule:
    r"""Run ``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]``, and so on.

    Each schedule after the first sees the step relative to its own start (optax's
    ``join_schedules``): from step :math:`b_i` on, the value is
    :math:`\text{schedules}[i+1](t - b_i)`.

    Args:
        schedules: ``n`` schedules (floats are constant schedules).
        boundaries: ``n - 1`` strictly increasing steps >= 0.

    Raises:
        ValueError: when the lengths disagree or the boundaries are not increasing.

    Example:
        >>> joined = join_schedules([linear_schedule(0.0, 1.0, 10), 1.0], [10])
        >>> joined(5), joined(50)
        (0.5, 1.0)
    """
    if len(schedules) == 0:
        raise ValueError("schedules must not be empty")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{len(boundaries)=} must be len(schedules) - 1 = {len(schedules) - 1}: one boundary "
            "between each pair of consecutive schedules"
        )
    bounds = [check_int(f"boundaries[{i}]", b, 0) for i, b in enumerate(boundaries)]
    if any(b1 <= b0 for b0, b1 in zip(bounds, bounds[1:])):
        raise ValueError(f"boundaries={list(boundaries)!r} must be strictly increasing")
    parts = [as_schedule(s) for s in schedules]

    def schedule(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        if scalar:
            index = int(np.searchsorted(bounds, float(steps), side="right"))
            begin = bounds[index - 1] if index else 0
            return float(parts[index](int(steps) - begin))
        # Each part sees only its own steps, so a user schedule never gets a negative one.
        flat = steps.reshape(-1)
        values = np.empty_like(flat)
        edges = [0, *bounds, np.inf]
        for index, part in enumerate(parts):
            begin = edges[index]
            mine = (flat < edges[index + 1]) if index == 0 else (flat >= begin) & (flat < edges[index + 1])
            if np.any(mine):
                values[mine] = np.asarray(part(flat[mine] - begin), dtype=np.float64)
        return finish(values.reshape(steps.shape), scalar)

    return schedule


def linear_warmup(schedule: ScalarOrSchedule, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    r"""Prepend a linear warmup from ``init_value`` to ``schedule(0)``.

    .. math::
        \eta_t = \begin{cases}
            \eta_{\text{init}} + (s(0) - \eta_{\text{init}})\,t/W & t < W \\
            s(t - W) & t \ge W
        \end{cases}

    The wrapped schedule starts at its own step 0 once the warmup ends, so its decay
    keeps its length. ``warmup_steps=0`` returns the schedule unchanged.

    Args:
        schedule: the schedule to warm up into (a float is a constant).
        warmup_steps: :math:`W \ge 0`.
        init_value: the value at step 0.

    Example:
        >>> warm = linear_warmup(cosine_decay_schedule(1.0, 100), warmup_steps=10)
        >>> warm(0), warm(5), warm(10)
        (0.0, 0.5, 1.0)
    """
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    init_value = check_finite("init_value", init_value)
    schedule = as_schedule(schedule)
    if warmup_steps == 0:
        return schedule
    peak = evaluate(schedule, 0)
    return join_schedules([linear_schedule(init_value, peak, warmup_steps), schedule], [warmup_steps])


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
) -> Schedule:
    r"""Linear warmup to ``peak_value``, then cosine decay to ``end_value`` (optax's shape).

    ``decay_steps`` counts the whole schedule, warmup included, as in optax: the value
    reaches ``end_value`` at step ``decay_steps``.

    Raises:
        ValueError: when ``decay_steps <= warmup_steps`` or ``peak_value`` is 0 with a
            non-zero ``end_value``.
    """
    peak_value = check_finite("peak_value", peak_value)
    end_value = check_finite("end_value", end_value)
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    decay_steps = check_int("decay_steps", decay_steps, 1)
    if decay_steps <= warmup_steps:
        raise ValueError(f"{decay_steps=} must be > {warmup_steps=}: it counts the warmup too")
    if peak_value == 0 and end_value != 0:
        raise ValueError(f"{end_value=} must be 0 when {peak_value=}")
    alpha = end_value / peak_value if peak_value else 0.0
    decay = cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha=alpha)
    return linear_warmup(decay, warmup_steps, init_value=init_value)


def extend_constant_phase(schedule: ScalarOrSchedule, at_step: int, extra_steps: int) -> Schedule:
    r"""Lengthen a schedule by holding its value at ``at_step`` for ``extra_steps`` more steps.

    This is the playbook's advice for round 2 of a compute-bound study ("Deciding how
    long to train"): when the best round-1 run should train longer, keep the length of
    the decay from round 1 and extend the constant (or peak) phase before it.

    .. math::
        \eta'_t = \begin{cases}
            s(t) & t < a \\
            s(a) & a \le t < a + E \\
            s(t - E) & t \ge a + E
        \end{cases}

    Args:
        schedule: the round-1 schedule.
        at_step: :math:`a`, where the held phase starts: the end of the warmup for a
            warmup + decay schedule, or the start of the decay.
        extra_steps: :math:`E \ge 0`, the number of steps added.

    Example:
        Round 1 trained 1000 steps: 100 of warmup, 900 of linear decay. Round 2 trains
        1500 and keeps the 900-step decay:

        >>> round1 = linear_warmup(linear_schedule(1.0, 0.0, 900), warmup_steps=100)
        >>> round2 = extend_constant_phase(round1, at_step=100, extra_steps=500)
        >>> round2(50), round2(400), round2(600), round2(1500)
        (0.5, 1.0, 1.0, 0.0)
    """
    at_step = check_int("at_step", at_step, 0)
    extra_steps = check_int("extra_steps", extra_steps, 0)
    schedule = as_schedule(schedule)
    if extra_steps == 0:
        return schedule
    held = evaluate(schedule, at_step)

    def extended(step: StepLike) -> float | np.ndarray:
        steps, scalar = as_steps(step)
        # Steps in the held phase map to at_step; later ones shift back by extra_steps.
        shifted = np.where(steps >= at_step + extra_steps, steps - extra_steps, np.minimum(steps, at_step))
        values = np.asarray(schedule(shifted), dtype=np.float64)
        holding = (steps >= at_step) & (steps < at_step + extra_steps)
        return finish(np.where(holding, held, values), scalar)

    return extended
