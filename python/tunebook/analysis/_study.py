"""Everything the playbook asks of a finished study, computed in one call."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from tunebook.analysis._axis import AxisPlotData, axis_plot_data
from tunebook.analysis._best_step import BestStepData, best_step_data
from tunebook.analysis._curves import TrainingCurvesData, training_curves_data
from tunebook.analysis._grad_norms import GradNormData, grad_norm_data
from tunebook.analysis._isolation import IsolationPlotData, isolation_plot_data
from tunebook.analysis._sampled_enough import SampledEnoughData, sampled_enough_data
from tunebook.analysis._trials import hyperparameters, trial_views
from tunebook.analysis._warnings import AnalysisWarning


class StudyAnalysis(NamedTuple):
    """The data of every plot of a study, and all warnings in one list."""

    metric: str
    mode: str
    scientific: tuple[str, ...]
    axis: AxisPlotData
    isolation: tuple[IsolationPlotData, ...]
    curves: TrainingCurvesData
    best_step: BestStepData
    grad_norms: GradNormData | None
    sampled_enough: SampledEnoughData
    warnings: tuple[AnalysisWarning, ...]


def default_scientific(trials: Sequence[Any], space: Any = None) -> tuple[str, ...]:
    """The hyperparameters to isolate when none are named: the top-level (unconditional)
    categorical ones that vary, else every top-level one that varies."""
    views = trial_views(trials)
    varied = []
    for hp in hyperparameters(space, views):
        if hp.conditions or hp.kind == "fixed":
            continue
        values = {repr(t.params[hp.name]) for t in views if hp.name in t.params}
        if len(values) >= 2:
            varied.append(hp)
    categorical = [hp.name for hp in varied if not hp.numeric]
    return tuple(dict.fromkeys(categorical or [hp.name for hp in varied]))


def analyze_study(
    study_or_trials: Any,
    space: Any = None,
    *,
    metric: str | None = None,
    mode: str | None = None,
    scientific: Sequence[str] | None = None,
    train_metric: str = "train_loss",
    grad_norm_metric: str = "grad_norm",
    max_grad_norm: float | None = None,
    max_train_steps: int | None = None,
    top: int = 3,
    n_boot: int = 1000,
) -> StudyAnalysis:
    """Run every analysis on a study.

    Args:
        study_or_trials: a :class:`tunebook.Study` (its trials, space, metric and mode are
            used) or a list of trials (TrialRecords or dicts).
        space: the search space, when passing trials.
        metric, mode: the validation metric and its direction (default: the study's, else
            ``"valid_loss"``/``"min"``).
        scientific: hyperparameters for isolation plots (default: the study's declared
            scientific hyperparameters, ``Study(scientific=...)``, else
            :func:`default_scientific`); the first categorical one also splits the
            "sampled enough" bootstrap. Each isolation plot takes the best trial per
            value, which optimises every other searched hyperparameter away: with
            declared roles, those are the declared nuisance ones.
        train_metric: the training curve's metric.
        grad_norm_metric: the per-step metric holding gradient norms, if reported.
        max_grad_norm: the clipping threshold that was in use, if any.
        max_train_steps: the run length for the best-step fractions (default: each
            trial's last reported step).
        top: how many best trials get curves.
        n_boot: bootstrap samples per budget.
    """
    if hasattr(study_or_trials, "trials") and callable(study_or_trials.trials):
        study = study_or_trials
        trials = list(study.trials())
        space = space if space is not None else getattr(study, "space", None)
        metric = metric or getattr(study, "metric", None)
        mode = mode or getattr(study, "mode", None)
        declared = getattr(getattr(study, "roles", None), "scientific", ())
        if scientific is None and declared:
            scientific = declared
    else:
        trials = list(study_or_trials)
    metric = metric or "valid_loss"
    mode = mode or "min"
    views = [v for v in trial_views(trials) if v.kind != "replicate"]
    scientific = tuple(scientific) if scientific is not None else default_scientific(views, space)

    axis = axis_plot_data(views, space, metric=metric, mode=mode)
    isolation = []
    for name in scientific:
        try:
            isolation.append(isolation_plot_data(views, name, space, metric=metric, mode=mode))
        except ValueError:
            continue  # no trial has it yet
    curves = training_curves_data(views, train_metric=train_metric, valid_metric=metric, mode=mode, top=top)
    best_step = best_step_data(views, metric=metric, max_train_steps=max_train_steps)
    group_by = next((item.scientific for item in isolation if item.categorical), None)
    sampled = sampled_enough_data(views, metric=metric, mode=mode, group_by=group_by, n_boot=n_boot)
    runs = {}
    for trial in views:
        steps, norms = trial.history(grad_norm_metric)
        if norms.size:
            runs[f"trial {trial.index}"] = (steps, norms)
    grad_norms = grad_norm_data(runs, max_grad_norm=max_grad_norm) if runs else None
    warnings = (*axis.warnings, *curves.warnings, *best_step.warnings,
                *(grad_norms.warnings if grad_norms else ()), *sampled.warnings)
    return StudyAnalysis(metric, mode, scientific, axis, tuple(isolation), curves, best_step,
                         grad_norms, sampled, tuple(warnings))
