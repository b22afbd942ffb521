"""Structured warnings: what the analysis found, for people and programs alike."""

from __future__ import annotations

from typing import NamedTuple


class AnalysisWarning(NamedTuple):
    """One finding of the analysis.

    Attributes:
        code: a stable identifier to test or filter on, e.g. ``"boundary"``,
            ``"infeasible_fraction"``, ``"overfitting"``, ``"high_variance"``,
            ``"still_improving"``, ``"saturated_early"``, ``"best_step_early"``,
            ``"best_step_late"``, ``"clip_fraction"``, ``"not_sampled_enough"``.
        message: one sentence for a person: what was seen and what to do about it.
        subject: what it is about (a hyperparameter, ``"trial 7"``, a group), or "".
    """

    code: str
    message: str
    subject: str = ""

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"
