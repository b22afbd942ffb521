"""Learning-rate schedules as pure functions of the step, as optax writes them.

A schedule maps the step count to a value: ``schedule(int) -> float`` and
``schedule(array) -> array``. Build them, prepend a warmup, join them in time, then
hand them to an optimizer through :class:`ScheduleLR` (any torch optimizer, host side)
or :class:`DeviceSchedule` (the learning rate lives on the device; CUDA-graph safe).

Example:
    >>> from tunebook.schedules import cosine_decay_schedule, linear_warmup
    >>> schedule = linear_warmup(cosine_decay_schedule(0.1, decay_steps=900), warmup_steps=100)
    >>> schedule(0), schedule(100), round(schedule(1000), 12)
    (0.0, 0.1, 0.0)
"""

from tunebook.schedules._base import ScalarOrSchedule, Schedule, as_schedule
from tunebook.schedules._cyclic import OneCycle, cyclic_schedule, one_cycle
from tunebook.schedules._decay import (
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    linear_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
    rsqrt_schedule,
)
from tunebook.schedules._join import (
    extend_constant_phase,
    join_schedules,
    linear_warmup,
    warmup_cosine_decay_schedule,
)
from tunebook.schedules._range_test import LRRangeTest, lr_range_schedule, lr_range_test

__all__ = [
    "DeviceSchedule",
    "LRRangeTest",
    "OneCycle",
    "ScalarOrSchedule",
    "Schedule",
    "ScheduleLR",
    "as_schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cyclic_schedule",
    "exponential_decay",
    "extend_constant_phase",
    "join_schedules",
    "linear_schedule",
    "linear_warmup",
    "lr_range_schedule",
    "lr_range_test",
    "one_cycle",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "rsqrt_schedule",
    "warmup_cosine_decay_schedule",
]


def __getattr__(name: str):
    # The torch adapters are imported on first use, so pure schedules need no torch.
    if name in ("ScheduleLR", "DeviceSchedule"):
        from tunebook.schedules import _torch

        return getattr(_torch, name)
    raise AttributeError(f"module 'tunebook.schedules' has no attribute {name!r}")
