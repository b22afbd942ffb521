"""The Deep Learning Tuning Playbook's procedures, as functions.

Each procedure takes the playbook's numbers as documented defaults and returns a
result (a named tuple) holding its data, a ``verdict`` for a person and structured
``warnings`` (:class:`tunebook.analysis.AnalysisWarning`). Its drawing is a separate
function that imports matplotlib only when called. ``result.record(study)`` (or the
procedure's ``study=`` / ``record=True``) stores the result with a
:class:`tunebook.Study`; ``tunebook report`` then shows it in a section of its own.

==============================================  ==================================  ==============================
playbook section                                procedure                           drawing
==============================================  ==================================  ==============================
Choosing the batch size (throughput)            :func:`throughput_sweep`            :func:`throughput_plot`
Deciding how long to train (not compute-bound)  :func:`constant_lr_sweep`,          :func:`max_train_steps_plot`
                                                :func:`max_train_steps_from_sweep`
Identifying unstable workloads                  :func:`detect_instability`          :func:`instability_plot`
  ... with a learning-rate sweep (Fig. 7a/7b)   :func:`lr_sweep_instability`        :func:`lr_sweep_instability_plot`
  ... early in training (Fig. 5)                :func:`early_instability_check`     :func:`early_instability_plot`
How to apply learning rate warmup               :func:`warmup_sweep`,               :func:`warmup_plot`
                                                :func:`shortest_stable_warmup`,
                                                :func:`with_warmup`
Deciding how long to train (compute-bound)      :func:`round_two`                   :func:`round_two_plot`
==============================================  ==================================  ==============================

Example:
    >>> from tunebook.playbook import warmup_sweep, with_warmup
    >>> sweep = warmup_sweep(unstable_base_lr=0.5, max_train_steps=10_000)
    >>> sweep.base_learning_rate, sweep.warmup_steps
    (5.0, (10, 100, 1000))
    >>> with_warmup(0.1, 1_000, 10_000).max_train_steps
    11000
"""

from tunebook.playbook._detect import Instability, InstabilityEvent, detect_instability
from tunebook.playbook._grid import GridSpace
from tunebook.playbook._instability import (
    CurveAboveBest,
    EarlyInstabilityCheck,
    LRSweepInstability,
    early_instability_check,
    lr_sweep_instability,
)
from tunebook.playbook._record import Record, record, recorded
from tunebook.playbook._round_two import RoundTwo, round_two
from tunebook.playbook._steps import MaxTrainSteps, constant_lr_sweep, max_train_steps_from_sweep
from tunebook.playbook._throughput import ThroughputSweep, is_out_of_memory, throughput_sweep
from tunebook.playbook._warmup import (
    ShortestStableWarmup,
    WarmupSweep,
    WithWarmup,
    shortest_stable_warmup,
    warmup_sweep,
    with_warmup,
)

_DRAWING = (
    "early_instability_plot",
    "instability_plot",
    "lr_sweep_instability_plot",
    "max_train_steps_plot",
    "plot",
    "round_two_plot",
    "throughput_plot",
    "warmup_plot",
)

__all__ = [
    "CurveAboveBest",
    "EarlyInstabilityCheck",
    "GridSpace",
    "Instability",
    "InstabilityEvent",
    "LRSweepInstability",
    "MaxTrainSteps",
    "Record",
    "RoundTwo",
    "ShortestStableWarmup",
    "ThroughputSweep",
    "WarmupSweep",
    "WithWarmup",
    "constant_lr_sweep",
    "detect_instability",
    "early_instability_check",
    "is_out_of_memory",
    "lr_sweep_instability",
    "max_train_steps_from_sweep",
    "record",
    "recorded",
    "round_two",
    "shortest_stable_warmup",
    "throughput_sweep",
    "warmup_sweep",
    "with_warmup",
    *_DRAWING,
]


def __getattr__(name: str):
    # Drawing functions load on first use; the procedures never need matplotlib.
    if name in _DRAWING:
        from tunebook.playbook import _draw

        return getattr(_draw, name)
    raise AttributeError(f"module 'tunebook.playbook' has no attribute {name!r}")
