"""The report's sections for the playbook procedures a study recorded
(:func:`tunebook.playbook.record`): one section per record, in the playbook's order."""

from __future__ import annotations

import datetime
import math
from html import escape
from typing import Any, Callable, Sequence

from tunebook.report._figures import image_tag

# (title, the playbook section it carries out, what the section shows), by procedure.
_ABOUT: dict[str, tuple[str, str, str]] = {
    "throughput_sweep": (
        "Batch size: the throughput sweep",
        "Choosing the batch size > Determining the feasible batch sizes and estimating training throughput",
        "Training steps timed at doubling batch sizes until one ran out of memory or stopped raising the "
        "throughput. Until the hardware saturates, doubling the batch should double the examples per second "
        "(constant time per step); use the largest batch size whose doubling still paid off.",
    ),
    "max_train_steps": (
        "How many steps: max_train_steps from a constant learning-rate sweep",
        "Deciding how long to train when training is not compute-bound > Algorithm for picking an initial "
        "candidate for max_train_steps using a learning rate sweep",
        "The steps the fastest trial of a constant learning-rate sweep needed to perfectly fit the training set "
        "is the initial max_train_steps; the best learning rate must not sit at the end of the sweep. The "
        "best-checkpoint positions refine it (first 10%: too many steps; last 25%: train longer).",
    ),
    "lr_sweep_instability": (
        "Training instability above the best learning rate",
        "How can optimization failures be debugged and mitigated? > Identifying unstable workloads (Figures 7a, 7b)",
        "The training loss of the learning rates just above the best one, lr*. If it goes up during training "
        "(or diverges), fixing the instability will likely allow a larger learning rate and better results.",
    ),
    "early_instability_check": (
        "Early instability: a short run at twice the best learning rate",
        "How can optimization failures be debugged and mitigated? > Identifying unstable workloads (Figure 5)",
        "A ~500-step run at lr = 2 x lr*, evaluated every step, on a log-step axis: early instability followed "
        "by a recovery is missed by infrequent evaluation.",
    ),
    "shortest_stable_warmup": (
        "Warmup: the shortest warmup that trains stably",
        "How can optimization failures be debugged and mitigated? > Learning rate warmup > How to apply learning "
        "rate warmup (Figure 6)",
        "Warmups swept over orders of magnitude (at most 10% of max_train_steps), ramping to 10x the unstable "
        "learning rate, then constant for twice the warmup. The shortest one that did not blow up is prepended "
        "to the baseline schedule, adding its steps to max_train_steps.",
    ),
    "round_two": (
        "Round 2: the longer run's schedule",
        "Deciding how long to train when training is compute-bound > Round 2",
        "Round 2 runs Round 1's best configuration longer and spends the extra steps at a high learning rate "
        "(linear decay: extend the constant phase; cosine: keep the base learning rate, stretch the decay). "
        "The pitfall: using the extra steps at too small a learning rate.",
    ),
}
_ORDER = list(_ABOUT)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}g}"
    return str(value)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], highlight: int | None = None) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="best"' if i == highlight else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(_number(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _throughput_table(result: Any) -> str:
    rows = []
    for i, size in enumerate(result.batch_sizes.tolist()):
        memory = result.peak_memory[i]
        rows.append([size, float(result.time_per_step[i] * 1e3), f"{result.throughput[i]:,.0f}",
                     None if math.isnan(result.gains[i]) else f"{result.gains[i]:.2f}x",
                     None if math.isnan(memory) else f"{memory / 2**20:,.0f}"])
    if result.stop_reason in ("out_of_memory", "memory_budget") and result.stopped_at is not None:
        rows.append([result.stopped_at, result.stop_reason.replace("_", " "), None, None, None])
    sizes = result.batch_sizes.tolist()
    best = sizes.index(result.recommended) if result.recommended in sizes else None
    return _table(["batch size", "time per step (ms)", "examples / s", "gain over half the batch",
                   "peak memory (MiB)"], rows, best)


def _max_steps_table(result: Any) -> str:
    order = sorted(range(len(result.trials)), key=lambda i: result.learning_rates[i])
    rows = [[int(result.trials[i]), float(result.learning_rates[i]),
             int(result.fit_steps[i]) if result.fit_steps[i] >= 0 else "never"] for i in order]
    best = next((k for k, i in enumerate(order) if int(result.trials[i]) == result.trial), None)
    return _table(["trial", "learning rate", f"first step at the target ({result.metric})"], rows, best)


def _lr_table(result: Any) -> str:
    rows = [[c.trial, c.learning_rate, c.state,
             "unstable" if c.unstable else "stable",
             "; ".join(f"{e.kind} at step {e.step}" for e in c.instability.events[:3])
             if c.instability is not None and c.instability.events else "–"] for c in result.above]
    return _table(["trial", "learning rate", "state", "verdict", "events"], rows)


def _warmup_table(result: Any) -> str:
    rows = [[int(t), int(w), s, "stable" if ok else "blew up"]
            for t, w, s, ok in zip(result.trials, result.tried, result.states, result.stable)]
    best = next((k for k, w in enumerate(result.tried) if int(w) == result.warmup_steps), None)
    return _table(["trial", "warmup steps", "state", "verdict"], rows, best)


def _early_table(result: Any) -> str:
    rows = [[e.kind, e.phase, e.step, e.detected_step, e.peak_step, float(e.peak_loss), e.end_step]
            for e in result.instability.events]
    if not rows:
        return ""
    return _table(["event", "phase", "began at step", "over threshold at", "peak step", "peak loss",
                   "back by step"], rows)


_TABLES: dict[str, Callable[[Any], str]] = {
    "throughput_sweep": _throughput_table,
    "max_train_steps": _max_steps_table,
    "lr_sweep_instability": _lr_table,
    "early_instability_check": _early_table,
    "shortest_stable_warmup": _warmup_table,
}


def records_of(study: Any) -> list[Any]:
    """The study's playbook records, in the playbook's order (none for a list of trials)."""
    if not (hasattr(study, "attrs") and hasattr(study, "set_attr")):
        return []
    from tunebook.playbook import recorded

    records = recorded(study)
    return sorted(records, key=lambda r: (_ORDER.index(r.procedure) if r.procedure in _ORDER else len(_ORDER),
                                          r.recorded_at))


def playbook_warnings(records: Sequence[Any]) -> tuple[Any, ...]:
    """Every warning of the recorded results."""
    return tuple(w for r in records if r.result is not None for w in getattr(r.result, "warnings", ()))


def playbook_sections(records: Sequence[Any], warnings_html: Callable[[Sequence[Any]], str], dpi: int = 90) -> str:
    """The HTML of one section per record."""
    from tunebook.playbook import plot

    parts = []
    for item in records:
        title, section, note = _ABOUT.get(item.procedure, (item.procedure.replace("_", " "), "", ""))
        if item.key != "playbook." + item.procedure:
            title = f"{title} ({item.key.removeprefix('playbook.')})"
        when = datetime.datetime.fromtimestamp(item.recorded_at).strftime("%Y-%m-%d %H:%M") if item.recorded_at else ""
        cite = f"Playbook: “{section}”. " if section else ""
        head = f"<h2>{escape(title)}</h2><p class='note'>{escape(cite + note)}" + (
            f" Recorded {escape(when)}.</p>" if when else "</p>")
        if item.result is None:
            parts.append(head + f"<p class='note'>This record could not be read: {escape(item.error)}</p>")
            continue
        result = item.result
        unstable = bool(getattr(result, "unstable", False)) or any(
            w.code in ("nothing_fits", "never_fit", "no_stable_warmup") for w in result.warnings)
        verdict = f"<p class='{'verdict-bad' if unstable else 'verdict'}'>{escape(result.verdict)}</p>"
        table = _TABLES.get(item.procedure, lambda r: "")(result)
        figure = image_tag(plot(result), title, dpi)
        parts.append(head + verdict + figure + table + warnings_html(result.warnings))
    return "\n".join(parts)
