"""Where in training the best checkpoint comes: its step as a fraction of the run."""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np

from tunebook.analysis._trials import trial_views
from tunebook.analysis._warnings import AnalysisWarning


class BestStepData(NamedTuple):
    """The best checkpoint's step as a fraction of ``max_train_steps``, per feasible trial.

    Attributes:
        fractions: best step / the trial's last step (or ``max_train_steps``), in [0, 1].
        trials: the trial indices.
        steps: the best steps.
        max_steps: the run length used for each trial.
        warnings: ``best_step_early`` / ``best_step_late``.
    """

    fractions: np.ndarray
    trials: np.ndarray
    steps: np.ndarray
    max_steps: np.ndarray
    warnings: tuple[AnalysisWarning, ...]


def best_step_data(
    trials: Iterable[Any],
    *,
    metric: str = "valid_loss",
    max_train_steps: int | None = None,
    early: float = 0.1,
    late: float = 0.75,
    always: float = 0.9,
) -> BestStepData:
    """The distribution of the best checkpoint's position in training.

    The playbook: if the best checkpoint is always in the first 10% of training, the
    runs are far longer than they need to be; if it is always in the last 25%, they
    would probably gain from training longer. "Always" here means at least ``always``
    of the feasible trials (one odd trial should not hide the pattern).

    Args:
        trials: ``study.trials()`` or dicts.
        metric: the metric whose history gives each trial's last step when
            ``max_train_steps`` is not given.
        max_train_steps: the planned run length; default: each trial's last reported step.
        early, late: the fractions that count as early and late.
        always: the share of trials that makes a pattern, in (0, 1].
    """
    if max_train_steps is not None and max_train_steps < 1:
        raise ValueError(f"{max_train_steps=} must be >= 1")
    if not 0 < always <= 1:
        raise ValueError(f"{always=} must be in (0, 1]")
    fractions, indices, steps, lengths = [], [], [], []
    for trial in trial_views(trials):
        if not trial.feasible or trial.step < 0:
            continue
        length = max_train_steps
        if length is None:
            history_steps, _ = trial.history(metric)
            length = int(history_steps.max()) if history_steps.size else 0
        if length <= 0:
            continue
        fractions.append(min(trial.step / length, 1.0))
        indices.append(trial.index)
        steps.append(trial.step)
        lengths.append(length)
    fractions_array = np.asarray(fractions, dtype=np.float64)
    warnings = []
    n = fractions_array.size
    if n:
        share_early = float(np.mean(fractions_array <= early))
        share_late = float(np.mean(fractions_array >= late))
        if share_early >= always:
            warnings.append(AnalysisWarning(
                "best_step_early",
                f"the best checkpoint came in the first {early:.0%} of training in {share_early:.0%} of "
                f"{n} trials: max_train_steps is far larger than needed; shorten the runs and spend the "
                "compute on more trials.",
                "study",
            ))
        elif share_late >= always:
            warnings.append(AnalysisWarning(
                "best_step_late",
                f"the best checkpoint came in the last {1 - late:.0%} of training in {share_late:.0%} of "
                f"{n} trials: the runs would likely gain from training longer.",
                "study",
            ))
    return BestStepData(
        fractions_array,
        np.asarray(indices, dtype=np.int64),
        np.asarray(steps, dtype=np.int64),
        np.asarray(lengths, dtype=np.int64),
        tuple(warnings),
    )
