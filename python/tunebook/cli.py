"""The ``tunebook`` command line: the playbook's study table, a study's trials, CSV
export, and reports.

    tunebook studies [--storage URL] [--csv FILE]
    tunebook study show NAME [--storage URL] [--sort index|best] [--limit N]
    tunebook study export NAME --csv FILE [--history] [--storage URL]
    tunebook report STUDY [--storage URL] [--out FILE]
    tunebook compare BASELINE[:TRIAL] CANDIDATE[:TRIAL] [--storage URL] [--confidence C]
    tunebook log [--storage URL] [--markdown | --csv FILE]

``--storage`` defaults to ``$TUNEBOOK_STORAGE`` or ``sqlite:///tunebook.db``.
``--csv -`` writes to standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

STUDY_COLUMNS = (
    ("name", "study"),
    ("config", "config"),
    ("notes", "notes"),
    ("trials_run", "trials run"),
    ("infeasible", "infeasible"),
    ("best_value", "best"),
    ("best_trial", "trial"),
    ("best_step", "step"),
    ("command", "reproduce with"),
)


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: IO[str], max_width: int = 40) -> None:
    cells = [[_format(v) for v in row] for row in rows]
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            if len(cell) > max_width:
                row[i] = cell[: max_width - 1] + "…"
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


@contextlib.contextmanager
def _open_csv(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        yield file


def _studies(args: argparse.Namespace) -> int:
    from tunebook.study import list_studies

    summaries = list_studies(args.storage)
    if args.csv:
        with _open_csv(args.csv) as file:
            writer = csv.DictWriter(file, fieldnames=list(summaries[0]) if summaries else [k for k, _ in STUDY_COLUMNS])
            writer.writeheader()
            writer.writerows(summaries)
        return 0
    if not summaries:
        print("no studies in this storage", file=sys.stdout)
        return 0
    headers = [label for _, label in STUDY_COLUMNS]
    rows = []
    for s in summaries:
        row = [s[key] for key, _ in STUDY_COLUMNS]
        row[5] = f"{_format(s['best_value'])} ({s['metric']}, {s['mode']})" if s["best_value"] is not None else "-"
        rows.append(row)
    _table(headers, rows, sys.stdout)
    return 0


def _param_names(records: Sequence[Any]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record.params))
    return list(names)


def _show(args: argparse.Namespace) -> int:
    from tunebook.study import Study

    study = Study.load(args.name, args.storage)
    s = study.summary()
    print(f"study {s['name']}: {s['trials']} trials ({s['complete']} complete, {s['infeasible']} infeasible, "
          f"{s['failed']} failed, {s['running']} running) of {s['max_trials'] or 'unlimited'}")
    print(f"metric {s['metric']} ({s['mode']}); best {_format(s['best_value'])} at trial "
          f"{_format(s['best_trial'])} step {_format(s['best_step'])}")
    for key in ("config", "notes", "command"):
        if s[key]:
            print(f"{key}: {s[key]}")
    records = study.trials()
    if args.sort == "best":
        from tunebook.checkpoints import rank_trials

        best = [math.nan if r.best_value is None or r.state == "infeasible" else r.best_value for r in records]
        records = [records[i] for i in rank_trials(best, mode=study.mode)] if records else []
    if args.limit is not None:
        records = records[: args.limit]
    params = _param_names(records)
    headers = ["trial", "state", f"best {study.metric}", "step", *params, "reason"]
    rows = [[r.index, _state(r), r.best_value, r.best_step, *(r.params.get(p) for p in params), r.reason]
            for r in records]
    print()
    _table(headers, rows, sys.stdout)
    return 0


def _state(record: Any) -> str:
    """A trial's state, with its kind when it is not a quasi-random trial."""
    kind = getattr(record, "kind", "quasirandom")
    if kind == "replicate":
        return f"{record.state} (rerun of {record.parent})"
    return f"{record.state} (exploit)" if kind == "exploit" else record.state


def _export(args: argparse.Namespace) -> int:
    from tunebook.study import Study

    study = Study.load(args.name, args.storage)
    records = study.trials()
    with _open_csv(args.csv) as file:
        writer = csv.writer(file)
        if args.history:
            names = sorted({name for r in records for name in r.metric_names})
            writer.writerow(["trial", "metric", "step", "value"])
            for name in names:
                for r in records:
                    steps, values = r.history(name)
                    writer.writerows([r.index, name, int(s), repr(float(v))] for s, v in zip(steps, values))
        else:
            params = _param_names(records)
            writer.writerow(
                ["trial", "state", "best_value", "best_step", *params, "attempts", "worker", "reason", "kind",
                 "parent", "seed"]
            )
            for r in records:
                best = "" if r.best_value is None else repr(r.best_value)
                step = "" if r.best_step is None else r.best_step
                writer.writerow(
                    [r.index, r.state, best, step, *(r.params.get(p, "") for p in params),
                     r.attempts, r.worker or "", r.reason or "", r.kind, "" if r.parent is None else r.parent,
                     "" if r.seed is None else r.seed]
                )
    if args.csv != "-":
        print(f"wrote {len(records)} trials of {study.name!r} to {args.csv}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from tunebook.study import Study

    try:
        from tunebook.report import write_report
    except ImportError as error:
        if getattr(error, "name", None) in ("tunebook.report", None) or "write_report" in str(error):
            hint = "this installation of tunebook has no report module (tunebook.report)"
        else:
            hint = f"the report needs {error.name!r}: pip install 'tunebook[plots]'"
        print(f"tunebook: cannot write a report: {hint} ({error})", file=sys.stderr)
        return 1
    study = Study.load(args.study, args.storage)
    path = write_report(study, Path(args.out) if args.out else None)
    print(f"wrote {path}")
    return 0


def _study_and_trial(text: str, storage: str | None) -> Any:
    """``NAME`` (the study's best trial) or ``NAME:TRIAL``, opened read-only."""
    from tunebook.study import Study

    name, _, index = text.rpartition(":")
    if name and index.isdigit():
        return Study.load(name, storage, read_only=True), int(index)
    return Study.load(text, storage, read_only=True)


def _compare(args: argparse.Namespace) -> int:
    from tunebook.playbook import compare

    result = compare(_study_and_trial(args.baseline, args.storage), _study_and_trial(args.candidate, args.storage),
                     confidence=args.confidence, min_replicates=args.min_replicates)
    print(result.message)
    for warning in result.warnings:
        print(f"  ! {warning.message}")
    return 0


def _log(args: argparse.Namespace) -> int:
    from tunebook.playbook._log import LOG_COLUMNS, log_cells, to_markdown, tuning_log, write_csv

    rows = tuning_log(args.storage)
    if args.csv:
        with _open_csv(args.csv) as file:
            write_csv(rows, file)
        return 0
    if args.markdown:
        sys.stdout.write(to_markdown(rows))
        return 0
    if not rows:
        print("no studies in this storage")
        return 0
    _table([label for _, label in LOG_COLUMNS], [log_cells(row) for row in rows], sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunebook", description="Track and inspect tuning studies.")
    storage_help = "database URL (default: $TUNEBOOK_STORAGE or sqlite:///tunebook.db)"
    commands = parser.add_subparsers(dest="command", required=True)

    studies = commands.add_parser("studies", help="the study table: every study in a storage")
    studies.add_argument("--storage", default=None, help=storage_help)
    studies.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV ('-' for stdout)")
    studies.set_defaults(run=_studies)

    study = commands.add_parser("study", help="one study: show its trials or export them")
    study_commands = study.add_subparsers(dest="study_command", required=True)
    show = study_commands.add_parser("show", help="list a study's trials")
    show.add_argument("name")
    show.add_argument("--storage", default=None, help=storage_help)
    show.add_argument("--sort", choices=("index", "best"), default="index", help="trial order")
    show.add_argument("--limit", type=int, default=None, help="show at most this many trials")
    show.set_defaults(run=_show)
    export = study_commands.add_parser("export", help="export a study's trials as CSV")
    export.add_argument("name")
    export.add_argument("--csv", required=True, metavar="FILE", help="output file ('-' for stdout)")
    export.add_argument("--history", action="store_true", help="every reported metric value (trial, metric, step, value)")
    export.add_argument("--storage", default=None, help=storage_help)
    export.set_defaults(run=_export)

    report = commands.add_parser("report", help="write a study's report (plots and tables)")
    report.add_argument("study")
    report.add_argument("--storage", default=None, help=storage_help)
    report.add_argument("--out", default=None, metavar="FILE", help="output path (default chosen by the report)")
    report.set_defaults(run=_report)

    compare = commands.add_parser(
        "compare", help="adopt a change? compare two trials with their replicates (the playbook's rule)",
        description="Compares two trials, each with its replicates (Study.rerun): the difference of the best "
                    "metric, its uncertainty from both trial variances, and a verdict: adopt, no detectable "
                    "difference, worse, or too few replicates (rerun with n=... to decide).")
    compare.add_argument("baseline", help="STUDY (its best trial) or STUDY:TRIAL")
    compare.add_argument("candidate", help="STUDY (its best trial) or STUDY:TRIAL")
    compare.add_argument("--storage", default=None, help=storage_help)
    compare.add_argument("--confidence", type=float, default=0.9, help="interval level (default 0.9)")
    compare.add_argument("--min-replicates", type=int, default=3, help="fewer replicates: too few (default 3)")
    compare.set_defaults(run=_compare)

    log = commands.add_parser("log", help="the tuning log: one row per round (study), in order")
    log.add_argument("--storage", default=None, help=storage_help)
    formats = log.add_mutually_exclusive_group()
    formats.add_argument("--markdown", action="store_true", help="write the table as Markdown")
    formats.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV ('-' for stdout)")
    log.set_defaults(run=_log)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (LookupError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"tunebook: error: {message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
