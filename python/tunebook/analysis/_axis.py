"""Hyperparameter axis plots: the metric against each hyperparameter, with infeasible
trials as red x, and the playbook's checks on search-space boundaries (its Figure 1)
and on the fraction of infeasible trials."""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple

import numpy as np

from tunebook.analysis._trials import Hyperparameter, hyperparameters, oriented, trial_views
from tunebook.analysis._warnings import AnalysisWarning


class AxisPanel(NamedTuple):
    """One axis plot.

    Attributes:
        hyperparameter: the :class:`Hyperparameter` on the x axis.
        x: its value in each feasible trial where it is active (categorical values for a
            categorical one).
        y: those trials' best metric values.
        trials: those trials' indices.
        infeasible_x: its value in each infeasible trial where it is active (red x).
        infeasible_trials: their indices.
        low, high: the search-space bounds (the observed range without a space).
        best_x: the value in the best trial of this panel (quasi-random or
            exploitation), or None.
        exploit_x, exploit_y, exploit_trials: the feasible exploitation trials
            (:meth:`tunebook.Study.exploit`), kept apart from the quasi-random ones:
            they are not a uniform sample, so the boundary check leaves them out.
        exploit_infeasible_x: the infeasible exploitation trials.
    """

    hyperparameter: Hyperparameter
    x: tuple[Any, ...]
    y: np.ndarray
    trials: np.ndarray
    infeasible_x: tuple[Any, ...]
    infeasible_trials: np.ndarray
    low: float | None
    high: float | None
    best_x: Any
    exploit_x: tuple[Any, ...] = ()
    exploit_y: np.ndarray = np.zeros(0)
    exploit_trials: np.ndarray = np.zeros(0, dtype=np.int64)
    exploit_infeasible_x: tuple[Any, ...] = ()


class AxisPlotData(NamedTuple):
    """The axis plots of a study: one panel per varied hyperparameter, plus warnings.

    ``n_feasible`` and ``n_infeasible`` count quasi-random trials; ``n_exploit`` the
    exploitation trials (replicates are left out: they repeat a trial's point).
    """

    metric: str
    mode: str
    panels: tuple[AxisPanel, ...]
    n_feasible: int
    n_infeasible: int
    warnings: tuple[AnalysisWarning, ...]
    n_exploit: int = 0


def _unit(values: np.ndarray, low: float, high: float, log: bool) -> np.ndarray:
    """Map values to [0, 1] within the bounds, in log space for a log scale."""
    if log:
        values, low, high = np.log(values), math.log(low), math.log(high)
    return (values - low) / (high - low)


def boundary_warnings(
    panel: AxisPanel, mode: str, *, edge: float = 0.1, top_fraction: float = 0.1, min_top: int = 3
) -> list[AnalysisWarning]:
    """Warn when the best trials crowd one end of a numeric search range.

    The best ``k = max(min_top, ceil(top_fraction * n))`` trials of the panel are
    mapped to [0, 1] within the bounds (log-scaled for a log hyperparameter). The warning
    fires for an end when the single best trial lies within ``edge`` of it and so do at
    least half of the top k: the optimum may lie outside the space, so expand it.
    """
    hp = panel.hyperparameter
    if not hp.numeric or panel.low is None or panel.high is None or panel.high <= panel.low or len(panel.y) < 2:
        return []
    log = hp.scale == "log" and panel.low > 0
    x = np.asarray(panel.x, dtype=np.float64)
    order = np.argsort(oriented(panel.y, mode), kind="stable")
    k = min(len(order), max(min_top, math.ceil(top_fraction * len(order))))
    top = _unit(x[order[:k]], panel.low, panel.high, log)
    found = []
    for end, near in (("lower", top <= edge), ("upper", top >= 1.0 - edge)):
        if near[0] and near.sum() * 2 >= k:
            bound = panel.low if end == "lower" else panel.high
            found.append(AnalysisWarning(
                "boundary",
                f"{hp.label}: the best trial and {int(near.sum())} of the top {k} sit within {edge:.0%} of "
                f"the {end} bound {bound:.4g}; the optimum may lie outside the search space, so extend "
                f"the {end} bound and search again.",
                hp.label,
            ))
    return found


def axis_plot_data(
    trials: Iterable[Any],
    space: Any = None,
    *,
    metric: str = "valid_loss",
    mode: str = "min",
    edge: float = 0.1,
    max_infeasible_fraction: float = 0.2,
) -> AxisPlotData:
    """The numbers behind the axis plots.

    Args:
        trials: ``study.trials()`` or dicts (see :mod:`tunebook.analysis`).
        space: the study's :class:`~tunebook.search.SearchSpace`, for the bounds and the
            conditional structure; without it both are inferred from the trials.
        metric: the metric's name, for labels.
        mode: "min" or "max".
        edge: the width of the boundary band, as a fraction of the range.
        max_infeasible_fraction: warn when more than this fraction of finished trials
            is infeasible.

    Returns:
        An :class:`AxisPlotData`. Hyperparameters that take a single value in the trials
        (fixed ones) get no panel. Replicates are left out; exploitation trials are
        kept apart in each panel (``exploit_*``), out of the boundary and
        infeasible-fraction checks, which are about the quasi-random sample.
    """
    views = [t for t in trial_views(trials) if t.kind != "replicate"]
    exploit = [t for t in views if t.kind == "exploit"]
    views = [t for t in views if t.kind != "exploit"]
    feasible = [t for t in views if t.feasible]
    infeasible = [t for t in views if t.infeasible]
    exploit_feasible = [t for t in exploit if t.feasible]
    panels = []
    warnings: list[AnalysisWarning] = []
    for hp in hyperparameters(space, views):
        if hp.kind == "fixed":
            continue
        mine = [t for t in feasible if hp.active(t.params)]
        bad = [t for t in infeasible if hp.active(t.params)]
        exploited = [t for t in exploit_feasible if hp.active(t.params)]
        exploited_bad = [t for t in exploit if t.infeasible and hp.active(t.params)]
        values = [t.params[hp.name] for t in mine + bad + exploited + exploited_bad]
        if len({repr(v) for v in values}) < 2:
            continue
        y = np.asarray([t.value for t in mine], dtype=np.float64)
        low, high = hp.low, hp.high
        if hp.numeric and (low is None or high is None) and values:
            low, high = float(min(values)), float(max(values))
        both = mine + exploited
        scores = oriented(np.asarray([t.value for t in both], dtype=np.float64), mode)
        best_x = both[int(np.argmin(scores))].params[hp.name] if both else None
        panel = AxisPanel(
            hyperparameter=hp,
            x=tuple(t.params[hp.name] for t in mine),
            y=y,
            trials=np.asarray([t.index for t in mine], dtype=np.int64),
            infeasible_x=tuple(t.params[hp.name] for t in bad),
            infeasible_trials=np.asarray([t.index for t in bad], dtype=np.int64),
            low=low,
            high=high,
            best_x=best_x,
            exploit_x=tuple(t.params[hp.name] for t in exploited),
            exploit_y=np.asarray([t.value for t in exploited], dtype=np.float64),
            exploit_trials=np.asarray([t.index for t in exploited], dtype=np.int64),
            exploit_infeasible_x=tuple(t.params[hp.name] for t in exploited_bad),
        )
        panels.append(panel)
        warnings.extend(boundary_warnings(panel, mode, edge=edge))
    finished = len(feasible) + len(infeasible)
    if finished and len(infeasible) / finished > max_infeasible_fraction:
        warnings.append(AnalysisWarning(
            "infeasible_fraction",
            f"{len(infeasible)} of {finished} finished trials ({len(infeasible) / finished:.0%}) are "
            f"infeasible (more than {max_infeasible_fraction:.0%}): narrow the search space away from "
            "where they fail (see the red x), or make training more stable (warmup, clipping).",
            "study",
        ))
    return AxisPlotData(metric, mode, tuple(panels), len(feasible), len(infeasible), tuple(warnings), len(exploit))
