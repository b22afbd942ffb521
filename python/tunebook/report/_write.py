"""The study report: one self-contained HTML file with the study table, the trials, every
plot of :mod:`tunebook.analysis` and its warnings."""

from __future__ import annotations

import datetime
import math
import re
from html import escape
from pathlib import Path
from typing import Any, Sequence

from tunebook.analysis import StudyAnalysis, analyze_study
from tunebook.analysis._trials import trial_views
from tunebook.report._figures import image_tag
from tunebook.report._playbook import playbook_sections, playbook_warnings, records_of

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 0;
       color: #1d1d1f; background: #fafafa; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.7em; margin: 0 0 4px; } h2 { margin-top: 2em; border-bottom: 2px solid #e3e3e3;
       padding-bottom: 4px; font-size: 1.3em; }
.sub { color: #666; margin-bottom: 18px; }
table { border-collapse: collapse; font-size: 0.88em; background: white; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f0f0f3; }
table.kv th { width: 180px; }
tr.best td { background: #fff4e0; font-weight: 600; }
tr.infeasible td { color: #b00020; }
tr.failed td, tr.running td, tr.pending td { color: #888; }
.warnings { list-style: none; padding: 0; }
.warnings li { background: #fff0f0; border-left: 4px solid #b00020; padding: 6px 10px; margin: 6px 0; }
.warnings code { background: #fde0e0; padding: 0 4px; border-radius: 3px; }
.ok { background: #effaef; border-left: 4px solid #2e7d32; padding: 6px 10px; }
.verdict, .verdict-bad { padding: 8px 12px; max-width: 900px; font-weight: 500; }
.verdict { background: #eef4fb; border-left: 4px solid #1f77b4; }
.verdict-bad { background: #fff4e0; border-left: 4px solid #e65100; }
img { max-width: 100%; background: white; border: 1px solid #e5e5e5; margin: 8px 0; }
.note { color: #555; font-size: 0.9em; max-width: 900px; }
.scroll { max-height: 520px; overflow: auto; display: inline-block; max-width: 100%; }
"""


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.5g}"
    return str(value)


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_format(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _warnings_html(warnings: Sequence[Any]) -> str:
    if not warnings:
        return '<p class="ok">No warnings: the checks found nothing to fix.</p>'
    items = "".join(
        f"<li><code>{escape(w.code)}</code> {escape(w.message)}</li>" for w in warnings
    )
    return f'<ul class="warnings">{items}</ul>'


def _trials_table(views: Sequence[Any], best_index: int | None) -> str:
    names = list(dict.fromkeys(name for view in views for name in view.params))
    head = "".join(f"<th>{escape(h)}</th>" for h in ["trial", "state", "best value", "best step", *names])
    rows = []
    for view in views:
        cls = "best" if view.index == best_index else view.state
        cells = [str(view.index), view.state, _format(view.value if math.isfinite(view.value) else None),
                 _format(view.step if view.step >= 0 else None)]
        cells += [_format(view.params.get(name)) if name in view.params else "" for name in names]
        rows.append(f'<tr class="{escape(cls)}">' + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _section(title: str, note: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2><p class='note'>{escape(note)}</p>{body}"


def _section_warnings(analysis: StudyAnalysis, codes: set[str]) -> str:
    found = [w for w in analysis.warnings if w.code in codes]
    return _warnings_html(found) if found else ""


def render_report(
    study_or_trials: Any,
    *,
    title: str | None = None,
    analysis: StudyAnalysis | None = None,
    summary: dict[str, Any] | None = None,
    extra_html: str = "",
    dpi: int = 90,
    **analysis_options: Any,
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    from tunebook.analysis import _draw

    study = study_or_trials if hasattr(study_or_trials, "trials") and callable(study_or_trials.trials) else None
    trials = list(study.trials()) if study is not None else list(study_or_trials)
    views = trial_views(trials)
    if summary is None and study is not None and hasattr(study, "summary"):
        summary = study.summary()
    summary = dict(summary or {})
    name = summary.get("name") or getattr(study, "name", None) or "study"
    title = title or f"tunebook study report: {name}"
    if analysis is None and not any(v.state in ("complete", "infeasible") for v in views):
        return _unfinished_report(title, name, views, summary, extra_html)
    if analysis is None:
        analysis = analyze_study(study_or_trials, **analysis_options)
    feasible = [v for v in views if v.feasible]
    best = min(feasible, key=lambda v: (v.value if analysis.mode == "min" else -v.value, v.index), default=None)

    rows = [
        ("study", name),
        ("metric", f"{analysis.metric} ({analysis.mode})"),
        ("trials run", f"{sum(v.state in ('complete', 'infeasible', 'failed') for v in views)}"
                       f" of {summary.get('max_trials') or len(views)}"),
        ("complete / infeasible / failed", " / ".join(
            str(sum(v.state == s for v in views)) for s in ("complete", "infeasible", "failed"))),
        ("best value", None if best is None else f"{best.value:.6g} (trial {best.index}, step {best.step})"),
        ("scientific hyperparameters", ", ".join(analysis.scientific) or "–"),
        ("config", summary.get("config")),
        ("notes", summary.get("notes")),
        ("reproduce with", summary.get("command")),
    ]
    records = records_of(study)  # the playbook procedures the study recorded
    parts = [
        f"<h1>{escape(title)}</h1>",
        f"<div class='sub'>written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by tunebook</div>",
        _kv_table([r for r in rows if r[1] not in (None, "")]),
        "<h2>Warnings</h2>",
        _warnings_html(tuple(dict.fromkeys((*analysis.warnings, *playbook_warnings(records))))),
        extra_html,
    ]
    if best is not None:
        parts.append(_section("Best configuration", f"trial {best.index}",
                              _kv_table(list(best.params.items()))))
    parts.append(playbook_sections(records, _warnings_html, dpi))
    parts.append(_section(
        "Hyperparameter axis plots",
        "The metric against each hyperparameter varied in the study; red x are infeasible trials "
        "(diverged or NaN), the star is the best trial, dotted lines are the search bounds. "
        "Best trials crowding a bound mean the space should be extended.",
        image_tag(_draw.axis_plot(analysis.axis), "axis plots", dpi)
        + _section_warnings(analysis, {"boundary", "infeasible_fraction"}),
    ))
    for item in analysis.isolation:
        parts.append(_section(
            f"Isolation plot: {item.scientific}",
            "The best trial for each value of the scientific hyperparameter, after optimising away the "
            "nuisance hyperparameters (continuous axes bucketed). Each bar or point is labelled with its "
            "trial and how many trials competed.",
            image_tag(_draw.isolation_plot(item), f"isolation plot of {item.scientific}", dpi),
        ))
    parts.append(_section(
        "Training curves of the best trials",
        "Training (dashed) and validation (solid) curves, with automatic diagnoses: problematic "
        "overfitting, high step-to-step variance, still improving at the end, saturated early.",
        image_tag(_draw.training_curves_plot(analysis.curves), "training curves", dpi)
        + _section_warnings(analysis, {"overfitting", "high_variance", "still_improving", "saturated_early"}),
    ))
    parts.append(_section(
        "Best-checkpoint step",
        "Where in training each trial's best checkpoint came. Always in the first 10%: too many steps. "
        "Always in the last 25%: train longer.",
        image_tag(_draw.best_step_plot(analysis.best_step), "best checkpoint step", dpi)
        + _section_warnings(analysis, {"best_step_early", "best_step_late"}),
    ))
    if analysis.grad_norms is not None:
        g = analysis.grad_norms
        parts.append(_section(
            "Gradient norms",
            f"Global gradient norm before clipping, all trials. Suggested clipping threshold (the "
            f"{g.percentile:.0f}th percentile): {g.suggested_clip:.4g}.",
            image_tag(_draw.grad_norm_plot(g), "gradient norms", dpi)
            + _section_warnings(analysis, {"clip_fraction"}),
        ))
    parts.append(_section(
        "Have we sampled enough?",
        "Box plots (5/25/50/75/95%) of the best result among k trials drawn with replacement, by "
        "bootstrap. If the boxes still move at the full budget, more trials would likely do better.",
        image_tag(_draw.sampled_enough_plot(analysis.sampled_enough), "sampled enough", dpi)
        + _section_warnings(analysis, {"not_sampled_enough"}),
    ))
    parts.append(_section("All trials", "Best trial highlighted; infeasible trials in red.",
                          _trials_table(views, None if best is None else best.index)))
    return _page(title, "\n".join(parts))


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _unfinished_report(title: str, name: str, views: Sequence[Any], summary: dict[str, Any], extra_html: str) -> str:
    """The report of a study with no finished trial yet: what there is, and what to do."""
    counts = {s: sum(v.state == s for v in views) for s in ("running", "pending", "failed")}
    rows = [
        ("study", name),
        ("metric", f"{summary['metric']} ({summary['mode']})" if summary.get("metric") else None),
        ("trials run", f"0 of {summary.get('max_trials') or len(views)}"),
        ("running / pending / failed", " / ".join(str(counts[s]) for s in ("running", "pending", "failed"))),
        ("config", summary.get("config")),
        ("notes", summary.get("notes")),
        ("reproduce with", summary.get("command")),
    ]
    if not views:
        state = "No trial has been run yet."
    else:
        state = (f"None of its {len(views)} trials has finished as complete or infeasible yet "
                 f"({counts['running']} running, {counts['pending']} pending, {counts['failed']} failed).")
    parts = [
        f"<h1>{escape(title)}</h1>",
        f"<div class='sub'>written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by tunebook</div>",
        _kv_table([r for r in rows if r[1] not in (None, "")]),
        "<h2>No finished trial yet</h2>",
        f"<p class='note'>{escape(state)} The plots and the playbook's checks need at least one finished "
        "trial: run trials (or let the running ones finish), then write the report again.</p>",
        extra_html,
    ]
    if views:
        parts.append(_section("All trials", "Failed trials in grey.", _trials_table(views, None)))
    return _page(title, "\n".join(parts))


def default_report_path(name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "study"
    return Path(f"{safe}-report.html")


def write_report(study: Any, out_path: str | Path | None = None, **options: Any) -> Path:
    """Write a study's report: one self-contained HTML file, readable in any browser.

    It holds the study table (name, metric, trials run and infeasible, best value,
    config, notes, reproduction command), every warning of
    :func:`tunebook.analysis.analyze_study`, the best configuration, a section for each
    playbook procedure the study recorded (:func:`tunebook.playbook.record`: the
    throughput sweep, max_train_steps, the instability checks, the warmup sweep, Round
    2), the axis plots,
    an isolation plot per scientific hyperparameter, the best trials' training curves,
    the best-checkpoint step distribution, the gradient norms (when trials reported a
    ``grad_norm`` metric), the "have we sampled enough" box plots, and the table of
    all trials. Images are PNGs embedded as base64: nothing is fetched from anywhere.

    Args:
        study: a :class:`tunebook.Study`, or a list of trials (TrialRecords or dicts).
        out_path: the file to write; default ``<study name>-report.html`` in the
            current directory. Parent directories are created.
        **options: passed to :func:`render_report` and
            :func:`~tunebook.analysis.analyze_study` (``scientific=``,
            ``max_grad_norm=``, ``train_metric=``, ``title=``, ``extra_html=``, ...).

    Returns:
        The path written.

    Raises:
        ImportError: without matplotlib (``pip install 'tunebook[plots]'``).
    """
    name = getattr(study, "name", None) or "study"
    path = Path(out_path) if out_path is not None else default_report_path(name)
    html = render_report(study, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(html, encoding="utf-8")
    temporary.replace(path)
    return path
