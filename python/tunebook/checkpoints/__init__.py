"""Keep the N best checkpoints of a run, and rank the trials of a study.

* :class:`CheckpointKeeper` writes checkpoints atomically, keeps the ``keep`` best by
  one metric plus the latest, and restores its exact record after a crash.
* :func:`best_per_trial`, :func:`rank_trials`, :func:`best_per_bucket` and
  :func:`bootstrap_best_of_k` rank many trials' metric histories (the Rust core does
  the work; NumPy arrays in and out).

Ranking rules everywhere: NaN and ±inf never rank as best and sort after every finite
value; ties keep the earlier step (or the lower trial index) unless ``tie="later"``.
"""

from tunebook._rust import TopK
from tunebook.checkpoints._keeper import CheckpointInfo, CheckpointKeeper, SaveResult
from tunebook.checkpoints._ranking import (
    BestOfK,
    Buckets,
    TrialBests,
    best_per_bucket,
    best_per_trial,
    bootstrap_best_of_k,
    rank_trials,
)
from tunebook.checkpoints._state import restore_rng_state, rng_state

__all__ = [
    "BestOfK",
    "Buckets",
    "CheckpointInfo",
    "CheckpointKeeper",
    "SaveResult",
    "TopK",
    "TrialBests",
    "best_per_bucket",
    "best_per_trial",
    "bootstrap_best_of_k",
    "rank_trials",
    "restore_rng_state",
    "rng_state",
]
