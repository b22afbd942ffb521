"""Round 1 -> Round 2 of a compute-bound workload: the longer run's schedule (playbook,
"Deciding how long to train when training is compute-bound" > "Round 2")."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, NamedTuple

import numpy as np

from tunebook.analysis import AnalysisWarning
from tunebook.playbook import _record
from tunebook.schedules import (
    Schedule,
    cosine_decay_schedule,
    extend_constant_phase,
    linear_schedule,
    linear_warmup,
)

_SAMPLES = 400  # points of each tabulated schedule (for the plot and the record)


@_record.recordable
class RoundTwo(NamedTuple):
    """The Round-2 schedule and configuration (:func:`round_two`).

    Attributes:
        schedule: the Round-2 schedule (not stored in a record).
        config: the Round-1 best configuration with ``max_train_steps`` updated.
        kind: "linear", "cosine" or "custom".
        max_train_steps, new_max_train_steps: Round 1's and Round 2's lengths.
        warmup_steps: the warmup kept from Round 1.
        steps, round_one_lr, round_two_lr: both schedules tabulated (Round 1 up to its
            end, then NaN).
        low_lr_share: the share of each round's steps spent below ``low_lr`` times its
            peak learning rate, (round 1, round 2).
        low_lr: that threshold.
        verdict: one paragraph for a person.
        warnings: ``extra_steps_at_low_lr`` (the playbook's pitfall).
    """

    schedule: Schedule | None
    config: dict[str, Any]
    kind: str
    max_train_steps: int
    new_max_train_steps: int
    warmup_steps: int
    steps: np.ndarray
    round_one_lr: np.ndarray
    round_two_lr: np.ndarray
    low_lr_share: tuple[float, float]
    low_lr: float
    verdict: str
    warnings: tuple[AnalysisWarning, ...]

    procedure = "round_two"

    def record(self, study: Any, key: str | None = None) -> str:
        """Stores this result with ``study`` for its report (see :func:`tunebook.playbook.record`)."""
        return _record.record(study, self, key)


def _step_sample(length: int, most: int = 100_000) -> np.ndarray:
    if length <= most:
        return np.arange(length)
    return np.floor(np.arange(most) * (length / most)).astype(np.int64)


def _check_steps(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return int(value)


def round_two(
    best_config: Mapping[str, Any],
    schedule: str | Schedule,
    max_train_steps: int,
    new_max_train_steps: int,
    *,
    warmup_steps: int = 0,
    lr_param: str = "learning_rate",
    end_value: float = 0.0,
    at_step: int | None = None,
    low_lr: float = 0.1,
) -> RoundTwo:
    """The Round-2 schedule: spend the extra steps at a high learning rate.

    The playbook ("Deciding how long to train when training is compute-bound" >
    "Round 2"): run the best configuration of Round 1, longer, and (speculatively) use
    the extra steps to extend training at a high learning rate:

    * **linear decay** (``schedule="linear"``): keep the length of the decay fixed
      from Round 1 and extend the period of constant learning rate at the beginning
      (:func:`tunebook.schedules.extend_constant_phase`, after the warmup);
    * **cosine decay** (``schedule="cosine"``): keep the base learning rate from
      Round 1 and extend ``max_train_steps``, stretching the cosine over the new length;
    * any other schedule (a callable): hold its value at ``at_step`` (where its decay
      starts) for the extra steps, as for linear decay.

    The pitfall the playbook names: going from Round i to Round i+1, using all the
    extra training steps with too small a learning rate (e.g. an rsqrt decay tuned on
    short runs, extended, trains mostly at overly small steps). The result reports the
    share of steps each round spends below ``low_lr`` (10%) of its peak, and warns
    when most of the extra steps run there.

    Args:
        best_config: Round 1's best configuration (holds ``lr_param`` for the named
            schedules).
        schedule: "linear", "cosine", or Round 1's schedule as a callable.
        max_train_steps: Round 1's number of steps.
        new_max_train_steps: Round 2's, larger.
        warmup_steps: Round 1's linear warmup (kept as is).
        lr_param: the learning rate's name in ``best_config``.
        end_value: the learning rate at the end of the decay (linear and cosine).
        at_step: for a callable schedule, the step where its decay begins.
        low_lr: the share of the peak learning rate below which a step counts as "too
            small" (default 0.1).

    Returns:
        A :class:`RoundTwo`.

    Raises:
        ValueError: ``new_max_train_steps <= max_train_steps``, an unknown schedule, a
            callable without ``at_step``, a missing learning rate, or another bad
            argument (the message names it).

    Example:
        >>> r2 = round_two({"learning_rate": 0.1}, "linear", 1000, 1500, warmup_steps=100)
        >>> r2.config["max_train_steps"], r2.schedule(100), r2.schedule(600), r2.schedule(1500)
        (1500, 0.1, 0.1, 0.0)
    """
    if not isinstance(best_config, Mapping):
        raise ValueError(f"best_config must be a dict of hyperparameters, got {type(best_config).__name__}")
    max_train_steps = _check_steps("max_train_steps", max_train_steps, 1)
    new_max_train_steps = _check_steps("new_max_train_steps", new_max_train_steps, 1)
    if new_max_train_steps <= max_train_steps:
        raise ValueError(f"{new_max_train_steps=} must be > {max_train_steps=}: Round 2 trains longer")
    warmup_steps = _check_steps("warmup_steps", warmup_steps, 0)
    if warmup_steps >= max_train_steps:
        raise ValueError(f"{warmup_steps=} must be < {max_train_steps=}")
    if isinstance(low_lr, bool) or not isinstance(low_lr, numbers.Real) or not 0 < low_lr < 1:
        raise ValueError(f"{low_lr=} must be in (0, 1)")
    extra = new_max_train_steps - max_train_steps
    if callable(schedule):
        if at_step is None:
            raise ValueError("at_step is needed with a custom schedule: the step where its decay begins (the "
                             "constant phase before it is extended)")
        at_step = _check_steps("at_step", at_step, 0)
        if at_step > max_train_steps:
            raise ValueError(f"{at_step=} must be <= {max_train_steps=}")
        kind, first = "custom", schedule
        second = extend_constant_phase(schedule, at_step, extra)
    elif schedule in ("linear", "cosine"):
        lr = best_config.get(lr_param)
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"best_config[{lr_param!r}]={lr!r} must be a positive learning rate (or set lr_param)")
        if isinstance(end_value, bool) or not isinstance(end_value, numbers.Real) or not 0 <= end_value < lr:
            raise ValueError(f"{end_value=} must be in [0, {lr_param}={lr})")
        kind = schedule
        decay = max_train_steps - warmup_steps
        if kind == "linear":
            first = linear_warmup(linear_schedule(float(lr), float(end_value), decay), warmup_steps)
            second = extend_constant_phase(first, warmup_steps, extra)
        else:
            alpha = float(end_value) / float(lr)
            first = linear_warmup(cosine_decay_schedule(float(lr), decay, alpha=alpha), warmup_steps)
            second = linear_warmup(cosine_decay_schedule(float(lr), new_max_train_steps - warmup_steps, alpha=alpha),
                                   warmup_steps)
    else:
        raise ValueError(f"schedule={schedule!r} must be 'linear', 'cosine' or a callable schedule")
    steps = np.unique(np.linspace(0, new_max_train_steps, _SAMPLES).round().astype(np.int64))
    one = np.where(steps <= max_train_steps, np.asarray(first(steps), dtype=np.float64), np.nan)
    two = np.asarray(second(steps), dtype=np.float64)
    # Every step of each round, or an even sample of 100,000 of them for very long runs.
    every_one = np.asarray(first(_step_sample(max_train_steps)), dtype=np.float64)
    every_two = np.asarray(second(_step_sample(new_max_train_steps)), dtype=np.float64)
    peak_one, peak_two = float(np.max(every_one)), float(np.max(every_two))
    low_one = float(np.mean(every_one < low_lr * peak_one)) if peak_one > 0 else 0.0
    low_two = float(np.mean(every_two < low_lr * peak_two)) if peak_two > 0 else 0.0
    warnings = []
    extra_low = (low_two * new_max_train_steps - low_one * max_train_steps) / extra
    if extra_low > 0.5:
        warnings.append(AnalysisWarning(
            "extra_steps_at_low_lr",
            f"{extra_low:.0%} of Round 2's {extra} extra steps run below {low_lr:.0%} of the peak learning rate: "
            "the pitfall the playbook names, spending the extra steps at too small a learning rate. Extend the "
            "high-learning-rate phase instead (at_step where the decay begins).",
            "schedule"))
    config = {**dict(best_config), "max_train_steps": new_max_train_steps}
    how = {
        "linear": f"the linear decay keeps its {max_train_steps - warmup_steps} steps and the constant phase at the "
                  f"start grows by {extra}",
        "cosine": f"the cosine keeps its base learning rate and stretches over {new_max_train_steps} steps",
        "custom": f"the schedule holds its step-{at_step} value for {extra} more steps",
    }[kind]
    verdict = (f"Round 2 trains {new_max_train_steps} steps instead of {max_train_steps}: {how}. Steps below "
               f"{low_lr:.0%} of the peak learning rate: {low_one:.0%} in Round 1, {low_two:.0%} in Round 2.")
    return RoundTwo(second, config, kind, max_train_steps, new_max_train_steps, warmup_steps, steps, one, two,
                    (low_one, low_two), float(low_lr), verdict, tuple(warnings))


class _RoundTwoPlotData(NamedTuple):
    """What the Round-2 plot draws: both schedules against the step."""

    steps: np.ndarray
    round_one_lr: np.ndarray
    round_two_lr: np.ndarray
    max_train_steps: int
    new_max_train_steps: int
    title: str


def _round_two_plot_data(result: RoundTwo) -> _RoundTwoPlotData:
    return _RoundTwoPlotData(result.steps, result.round_one_lr, result.round_two_lr, result.max_train_steps,
                             result.new_max_train_steps,
                             f"Round 1 ({result.max_train_steps} steps) -> Round 2 ({result.new_max_train_steps}), "
                             f"{result.kind}")
