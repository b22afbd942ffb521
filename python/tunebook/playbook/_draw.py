"""Drawing the procedures' results: each function takes a result, asks its module's
``_*_plot_data`` for the numbers (tested without matplotlib) and returns a matplotlib
``Figure`` (object-oriented API, any backend). matplotlib is imported on first use."""

from __future__ import annotations

from typing import Any

import numpy as np

from tunebook.analysis._draw import BEST_COLOR, FEASIBLE_COLOR, INFEASIBLE_COLOR, WARN_COLOR, _figure
from tunebook.playbook._detect import Instability, _curve_plot_data, _CurvePlotData
from tunebook.playbook._instability import (
    EarlyInstabilityCheck,
    LRSweepInstability,
    _early_check_plot_data,
    _lr_sweep_plot_data,
)
from tunebook.playbook._round_two import RoundTwo, _round_two_plot_data
from tunebook.playbook._steps import MaxTrainSteps, _max_train_steps_plot_data
from tunebook.playbook._throughput import ThroughputSweep, _throughput_plot_data
from tunebook.playbook._warmup import ShortestStableWarmup, _warmup_plot_data

STABLE_COLOR = "#2e7d32"


def throughput_plot(sweep: ThroughputSweep) -> Any:
    """Throughput (examples/s) and time per step against the batch size (log2 axis),
    with perfect scaling dashed, the recommended size starred and where the sweep
    stopped marked."""
    data = _throughput_plot_data(sweep)
    figure = _figure(10, 3.6)
    left, right = figure.subplots(1, 2)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
        if data.stopped_at is not None and data.stop_label:
            ax.axvline(data.stopped_at, color=INFEASIBLE_COLOR, linestyle=":", linewidth=1.2,
                       label=f"{data.stop_label} ({data.stopped_at})")
    if data.x.size:
        left.plot(data.x, data.ideal, "--", color="0.6", linewidth=1, label="perfect scaling")
        left.plot(data.x, data.throughput, "o-", color=FEASIBLE_COLOR, label="measured")
        right.plot(data.x, data.time_per_step_ms, "o-", color=FEASIBLE_COLOR)
        if data.recommended is not None:
            i = int(np.flatnonzero(data.x == data.recommended)[0])
            left.scatter([data.x[i]], [data.throughput[i]], s=160, marker="*", color=BEST_COLOR, zorder=5,
                         label=f"use {data.recommended}")
            right.scatter([data.x[i]], [data.time_per_step_ms[i]], s=160, marker="*", color=BEST_COLOR, zorder=5)
        left.set_yscale("log")
    left.set_ylabel("examples / s")
    right.set_ylabel("time per step (ms)")
    left.legend(fontsize=7)
    figure.suptitle(data.title, fontsize=10)
    return figure


def _draw_curve(ax: Any, curve: _CurvePlotData, color: Any, *, log_x: bool = False) -> None:
    ax.plot(curve.steps, curve.losses, "-", color=color, linewidth=1, alpha=0.85, label=curve.label)
    marks = {"rise": ("^", WARN_COLOR), "spike": ("v", "#8e24aa")}
    for step, loss, kind in zip(curve.event_steps, curve.event_losses, curve.event_kinds):
        marker, mark_color = marks.get(kind, ("o", WARN_COLOR))
        if np.isfinite(loss):
            ax.scatter([step], [loss], marker=marker, s=60, color=mark_color, zorder=5)
    if curve.diverged_at is not None:
        ax.axvline(curve.diverged_at, color=INFEASIBLE_COLOR, linestyle=":", linewidth=1)
    if log_x:
        ax.set_xscale("symlog", linthresh=1)


def instability_plot(found: Instability, *, label: str = "loss", log_x: bool = False) -> Any:
    """One loss curve with its trend and its instability events marked (rises ^,
    spikes v, a non-finite loss as a dotted red line)."""
    curve = _curve_plot_data(label, found)
    figure = _figure(6, 3.4)
    ax = figure.subplots()
    _draw_curve(ax, curve, FEASIBLE_COLOR, log_x=log_x)
    ax.plot(curve.steps, curve.trend, "-", color="0.3", linewidth=1.4, label="trend (running median)")
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(found.verdict if len(found.verdict) < 90 else found.verdict[:87] + "...", fontsize=8,
                 color=WARN_COLOR if found.unstable else "black")
    return figure


def early_instability_plot(check: EarlyInstabilityCheck) -> Any:
    """The early-instability check's loss, every evaluation, on a log-step axis
    (the playbook's Figure 5)."""
    data = _early_check_plot_data(check)
    figure = _figure(6.5, 3.6)
    ax = figure.subplots()
    _draw_curve(ax, data.curve, FEASIBLE_COLOR, log_x=data.log_x)
    ax.plot(data.curve.steps, data.curve.trend, "-", color="0.3", linewidth=1.2, label="trend")
    ax.set_xlabel("step (log scale)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(data.title, fontsize=10, color=WARN_COLOR if check.unstable else "black")
    return figure


def lr_sweep_instability_plot(result: LRSweepInstability) -> Any:
    """Left, the metric against the learning rate (infeasible trials as red x on top,
    lr* starred: Figure 7a); right, the training loss of the trials just above lr*
    with their instabilities marked (Figure 7b)."""
    data = _lr_sweep_plot_data(result)
    figure = _figure(10.5, 3.8)
    left, right = figure.subplots(1, 2)
    left.scatter(data.feasible_lr, data.feasible_values, s=24, color=FEASIBLE_COLOR, label="trial")
    left.scatter([data.best_lr], [data.best_value], s=160, marker="*", color=BEST_COLOR, zorder=5, label="lr*")
    finite = data.feasible_values[np.isfinite(data.feasible_values)]
    if data.infeasible_lr.size:
        top = float(finite.max()) if finite.size else 1.0
        left.scatter(data.infeasible_lr, np.full(data.infeasible_lr.size, top), marker="x", s=44,
                     color=INFEASIBLE_COLOR, zorder=6, label="infeasible")
    left.set_xscale("log")
    left.set_xlabel(data.lr_param)
    left.set_ylabel(data.metric)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    if data.edge_warning:
        left.set_title("best learning rate at the edge of the feasible region", fontsize=9, color=WARN_COLOR)
    colors = _colors(len(data.curves))
    for curve, color in zip(data.curves, colors):
        _draw_curve(right, curve, color)
    if data.curves:
        right.legend(fontsize=7)
        losses = np.concatenate([c.losses for c in data.curves])
        if losses.size and losses.min() > 0 and losses.max() / losses.min() > 20:
            right.set_yscale("log")
    else:
        right.text(0.5, 0.5, "no curves above lr*", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("step")
    right.set_ylabel("training loss")
    right.grid(alpha=0.3)
    right.set_title("training loss just above lr*", fontsize=9)
    figure.suptitle(data.title, fontsize=10, color=WARN_COLOR if result.unstable else "black")
    return figure


def max_train_steps_plot(result: MaxTrainSteps) -> Any:
    """Left, each learning rate's training metric against the step with the target
    dashed and the fastest fit starred; right, the steps to fit against the learning
    rate (trials that never fit as red x on top)."""
    data = _max_train_steps_plot_data(result)
    figure = _figure(10.5, 3.8)
    left, right = figure.subplots(1, 2)
    for (label, steps, values), color in zip(data.curves, _colors(len(data.curves))):
        left.plot(steps, values, "-", color=color, linewidth=1, label=label)
    left.axhline(data.target, color="0.4", linestyle="--", linewidth=1, label=f"target {data.target:g}")
    if data.fit_step is not None:
        left.axvline(data.fit_step, color=BEST_COLOR, linewidth=1.2, label=f"fit at step {data.fit_step}")
    left.set_xlabel("step")
    left.set_ylabel(data.metric)
    left.grid(alpha=0.3)
    left.legend(fontsize=6, ncol=2)
    right.scatter(data.fit_lr, data.fit_steps, s=30, color=FEASIBLE_COLOR, label="steps to fit")
    if data.fit_step is not None:
        best = data.fit_steps == data.fit_step
        right.scatter(data.fit_lr[best], data.fit_steps[best], s=160, marker="*", color=BEST_COLOR, zorder=5,
                      label="fastest")
    if data.never_lr.size:
        right.scatter(data.never_lr, np.full(data.never_lr.size, data.sweep_steps), marker="x", s=44,
                      color=INFEASIBLE_COLOR, label="never fit")
    right.set_xscale("log")
    right.set_xlabel("learning rate")
    right.set_ylabel("steps to fit")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    figure.suptitle(data.title, fontsize=10)
    return figure


def warmup_plot(result: ShortestStableWarmup) -> Any:
    """Left, each warmup's training loss on a log-step axis (Figure 6), stable ones
    green and the rest red; right, stable (o) or blew up (x) against the warmup, with
    the 5% and 10% marks of max_train_steps."""
    data = _warmup_plot_data(result)
    figure = _figure(10.5, 3.8)
    left, right = figure.subplots(1, 2)
    for label, steps, losses, ok in data.curves:
        left.plot(steps, losses, "-", color=STABLE_COLOR if ok else INFEASIBLE_COLOR, alpha=0.8, linewidth=1,
                  label=label)
    left.set_xscale("symlog", linthresh=1)
    left.set_xlabel("step (log scale)")
    left.set_ylabel("training loss")
    left.grid(alpha=0.3)
    if data.curves:
        left.legend(fontsize=7)
    ok = data.stable
    right.scatter(data.tried[ok], np.ones(int(ok.sum())), s=60, color=STABLE_COLOR, label="stable")
    right.scatter(data.tried[~ok], np.zeros(int((~ok).sum())), s=60, marker="x", color=INFEASIBLE_COLOR,
                  label="blew up")
    if data.answer is not None:
        right.scatter([data.answer], [1], s=200, marker="*", color=BEST_COLOR, zorder=5, label="shortest stable")
    right.axvline(data.long_mark, color="0.5", linestyle="--", linewidth=1, label="5% of max_train_steps")
    right.axvline(data.max_mark, color="0.3", linestyle=":", linewidth=1, label="10%")
    right.set_xscale("log")
    right.set_yticks([0, 1], ["blew up", "stable"])
    right.set_ylim(-0.5, 1.5)
    right.set_xlabel("warmup steps")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    figure.suptitle(data.title, fontsize=10)
    return figure


def round_two_plot(result: RoundTwo) -> Any:
    """Round 1's and Round 2's learning-rate schedules against the step."""
    data = _round_two_plot_data(result)
    figure = _figure(6.5, 3.4)
    ax = figure.subplots()
    ax.plot(data.steps, data.round_one_lr, "--", color="0.45", label="Round 1")
    ax.plot(data.steps, data.round_two_lr, "-", color=FEASIBLE_COLOR, label="Round 2")
    ax.axvline(data.max_train_steps, color="0.7", linestyle=":", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(data.title, fontsize=10)
    return figure


def plot(result: Any) -> Any:
    """The figure of any procedure's result."""
    drawings = {
        ThroughputSweep: throughput_plot, MaxTrainSteps: max_train_steps_plot, Instability: instability_plot,
        LRSweepInstability: lr_sweep_instability_plot, EarlyInstabilityCheck: early_instability_plot,
        ShortestStableWarmup: warmup_plot, RoundTwo: round_two_plot,
    }
    draw = drawings.get(type(result))
    if draw is None:
        raise TypeError(f"no drawing for a {type(result).__name__}")
    return draw(result)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.05, 0.85, max(n, 1))][:n]
