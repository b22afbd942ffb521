"""The incremental tuning log: one row per round (study), in the order they were run.

The playbook's loop: each round of experiments has a narrow goal, names its
scientific, nuisance and fixed hyperparameters, and ends in a conclusion and possibly
a new baseline. It also recommends tracking every study in a spreadsheet: the study's
name, a link to its config, notes, the number of trials, the best validation
performance, the reproduction command, and what has not yet been run. A
:class:`LogRow` is that spreadsheet's row; ``tunebook log`` prints them.
"""

from __future__ import annotations

import csv
import math
from typing import IO, Any, NamedTuple


class LogRow(NamedTuple):
    """A study as a round of the tuning log.

    Attributes:
        round: its position in the storage (1 for the oldest study).
        study: its name.
        goal: the round's goal ("" when none was declared).
        scientific, nuisance: its declared hyperparameters of each role.
        fixed: its fixed hyperparameters and their values.
        trials_run: finished configurations (quasi-random and exploitation trials).
        infeasible: of which infeasible.
        replicates: finished replicates (reruns of a trial with other seeds).
        best_value, best_trial: the best value of the metric and its trial.
        metric, mode: the metric and its direction.
        not_run: trials still to run: quasi-random up to ``max_trials``, exploitation
            up to its budget, and replicates not finished (None: no limit is set).
        conclusion: the round's conclusion, None before :meth:`tunebook.Study.conclude`.
        adopted: the trial adopted as the new baseline, or None.
        config, notes, command: the playbook's study table.
    """

    round: int
    study: str
    goal: str
    scientific: tuple[str, ...]
    nuisance: tuple[str, ...]
    fixed: dict[str, Any]
    trials_run: int
    infeasible: int
    replicates: int
    best_value: float | None
    best_trial: int | None
    metric: str
    mode: str
    not_run: int | None
    conclusion: str | None
    adopted: int | None
    config: str | None
    notes: str
    command: str | None


#: The columns ``tunebook log`` shows, with their headers.
LOG_COLUMNS = (
    ("round", "round"),
    ("study", "study"),
    ("goal", "goal"),
    ("scientific", "scientific"),
    ("trials_run", "trials run"),
    ("infeasible", "infeasible"),
    ("best", "best"),
    ("conclusion", "conclusion"),
    ("adopted", "adopted baseline"),
    ("not_run", "not yet run"),
)


def log_row(study: Any, round: int = 1) -> LogRow:
    """The tuning-log row of one :class:`tunebook.Study` (from :meth:`~tunebook.Study.summary`)."""
    summary = study.summary()
    return LogRow(
        round=round,
        study=study.name,
        goal=summary["goal"],
        scientific=tuple(summary["scientific"]),
        nuisance=tuple(summary["nuisance"]),
        fixed=dict(summary["fixed"]),
        trials_run=summary["trials_run"],
        infeasible=summary["infeasible"],
        replicates=summary["replicates_run"],
        best_value=summary["best_value"],
        best_trial=summary["best_trial"],
        metric=summary["metric"],
        mode=summary["mode"],
        not_run=summary["not_run"],
        conclusion=summary["conclusion"],
        adopted=summary["adopted"],
        config=summary["config"],
        notes=summary["notes"],
        command=summary["command"],
    )


def tuning_log(storage: Any = None) -> list[LogRow]:
    """Every study of a storage as a round of the tuning log, oldest first.

    Reading creates nothing: a SQLite file that does not exist, or a database without
    tunebook's tables, holds no rounds.

    Args:
        storage: a storage URL or :class:`~tunebook.study.StudyStorage` (default
            :func:`~tunebook.study.default_storage`).
    """
    from tunebook.study import Study
    from tunebook.study._study import storage_to_read

    store = storage_to_read(storage)
    if store is None:
        return []
    return [log_row(Study(row.name, storage=store), i) for i, row in enumerate(store.list_studies(), start=1)]


def _best(row: LogRow) -> str:
    if row.best_value is None:
        return "-"
    value = f"{row.best_value:.6g}" if math.isfinite(row.best_value) else str(row.best_value)
    return f"{value} ({row.metric}, trial {row.best_trial})"


def log_cells(row: LogRow) -> list[str]:
    """The row's cells under :data:`LOG_COLUMNS`, as text."""
    cells = {
        "round": str(row.round),
        "study": row.study,
        "goal": row.goal or "-",
        "scientific": ", ".join(row.scientific) or "-",
        "trials_run": str(row.trials_run) + (f" (+{row.replicates} reruns)" if row.replicates else ""),
        "infeasible": str(row.infeasible),
        "best": _best(row),
        "conclusion": row.conclusion or "-",
        "adopted": "-" if row.adopted is None else f"trial {row.adopted}",
        "not_run": "-" if row.not_run is None else str(row.not_run),
    }
    return [cells[key] for key, _ in LOG_COLUMNS]


def to_markdown(rows: list[LogRow]) -> str:
    """The log as a Markdown table (``|`` in cells escaped)."""
    headers = [label for _, label in LOG_COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [c.replace("|", "\\|").replace("\n", " ") for c in log_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[LogRow], file: IO[str]) -> None:
    """The log as CSV: every :class:`LogRow` field, lists joined by ``;``."""
    writer = csv.writer(file)
    writer.writerow(LogRow._fields)
    for row in rows:
        values = []
        for value in row:
            if isinstance(value, tuple):
                value = ";".join(value)
            elif isinstance(value, dict):
                value = ";".join(f"{k}={v}" for k, v in value.items())
            values.append("" if value is None else value)
        writer.writerow(values)
