"""The Deep Learning Tuning Playbook's procedures, as functions.

Deciding what to adopt, and exploiting after exploring:

==============================================  ==================================
playbook section                                tool
==============================================  ==================================
Trial variance (rerun the best trial N times)   :meth:`tunebook.Study.rerun`, :func:`trial_variance`
Study variance (another quasi-random seed)      :func:`study_variance`
Adopting a change (retrain variance)            :func:`compare`
Adam's hyperparameters by trial budget (FAQ)    :func:`adam_space`, :func:`nesterov_space`
The incremental tuning log                      :func:`tuning_log`, ``tunebook log``
Bayesian exploitation after exploration         :meth:`tunebook.Study.exploit`, :func:`divergent_trials`
==============================================  ==================================
"""

from tunebook.playbook._compare import Comparison, compare
from tunebook.playbook._exploit import divergent_trials
from tunebook.playbook._log import LogRow, tuning_log
from tunebook.playbook._presets import BETA2_FROM, adam_config, adam_space, nesterov_config, nesterov_space
from tunebook.playbook._variance import StudyVariance, TrialVariance, study_variance, trial_variance

__all__ = [
    "BETA2_FROM",
    "Comparison",
    "LogRow",
    "StudyVariance",
    "TrialVariance",
    "adam_config",
    "adam_space",
    "compare",
    "divergent_trials",
    "nesterov_config",
    "nesterov_space",
    "study_variance",
    "trial_variance",
    "tuning_log",
]
