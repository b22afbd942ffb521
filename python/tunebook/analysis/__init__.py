"""The playbook's plots and warnings, with data separated from drawing (as optuna does).

Each ``*_data`` function takes a study's trials (``study.trials()``, or plain dicts
with ``index``, ``params``, ``state``, ``best_value``, ``best_step`` and ``history``:
``{metric: (steps, values)}``) and returns a small named tuple of numbers plus
:class:`AnalysisWarning` s; each plot function draws one of those tuples into a
matplotlib ``Figure`` (matplotlib is imported only then).

=========================  ============================  ==========================
what                       data                          drawing
=========================  ============================  ==========================
axis plots (+ boundary)    :func:`axis_plot_data`        :func:`axis_plot`
isolation plots            :func:`isolation_plot_data`   :func:`isolation_plot`
training curves            :func:`training_curves_data`  :func:`training_curves_plot`
best-checkpoint step       :func:`best_step_data`        :func:`best_step_plot`
gradient norms             :func:`grad_norm_data`        :func:`grad_norm_plot`
have we sampled enough     :func:`sampled_enough_data`   :func:`sampled_enough_plot`
LR range test              (``schedules.lr_range_test``) :func:`lr_range_plot`
everything at once         :func:`analyze_study`         ``tunebook.report``
=========================  ============================  ==========================
"""

from tunebook.analysis._axis import AxisPanel, AxisPlotData, axis_plot_data, boundary_warnings
from tunebook.analysis._best_step import BestStepData, best_step_data
from tunebook.analysis._curves import Curve, TrainingCurvesData, diagnose_curves, smooth, training_curves_data
from tunebook.analysis._grad_norms import GradNormData, GradNormSeries, grad_norm_data
from tunebook.analysis._isolation import IsolationPlotData, isolation_plot_data
from tunebook.analysis._sampled_enough import (
    SampledEnoughData,
    SampledEnoughGroup,
    default_budgets,
    sampled_enough_data,
)
from tunebook.analysis._study import StudyAnalysis, analyze_study, default_scientific
from tunebook.analysis._trials import Hyperparameter, TrialView, hyperparameters, trial_views
from tunebook.analysis._warnings import AnalysisWarning

_DRAWING = (
    "axis_plot",
    "best_step_plot",
    "grad_norm_plot",
    "isolation_plot",
    "lr_range_plot",
    "sampled_enough_plot",
    "training_curves_plot",
)

__all__ = [
    "AnalysisWarning",
    "AxisPanel",
    "AxisPlotData",
    "BestStepData",
    "Curve",
    "GradNormData",
    "GradNormSeries",
    "Hyperparameter",
    "IsolationPlotData",
    "SampledEnoughData",
    "SampledEnoughGroup",
    "StudyAnalysis",
    "TrainingCurvesData",
    "TrialView",
    "analyze_study",
    "axis_plot_data",
    "best_step_data",
    "boundary_warnings",
    "default_budgets",
    "default_scientific",
    "diagnose_curves",
    "grad_norm_data",
    "hyperparameters",
    "isolation_plot_data",
    "sampled_enough_data",
    "smooth",
    "training_curves_data",
    "trial_views",
    *_DRAWING,
]


def __getattr__(name: str):
    # Drawing functions load on first use; the data functions never need matplotlib.
    if name in _DRAWING:
        from tunebook.analysis import _draw

        return getattr(_draw, name)
    raise AttributeError(f"module 'tunebook.analysis' has no attribute {name!r}")
