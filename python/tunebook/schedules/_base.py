"""Shared pieces of the schedules: the ``Schedule`` type, step handling, argument checks."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Union

import numpy as np
import numpy.typing as npt

StepLike = Union[int, npt.ArrayLike]
"""A step (int) or an array of steps; every schedule accepts both."""

Schedule = Callable[[StepLike], Union[float, np.ndarray]]
"""A learning-rate schedule: a pure function from the step count to the value.

Given an ``int`` it returns a ``float``; given an array of steps it returns a float64
array of the same shape, so a whole schedule can be tabulated in one call
(``schedule(np.arange(total_steps))``).
"""

ScalarOrSchedule = Union[float, Schedule]


# Steps beyond this are the same as this for every schedule (all have settled, or are
# periodic at a phase float64 cannot resolve); it keeps Python ints of any size finite.
_STEP_CLAMP = 2.0**1000


def _clamped(value: int) -> float:
    return float(max(-_STEP_CLAMP, min(_STEP_CLAMP, value)))


def as_steps(step: StepLike) -> tuple[np.ndarray, bool]:
    """Return ``(steps as float64 array, whether the input was a scalar)``.

    Any integer is a step, however large (``schedule(10**20)``); so are NumPy integers,
    floats and arrays of them.
    """
    if isinstance(step, int) and not isinstance(step, bool):
        return np.asarray(_clamped(step)), True
    array = np.asarray(step)
    if array.dtype == object and array.size and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) for s in array.flat
    ):
        return np.vectorize(_clamped, otypes=[np.float64])(array), array.ndim == 0
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(
            f"step must be an int or an array of ints, got {type(step).__name__}"
            + (f" of {array.dtype}" if isinstance(step, np.ndarray) else "")
        )
    return array.astype(np.float64), array.ndim == 0


def finish(values: np.ndarray, scalar: bool) -> float | np.ndarray:
    """Return a Python float for a scalar step, else the float64 array."""
    if scalar:
        return float(values)
    return np.asarray(values, dtype=np.float64)


def as_schedule(value: ScalarOrSchedule) -> Schedule:
    """Turn a constant into a constant schedule; pass a schedule through.

    This is what lets a ``float | Schedule`` go wherever a learning rate goes.
    """
    if callable(value):
        return value
    check_finite("value", value)
    from tunebook.schedules._decay import constant_schedule

    return constant_schedule(float(value))


def evaluate(schedule: Schedule, step: int) -> float:
    """Evaluate a schedule at one integer step, returning a float."""
    return float(schedule(int(step)))


# ---------------------------------------------------------------- argument checks
# Each takes the argument's name so the message reads like f"{warmup_steps=} must be >= 0".


def check_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a real number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float64
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name}={value!r} must be finite")
    return number


def check_nonnegative(name: str, value: object) -> float:
    value = check_finite(name, value)
    if value < 0:
        raise ValueError(f"{name}={value!r} must be >= 0")
    return value


def check_positive(name: str, value: object) -> float:
    value = check_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name}={value!r} must be > 0")
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    if value >= 2**63:
        raise ValueError(f"{name}={value!r} must be < 2**63 (a number of steps)")
    return int(value)


def check_fraction(name: str, value: object, *, open_low: bool = False, open_high: bool = False) -> float:
    value = check_finite(name, value)
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (low_ok and high_ok):
        interval = ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
        raise ValueError(f"{name}={value!r} must be in {interval}")
    return value
