"""A study as a round of the playbook's incremental tuning loop: replicates of a trial
(trial variance), the round's roles and conclusion, and the switch to exploitation.

:class:`TuningRound` is a part of :class:`~tunebook.study.Study` (which it is mixed
into), kept in its own module: the study's definition, claims and reads live in
``_study.py``, the loop's decisions here. Like the rest of ``Study`` it holds domain
rules only; every write goes through the storage contract.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tunebook.study._contract import NewTrial, StudyRow, StudyStorage
from tunebook.study._roles import Roles
from tunebook.study._seeds import trial_seed

if TYPE_CHECKING:
    from tunebook.study._trial import TrialRecord


class Conclusion(NamedTuple):
    """A round's conclusion: the text, the adopted trial (None: no new baseline), and
    when it was recorded (seconds since the epoch)."""

    text: str
    adopted: int | None
    at: float | None


class TuningRound:
    """Replicates, roles, conclusion and exploitation of a :class:`~tunebook.study.Study`."""

    _storage: StudyStorage
    _id: int
    _row: StudyRow
    seed: int

    @property
    def roles(self) -> Roles:
        """The round's declared goal and scientific, nuisance and fixed hyperparameters."""
        return Roles.from_stored(self._row.goal, self._row.roles_json)

    @property
    def goal(self) -> str:
        """The round's goal ("" when none was declared)."""
        return self._row.goal or ""

    @property
    def conclusion(self) -> Conclusion | None:
        """The round's conclusion (:meth:`conclude`), or None."""
        row = self._refresh()
        if row.conclusion is None:
            return None
        return Conclusion(row.conclusion, row.adopted_trial, row.concluded_at)

    def conclude(self, text: str, adopt: int | None = None) -> Conclusion:
        """Records the round's conclusion and, possibly, its new baseline.

        The playbook's loop ends each round with a decision: what was learned, and
        whether a configuration becomes the new baseline. Concluding again replaces the
        conclusion (a revised decision).

        Args:
            text: the conclusion, for the tuning log.
            adopt: the index of the trial adopted as the new baseline, or None.

        Raises:
            ValueError: empty text; ``adopt`` not a trial of the study, a replicate,
                or a trial that did not complete.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string: what this round established")
        if adopt is not None:
            if isinstance(adopt, bool) or not isinstance(adopt, (int, np.integer)):
                raise ValueError(f"adopt must be a trial index or None, got {adopt!r}")
            adopt = int(adopt)
            record = self._find(adopt, "adopt")
            if record.kind == "replicate":
                raise ValueError(f"adopt={adopt} is a replicate of trial {record.parent}: adopt trial {record.parent}")
            if record.state != "complete":
                raise ValueError(f"adopt={adopt} is {record.state}, not complete: only a complete trial can be adopted")
        row = self._storage.update_study(
            self._id, {"conclusion": text.strip(), "adopted_trial": adopt, "concluded_at": time.time()}
        )
        self._set_row(row)
        return Conclusion(row.conclusion, row.adopted_trial, row.concluded_at)

    def rerun(self, trial_index: int, n: int = 5) -> list[int]:
        """Replicates a trial: its parameters, trained again with ``n`` other seeds.

        The playbook: results vary between trainings of the same hyperparameters with
        different seeds; before adopting a change, run the best trial several times to
        measure that trial variance (:func:`tunebook.playbook.trial_variance`). The
        replicates wait in the study and any worker's :meth:`ask` claims them, each
        exactly once, before new quasi-random trials. Replicate ``r`` of trial ``i``
        has the seed ``trial_seed(study seed, "replicate", i, r)``. Idempotent: the
        trial ends with ``n`` replicates in all, so every worker may call it.

        Args:
            trial_index: the trial to replicate (a replicate's own parent is used).
            n: the number of replicates, at least 2 (a standard deviation needs two).

        Returns:
            The indices of the trial's ``n`` replicates.

        Raises:
            ValueError: ``n < 2``, or no trial ``trial_index``.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"n must be an integer >= 2 (replicates to measure a variance), got {n!r}")
        record = self._find(trial_index, "trial_index")
        parent = record.parent if record.kind == "replicate" else record.index

        def make(number: int) -> NewTrial:
            return NewTrial(dict(record.params), trial_seed(self.seed, "replicate", parent, number), "replicate",
                            None, parent)

        return self._storage.add_replicates(self._id, parent, int(n), make)

    def replicates(self, trial_index: int) -> list[TrialRecord]:
        """The replicates of a trial (:meth:`rerun`), by index."""
        self._find(trial_index, "trial_index")
        return [r for r in self.trials() if r.kind == "replicate" and r.parent == trial_index]

    def exploit(self, n_trials: int, *, sampler: str = "auto", divergence_sigmas: float = 5.0) -> None:
        """Switches from exploration to exploitation: Bayesian optimisation, by Optuna.

        The playbook: once exploration has produced a good search space, switch from
        quasi-random search to Bayesian optimisation to find the single best
        configuration, with a tool that treats divergent trials as infeasible. After
        the quasi-random trials (all ``max_trials`` of them; an unlimited study stops
        its quasi-random search at the points it has), :meth:`ask` hands out
        ``n_trials`` exploitation trials: Optuna's sampler, warm-started from every
        finished quasi-random and exploitation trial, proposes each one when it is
        claimed; divergent trials are its constraint violations
        (:func:`tunebook.playbook.divergent_trials`). They are ordinary trials
        (``kind="exploit"``), claimed atomically by any worker; the proposal of the
        ``k``-th one is seeded from the study seed and ``k``, so a study run one trial
        at a time is reproduced exactly. Calling again changes the budget.

        Args:
            n_trials: the exploitation budget (trials of kind "exploit" in all).
            sampler: ``"gp"`` (Optuna's Gaussian-process sampler, the strongest on
                small budgets and flat spaces), ``"tpe"`` (Optuna's multivariate TPE;
                handles conditional spaces and costs milliseconds per proposal), or
                ``"auto"``: GP for a space without conditions, else TPE.
            divergence_sigmas: a finished trial diverged when it is infeasible, has no
                finite value, or its value lies more than this many robust standard
                deviations (1.4826 x the median absolute deviation) worse than the
                median of the study's finished trials.

        Raises:
            ValueError: bad arguments.
            ImportError: Optuna is not installed (``pip install 'tunebook[bayes]'``).
        """
        from tunebook.playbook._exploit import check_exploit_settings

        settings = check_exploit_settings(self.space, n_trials, sampler, divergence_sigmas)
        row = self._refresh()
        if row.max_trials is None:
            points = sum(r.kind == "quasirandom" for r in self.trials())
            self._storage.update_study(self._id, {"max_trials": points})
        self._set_row(self._storage.update_study(self._id, {"exploit_json": json.dumps(settings, sort_keys=True)}))

    @property
    def exploit_settings(self) -> dict[str, Any] | None:
        """The settings of :meth:`exploit`, or None before it was called."""
        row = self._refresh()
        return None if row.exploit_json is None else json.loads(row.exploit_json)
