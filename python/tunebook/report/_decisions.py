"""The report's parts for the incremental tuning loop: the round's goal and roles (at
the top), its row of the tuning log, and the trial and study variances side by side."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from tunebook.playbook._log import LOG_COLUMNS, log_cells, log_row


def _fmt(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.5g}"


def round_rows(study: Any) -> list[tuple[str, Any]]:
    """Rows for the report's top table: goal, declared roles, conclusion, adopted trial."""
    roles = getattr(study, "roles", None)
    if roles is None:
        return []
    rows: list[tuple[str, Any]] = [("goal", roles.goal or None)]
    if roles.scientific or roles.nuisance:
        rows.append(("nuisance hyperparameters", ", ".join(roles.nuisance) or "–"))
    if roles.fixed:
        rows.append(("fixed hyperparameters", ", ".join(f"{k} = {v}" for k, v in roles.fixed.items())))
    conclusion = study.conclusion
    if conclusion is not None:
        rows.append(("conclusion", conclusion.text))
        rows.append(("adopted baseline", "none" if conclusion.adopted is None else f"trial {conclusion.adopted}"))
    else:
        rows.append(("conclusion", "not concluded yet (study.conclude(text, adopt=...))"))
    return rows


def log_html(study: Any) -> str:
    """The study's row of the tuning log (``tunebook log``), as a one-row table."""
    row = log_row(study)
    head = "".join(f"<th>{escape(label)}</th>" for _, label in LOG_COLUMNS[1:])
    cells = "".join(f"<td>{escape(cell)}</td>" for cell in log_cells(row)[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>"


def variances_html(study: Any) -> str:
    """The trial variance of the best trial (from its replicates) beside the study
    variance (bootstrap of the quasi-random trials), as the playbook asks."""
    from tunebook.playbook import study_variance, trial_variance

    best = study.best_trial()
    trial_cell = "no trial with a finite value yet"
    if best is not None:
        tv = trial_variance(study, best.index)
        if tv.n >= 2:
            trial_cell = (f"{_fmt(tv.mean)} ± {_fmt(tv.std)} (mean ± std of {tv.n} reruns of trial {best.index}; "
                          f"its own value {_fmt(tv.original)})")
        else:
            trial_cell = (f"not measured: trial {best.index} has {tv.n} finished replicates "
                          f"(study.rerun({best.index}, n=5))")
    try:
        sv = study_variance(study)
        study_cell = (f"{_fmt(sv.median)} ± {_fmt(sv.std)} (best of {sv.budget} trials, std over bootstrap "
                      f"resamples; 90% between {_fmt(sv.low)} and {_fmt(sv.high)})")
    except ValueError as error:
        study_cell = str(error)
    return (
        "<table class='kv'>"
        f"<tr><th>trial variance</th><td>{escape(trial_cell)}</td></tr>"
        f"<tr><th>study variance</th><td>{escape(study_cell)}</td></tr></table>"
    )
