"""Have we sampled enough? The best result against the trial budget, by bootstrap
(the playbook's Figure 3)."""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from tunebook.analysis._trials import trial_views
from tunebook.analysis._warnings import AnalysisWarning

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class SampledEnoughGroup(NamedTuple):
    """The bootstrap for one group of trials.

    Attributes:
        label: the group ("all", or e.g. "optimizer=adam").
        n_trials: finished trials in the group (infeasible ones count: they were paid for).
        n_feasible: of which feasible.
        budgets: the trial budgets k.
        quantiles: the quantile levels (box-plot whiskers and box: 5/25/50/75/95%).
        values: the quantiles of the best of k, shape ``(len(budgets), len(quantiles))``.
    """

    label: str
    n_trials: int
    n_feasible: int
    budgets: np.ndarray
    quantiles: np.ndarray
    values: np.ndarray


class SampledEnoughData(NamedTuple):
    metric: str
    mode: str
    groups: tuple[SampledEnoughGroup, ...]
    warnings: tuple[AnalysisWarning, ...]


def default_budgets(n: int) -> np.ndarray:
    """1, 2, 4, ... up to ``n``, and ``n`` itself."""
    budgets = [1 << i for i in range(max(int(math.log2(max(n, 1))) + 1, 1)) if (1 << i) <= n]
    if n >= 1 and budgets[-1] != n:
        budgets.append(n)
    return np.asarray(budgets or [1], dtype=np.int64)


def sampled_enough_data(
    trials: Iterable[Any],
    *,
    metric: str = "valid_loss",
    mode: str = "min",
    group_by: str | None = None,
    budgets: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    tolerance: float = 0.1,
) -> SampledEnoughData:
    r"""Bootstrap the best of k trials for growing budgets k, per group.

    Each finished trial contributes its best value; infeasible trials count as drawn
    but never as the best (:func:`tunebook.checkpoints.bootstrap_best_of_k`). The
    check: if the median best still moves between half the budget and the full
    budget, by more than ``tolerance`` of its total gain from one trial,

    .. math:: |m(n) - m(\lceil n/2\rceil)| > \text{tolerance}\cdot|m(1) - m(n)|,

    another round of trials would likely find better: not sampled enough.

    Args:
        trials: ``study.trials()`` or dicts.
        metric, mode: the metric's name and direction.
        group_by: a hyperparameter to split by (the scientific one, to check that each
            side of a comparison was searched equally well); None for all trials.
        budgets: the budgets k; default 1, 2, 4, ... and n.
        n_boot: bootstrap samples per budget.
        seed: the bootstrap's seed.
        tolerance: see above.
    """
    from tunebook.checkpoints import bootstrap_best_of_k

    # Only the quasi-random trials are draws from the search space: replicates repeat a
    # point and exploitation trials are chosen by a model.
    views = [t for t in trial_views(trials) if (t.feasible or t.infeasible) and t.kind == "quasirandom"]
    if group_by is None:
        groups = [("all", views)]
    else:
        groups = {}
        for trial in views:
            if group_by in trial.params:
                groups.setdefault(f"{group_by}={trial.params[group_by]}", []).append(trial)
        groups = list(groups.items())
    result, warnings = [], []
    for label, members in groups:
        values = np.asarray([t.value if t.feasible else np.nan for t in members], dtype=np.float64)
        n = values.size
        ks = default_budgets(n) if budgets is None else np.asarray(budgets, dtype=np.int64)
        boot = bootstrap_best_of_k(values, ks, n_boot=n_boot, quantiles=QUANTILES, seed=seed, mode=mode)
        group = SampledEnoughGroup(label, n, int(np.isfinite(values).sum()), boot.budgets, boot.quantiles, boot.values)
        result.append(group)
        if n >= 4 and np.isfinite(values).any():
            median = boot.values[:, QUANTILES.index(0.5)]
            at = {int(k): m for k, m in zip(ks, median)}
            half = math.ceil(n / 2)
            if n in at and 1 in at:
                if half not in at:
                    at[half] = bootstrap_best_of_k(values, [half], n_boot=n_boot, quantiles=[0.5],
                                                   seed=seed, mode=mode).values[0, 0]
                if not math.isfinite(at[1]):  # most single draws are infeasible: start from the worst feasible
                    finite = values[np.isfinite(values)]
                    at[1] = finite.max() if mode == "min" else finite.min()
                total = abs(at[1] - at[n])
                recent = abs(at[n] - at[half])
                if math.isfinite(total) and math.isfinite(recent) and total > 0 and recent > tolerance * total:
                    warnings.append(AnalysisWarning(
                        "not_sampled_enough",
                        f"{label}: the median best of {n} trials is still {recent / total:.0%} of its total gain "
                        f"better than the best of {half}: more trials would likely find a better "
                        "configuration; extend the study before drawing conclusions.",
                        label,
                    ))
    return SampledEnoughData(metric, mode, tuple(result), tuple(warnings))
