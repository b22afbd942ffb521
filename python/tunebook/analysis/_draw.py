"""Drawing: each function takes the named tuple of a ``*_data`` function and returns a
matplotlib ``Figure`` (the object-oriented API, no pyplot state, any backend).

matplotlib is an optional dependency, imported on first use.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tunebook.analysis._axis import AxisPlotData
from tunebook.analysis._best_step import BestStepData
from tunebook.analysis._curves import TrainingCurvesData
from tunebook.analysis._grad_norms import GradNormData
from tunebook.analysis._isolation import IsolationPlotData
from tunebook.analysis._sampled_enough import SampledEnoughData

FEASIBLE_COLOR = "#1f77b4"
INFEASIBLE_COLOR = "#d62728"
BEST_COLOR = "#ff7f0e"
EXPLOIT_COLOR = "#2ca02c"
WARN_COLOR = "#b00020"


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tunebook's plots need matplotlib: pip install 'tunebook[plots]' (or pip install matplotlib)"
        ) from error
    return Figure(figsize=(width, height), layout="constrained")


def _grid(count: int, columns: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, list]:
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure = _figure(width * columns, height * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def _robust_limits(y: np.ndarray, mode: str) -> tuple[float, float] | None:
    """Y limits that keep the good end in view when a few trials are far worse."""
    y = y[np.isfinite(y)]
    if y.size == 0:
        return None
    lo, hi = float(y.min()), float(y.max())
    if y.size >= 5:
        if mode == "min":
            hi = min(hi, float(np.quantile(y, 0.8)) + (float(np.quantile(y, 0.8)) - lo))
        else:
            lo = max(lo, float(np.quantile(y, 0.2)) - (hi - float(np.quantile(y, 0.2))))
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1e-3)
    return lo - pad, hi + pad


def axis_plot(data: AxisPlotData, *, columns: int = 3) -> Any:
    """The metric against each hyperparameter; infeasible trials as red x along the top,
    exploitation trials as green diamonds (apart from the quasi-random dots), the best
    trial as an orange star, the search bounds as dotted lines, and a panel with a
    boundary warning titled in red."""
    if not data.panels:
        figure = _figure(4, 1.5)
        figure.text(0.5, 0.5, "no varied hyperparameter with finished trials", ha="center", va="center")
        return figure
    figure, axes = _grid(len(data.panels), columns)
    warned = {w.subject for w in data.warnings if w.code == "boundary"}
    for ax, panel in zip(axes, data.panels):
        hp = panel.hyperparameter
        exploit_y = np.asarray(getattr(panel, "exploit_y", np.zeros(0)), dtype=np.float64)
        limits = _robust_limits(np.concatenate([panel.y, exploit_y]), data.mode)
        exploit_x_values = tuple(getattr(panel, "exploit_x", ()))
        exploit_bad_values = tuple(getattr(panel, "exploit_infeasible_x", ()))
        if hp.numeric:
            x = np.asarray(panel.x, dtype=np.float64)
            bad_x = np.asarray(panel.infeasible_x + exploit_bad_values, dtype=np.float64)
            exploit_x = np.asarray(exploit_x_values, dtype=np.float64)
        else:
            order = {value: i for i, value in enumerate(dict.fromkeys(map(repr, (
                *hp.choices, *panel.x, *panel.infeasible_x, *exploit_x_values, *exploit_bad_values))))}
            jitter = np.random.default_rng(0)
            x = np.asarray([order[repr(v)] for v in panel.x], dtype=np.float64) + jitter.uniform(-0.15, 0.15, len(panel.x))
            bad_x = np.asarray([order[repr(v)] for v in panel.infeasible_x + exploit_bad_values], dtype=np.float64)
            exploit_x = np.asarray([order[repr(v)] for v in exploit_x_values], dtype=np.float64)
            ax.set_xticks(range(len(order)), [label.strip("'") for label in order], rotation=20)
        if exploit_y.size:
            clipped = np.clip(exploit_y, *limits) if limits is not None else exploit_y
            ax.scatter(exploit_x, clipped, s=26, marker="D", facecolors="none", edgecolors=EXPLOIT_COLOR,
                       alpha=0.9, label="exploitation (Bayesian)")
        y = panel.y.copy()
        if limits is not None:
            y_clipped = np.clip(y, *limits)
            outside = y_clipped != y
            ax.scatter(x[~outside], y[~outside], s=22, color=FEASIBLE_COLOR, alpha=0.8, label="trial")
            if outside.any():
                ax.scatter(x[outside], y_clipped[outside], s=22, marker="^", color=FEASIBLE_COLOR, alpha=0.5,
                           label="off scale")
            all_x, all_y = np.concatenate([x, exploit_x]), np.concatenate([y, exploit_y])
            best = int(np.argmin(all_y if data.mode == "min" else -all_y))
            ax.scatter([all_x[best]], [np.clip(all_y[best], *limits)], s=120, marker="*", color=BEST_COLOR, zorder=5,
                       label="best")
            top = limits[1] if data.mode == "min" else limits[0]
            ax.set_ylim(*limits)
        else:
            top = 1.0
        if bad_x.size:
            ax.scatter(bad_x, np.full(bad_x.size, top), marker="x", s=40, color=INFEASIBLE_COLOR,
                       clip_on=False, zorder=6, label="infeasible")
        if hp.numeric:
            if hp.scale == "log" and (panel.low or 0) > 0:
                ax.set_xscale("log")
            for bound in (panel.low, panel.high):
                if bound is not None:
                    ax.axvline(bound, color="0.5", linestyle=":", linewidth=1)
        ax.set_xlabel(hp.label)
        ax.set_ylabel(data.metric)
        if hp.label in warned:
            ax.set_title(f"{hp.label}\nbest trials near a boundary", color=WARN_COLOR, fontsize=10)
        else:
            ax.set_title(hp.label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return figure


def isolation_plot(data: IsolationPlotData) -> Any:
    """The best result per value (or bucket) of the scientific hyperparameter."""
    figure = _figure(5.5, 3.6)
    ax = figure.subplots()
    have = np.isfinite(data.best_values)
    if data.categorical:
        # Points, not bars: the y axis is zoomed to the differences, and a truncated bar misleads.
        ax.plot(data.positions[have], data.best_values[have], "o", color=FEASIBLE_COLOR, markersize=11)
        ax.set_xticks(data.positions, data.labels)
        ax.set_xlim(-0.6, len(data.positions) - 0.4)
        finite = data.best_values[have]
        if finite.size:
            span = finite.max() - finite.min()
            pad = 0.25 * span if span > 0 else 0.1 * abs(finite.max()) + 1e-3
            ax.set_ylim(finite.min() - pad, finite.max() + pad)
    else:
        ax.plot(data.positions[have], data.best_values[have], "o-", color=FEASIBLE_COLOR)
        if data.log:
            ax.set_xscale("log")
        for edge in data.edges:
            ax.axvline(edge, color="0.85", linewidth=0.8, zorder=0)
    for position, value, trial, count, bad in zip(
        data.positions, data.best_values, data.best_trials, data.counts, data.infeasible_counts
    ):
        text = f"trial {trial}\n{count} ok" + (f", {bad} x" if bad else "") if trial >= 0 else f"none\n{bad} x"
        ax.annotate(text, (position, value if np.isfinite(value) else ax.get_ylim()[0]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel(data.scientific)
    ax.set_ylabel(f"best {data.metric}")
    ax.set_title(f"best {data.metric} per {data.scientific}\n(nuisance hyperparameters optimised away)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return figure


def training_curves_plot(data: TrainingCurvesData, *, columns: int = 3) -> Any:
    """Training (dashed) and validation (solid) curves of the best trials; a trial
    with a diagnosis names it in red in its title."""
    if not data.curves:
        figure = _figure(4, 1.5)
        figure.text(0.5, 0.5, "no feasible trial", ha="center", va="center")
        return figure
    figure, axes = _grid(len(data.curves), columns, 4.4, 3.2)
    codes: dict[str, list[str]] = {}
    for warning in data.warnings:
        codes.setdefault(warning.subject, []).append(warning.code.replace("_", " "))
    for rank, (ax, curve) in enumerate(zip(axes, data.curves), 1):
        if curve.train_steps.size:
            ax.plot(curve.train_steps, curve.train_values, "--", color="0.45", linewidth=1, label=data.train_metric)
        if curve.valid_steps.size:
            ax.plot(curve.valid_steps, curve.valid_values, "-", color=FEASIBLE_COLOR, linewidth=1.6,
                    label=data.valid_metric)
        values = np.concatenate([curve.train_values, curve.valid_values])
        finite = values[np.isfinite(values)]
        if finite.size and data.mode == "min" and finite.min() > 0 and finite.max() / finite.min() > 20:
            ax.set_yscale("log")
        found = codes.get(f"trial {curve.trial}")
        title = f"#{rank}: trial {curve.trial}"
        if found:
            ax.set_title(f"{title}\n{', '.join(found)}", color=WARN_COLOR, fontsize=9)
        else:
            ax.set_title(f"{title}\nno problem found", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return figure


def best_step_plot(data: BestStepData, *, early: float = 0.1, late: float = 0.75) -> Any:
    """Histogram of the best checkpoint's position as a fraction of training, with the
    "too many steps" (first 10%) and "train longer" (last 25%) zones shaded."""
    figure = _figure(5.5, 3.2)
    ax = figure.subplots()
    ax.axvspan(0, early, color="#fdd", label=f"first {early:.0%}: too many steps")
    ax.axvspan(late, 1, color="#ffe9c7", label=f"last {1 - late:.0%}: train longer")
    if data.fractions.size:
        ax.hist(data.fractions, bins=np.linspace(0, 1, 21), color=FEASIBLE_COLOR, alpha=0.85, edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_xlabel("best checkpoint step / max_train_steps")
    ax.set_ylabel("trials")
    ax.set_title(f"where the best checkpoint falls ({data.fractions.size} feasible trials)", fontsize=10)
    ax.legend(fontsize=7)
    return figure


def grad_norm_plot(data: GradNormData, *, max_series: int = 12) -> Any:
    """Gradient norm against step (log scale) and its histogram, with the suggested
    clipping threshold (the 90th percentile) and the one in use."""
    figure = _figure(10, 3.4)
    left, right = figure.subplots(1, 2)
    for series in data.series[:max_series]:
        if series.norms.size:
            left.plot(series.steps, series.norms, linewidth=0.7, alpha=0.7, label=series.label)
    lines = [(data.suggested_clip, BEST_COLOR, f"p{data.percentile:.0f} = {data.suggested_clip:.3g} (suggested clip)")]
    if data.max_grad_norm is not None:
        lines.append((data.max_grad_norm, INFEASIBLE_COLOR, f"max_grad_norm = {data.max_grad_norm:.3g}"))
    if data.norms.size and (data.norms > 0).all():
        left.set_yscale("log")
    for value, color, label in lines:
        if math.isfinite(value):
            left.axhline(value, color=color, linestyle="--", linewidth=1.2, label=label)
            right.axvline(value, color=color, linestyle="--", linewidth=1.2, label=label)
    left.set_xlabel("step")
    left.set_ylabel("global gradient norm (before clipping)")
    left.legend(fontsize=6, ncol=2)
    left.grid(alpha=0.3)
    right.stairs(data.hist_counts, data.hist_edges, fill=True, color=FEASIBLE_COLOR, alpha=0.8)
    if data.hist_edges.size > 2 and data.hist_edges[0] > 0 and data.hist_edges[-1] / data.hist_edges[0] > 10:
        right.set_xscale("log")
    right.set_xlabel("global gradient norm")
    right.set_ylabel("updates")
    right.set_title(f"{data.clipped_fraction:.0%} of updates above the threshold"
                    + (f"; {data.nonfinite} non-finite" if data.nonfinite else ""), fontsize=9)
    right.legend(fontsize=7)
    return figure


def sampled_enough_plot(data: SampledEnoughData) -> Any:
    """Box plots of the best result against the trial budget (5/25/50/75/95%), one box
    colour per group, as the playbook's Figure 3."""
    figure = _figure(6.5, 3.6)
    ax = figure.subplots()
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    groups = data.groups
    width = 0.7 / max(len(groups), 1)
    all_budgets = sorted({int(k) for g in groups for k in g.budgets})
    place = {k: i for i, k in enumerate(all_budgets)}
    for g_index, group in enumerate(groups):
        stats, positions = [], []
        for k, row in zip(group.budgets, group.values):
            row = np.where(np.isfinite(row), row, np.nan)
            if np.isnan(row).all():
                continue
            low, q1, median, q3, high = (float(np.nan_to_num(v, nan=np.nanmax(row))) for v in row)
            stats.append({"whislo": low, "q1": q1, "med": median, "q3": q3, "whishi": high, "fliers": []})
            positions.append(place[int(k)] + (g_index - (len(groups) - 1) / 2) * width)
        if stats:
            boxes = ax.bxp(stats, positions=positions, widths=width * 0.9, patch_artist=True, manage_ticks=False,
                           medianprops={"color": "black"})
            for patch in boxes["boxes"]:
                patch.set_facecolor(colors[g_index % len(colors)])
                patch.set_alpha(0.6)
            ax.plot([], [], color=colors[g_index % len(colors)], linewidth=6, alpha=0.6,
                    label=f"{group.label} ({group.n_trials} trials)")
    ax.set_xticks(range(len(all_budgets)), [str(k) for k in all_budgets])
    ax.set_xlabel("trial budget k")
    ax.set_ylabel(f"best {data.metric} of k trials")
    ax.set_title("have we sampled enough? (bootstrap of the best of k)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:  # a group with no finite value draws no box
        ax.legend(fontsize=7)
    return figure


def lr_range_plot(result: Any) -> Any:
    """The LR range test: loss against learning rate (log scale) with the suggested range."""
    figure = _figure(5.5, 3.4)
    ax = figure.subplots()
    ax.plot(result.learning_rates, result.losses, color="0.7", linewidth=0.8, label="loss")
    ax.plot(result.learning_rates, result.smoothed, color=FEASIBLE_COLOR, linewidth=1.6, label="smoothed")
    low, high = result.suggested_range
    ax.axvspan(low, high, color="#e4f2e4", label=f"suggested range {low:.2g}–{high:.2g}")
    ax.axvline(result.steepest_lr, color=BEST_COLOR, linestyle="--", linewidth=1, label="steepest")
    ax.set_xscale("log")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if finite.size:
        ax.set_ylim(finite.min() - 0.05 * np.ptp(finite), finite[0] + 0.5 * np.ptp(finite) + 1e-12)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("LR range test" + (" (stopped: diverged)" if result.diverged else ""), fontsize=10)
    ax.legend(fontsize=7)
    return figure
