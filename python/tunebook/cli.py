"""The ``tunebook`` command line: the playbook's study table, a study's trials, CSV
export, and reports.

    tunebook studies [--storage URL] [--csv FILE]
    tunebook study show NAME [--storage URL] [--sort index|best] [--limit N]
    tunebook study export NAME --csv FILE [--history] [--storage URL]
    tunebook report STUDY [--storage URL] [--out FILE]
    tunebook compare BASELINE[:TRIAL] CANDIDATE[:TRIAL] [--storage URL] [--confidence C]
    tunebook log [--storage URL] [--markdown | --csv FILE]
    tunebook --version

The storage is ``--storage URL``, else ``$TUNEBOOK_STORAGE``, else ``./tunebook.db`` (the
library's default) when it exists, else the one tunebook study database found under
the current directory (``runs/demo/studies.db`` after ``make demo``). ``--csv -``
writes to standard output.

Reading never creates or changes a database: ``studies``, ``study show``, ``study
export`` and ``report`` open it read-only, and write only their output file, whole or
not at all. Every error is a line or two on stderr that names the problem and the fix,
with exit status 1 (2 for a malformed command line); a password in a URL is never
printed.

A new subcommand registers in :func:`build_parser` with ``set_defaults(run=...)`` and
opens studies with :func:`load_study`; :func:`main` turns the errors it raises into
messages (:func:`user_message`, the one place that does), so it gets all of this for free.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import tunebook

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
STORAGE_ENV = "TUNEBOOK_STORAGE"
DEFAULT_FILE = "tunebook.db"
_DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SKIP_DIRS = {"node_modules", "target", "__pycache__", "site-packages", "venv"}


class CommandError(Exception):
    """An error whose message already names the problem and the fix."""


class NoStorage(CommandError):
    """No storage was given and none was found."""


# ----------------------------------------------------------------------------- output


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


def prepare_output(path: str | Path, option: str) -> Path:
    """Checks, before any work, that ``path`` can be written; creates missing parent
    directories (removed again if it cannot). Raises CommandError naming ``option``."""
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{option} {path} is a directory; give a file path, e.g. {path / 'out'}")
    created: list[Path] = []
    try:
        missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
        for directory in reversed(missing):
            directory.mkdir()
            created.append(directory)
        from tunebook.checkpoints._atomic import temporary_path

        probe = temporary_path(path.parent, ".probe")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise CommandError(f"cannot write {option} {path}: {error.strerror or error}; choose a writable path") from None
    return path


@contextlib.contextmanager
def _open_csv(path: str, option: str = "--csv") -> Iterator[IO[str]]:
    """Standard output for ``-``; else a file written whole (renamed into place) or not at all."""
    if path == "-":
        yield sys.stdout
        return
    target = prepare_output(path, option)
    buffer = io.StringIO(newline="")
    yield buffer
    from tunebook.checkpoints._atomic import atomic_write

    data = buffer.getvalue().encode()
    atomic_write(target, lambda file: file.write(data), fsync=False)


# ---------------------------------------------------------------------------- storage


def _study_databases(root: Path, max_depth: int = 3, max_entries: int = 5000) -> list[Path]:
    """SQLite files holding tunebook studies under ``root`` (hidden and build folders skipped)."""
    from tunebook.study._url import StorageError, sqlite_holds_studies

    found: list[Path] = []
    seen = 0
    for directory, subdirs, files in os.walk(root):
        depth = len(Path(directory).relative_to(root).parts)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in _SKIP_DIRS and depth < max_depth)
        seen += len(files) + len(subdirs)
        for name in sorted(files):
            if name.endswith(_DATABASE_SUFFIXES):
                path = Path(directory, name)
                with contextlib.suppress(StorageError, OSError):
                    if sqlite_holds_studies(path):
                        found.append(path.relative_to(root))
        if seen > max_entries:
            break
    return found


def resolve_storage(args: argparse.Namespace) -> str:
    """The storage a command reads: ``--storage``, ``$TUNEBOOK_STORAGE``,
    ``./tunebook.db`` if it exists, else the one study database under the current directory.

    Raises:
        ValueError: a malformed URL (the message names the fix).
        NoStorage: none given, and zero or several found.
    """
    from tunebook.study._url import parse

    given = getattr(args, "storage", None) or os.environ.get(STORAGE_ENV)
    if given:
        parse(given)
        return given
    if Path(DEFAULT_FILE).exists():
        return f"sqlite:///{DEFAULT_FILE}"
    found = _study_databases(Path.cwd())
    if len(found) == 1:
        url = f"sqlite:///{found[0]}"
        print(f"tunebook: reading {url} (found under this directory; --storage picks another)", file=sys.stderr)
        return url
    if found:
        listed = ", ".join(f"sqlite:///{p}" for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise NoStorage(
            f"{len(found)} study databases under this directory ({listed}); pick one with --storage URL "
            f"or set {STORAGE_ENV}"
        )
    raise NoStorage(
        f"./{DEFAULT_FILE} (the default) does not exist and no study database was found under this "
        f"directory; pass --storage URL (e.g. sqlite:///runs/demo/studies.db) or set {STORAGE_ENV}"
    )


def _missing(storage: str) -> str:
    from tunebook.study._url import display, sqlite_file

    path = sqlite_file(storage)
    if path is not None and not path.exists():
        return f"no study database at {path} (from {display(storage)}): the file does not exist; check the path"
    if path is not None:
        return f"{path} is a SQLite database without tunebook studies; check the storage path"
    return f"{display(storage)} holds no tunebook studies"


def load_study(args: argparse.Namespace, name: str) -> Any:
    """Opens study ``name`` read-only from the command's storage (see :func:`resolve_storage`).

    Raises:
        CommandError: no such database or study (listing the studies there).
    """
    from tunebook.study import Study, list_studies
    from tunebook.study._url import display, has_studies

    storage = resolve_storage(args)
    if not has_studies(storage):
        raise CommandError(_missing(storage))
    try:
        return Study.load(name, storage, read_only=True)
    except LookupError:
        names = [s["name"] for s in list_studies(storage)]
        there = f"it holds {', '.join(map(repr, names[:10]))}{', ...' if len(names) > 10 else ''}" if names \
            else "it holds none"
        raise CommandError(f"study {name!r} does not exist in {display(storage)}; {there}") from None


# --------------------------------------------------------------------------- commands


def _studies(args: argparse.Namespace) -> int:
    from tunebook.study import list_studies
    from tunebook.study._url import display

    try:
        storage = resolve_storage(args)
    except NoStorage as error:
        if args.csv:
            raise
        print(f"no studies: {error}")
        return 0
    summaries = list_studies(storage)
    if args.csv:
        with _open_csv(args.csv) as file:
            writer = csv.DictWriter(file, fieldnames=list(summaries[0]) if summaries else [k for k, _ in STUDY_COLUMNS])
            writer.writeheader()
            writer.writerows(summaries)
        return 0
    if not summaries:
        from tunebook.study._url import has_studies

        why = "" if has_studies(storage) else f" ({_missing(storage)})"
        print(f"no studies in {display(storage)}{why}")
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
    study = load_study(args, args.name)
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
    study = load_study(args, args.name)
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
    try:
        from tunebook.report import write_report
    except ImportError as error:
        if getattr(error, "name", None) in ("tunebook.report", None) or "write_report" in str(error):
            hint = "this installation of tunebook has no report module (tunebook.report); reinstall tunebook"
        else:
            hint = f'the report needs {error.name!r}: pip install "tunebook[plots]"'
        raise CommandError(f"cannot write a report: {hint}") from None
    study = load_study(args, args.study)
    if args.out:
        out = prepare_output(args.out, "--out")
    else:
        from tunebook.report import default_report_path

        out = prepare_output(default_report_path(study.name), "the report (choose a path with --out)")
    path = write_report(study, out)
    print(f"wrote {path}")
    return 0


def _study_and_trial(args: argparse.Namespace, text: str) -> Any:
    """``NAME`` (the study's best trial) or ``NAME:TRIAL`` (a study name may hold ':')."""
    name, _, index = text.rpartition(":")
    if name and index.isdigit():
        return load_study(args, name), int(index)
    return load_study(args, text)


def _compare(args: argparse.Namespace) -> int:
    from tunebook.playbook import compare

    result = compare(_study_and_trial(args, args.baseline), _study_and_trial(args, args.candidate),
                     confidence=args.confidence, min_replicates=args.min_replicates)
    print(result.message)
    for warning in result.warnings:
        print(f"  ! {warning.message}")
    return 0


def _log(args: argparse.Namespace) -> int:
    from tunebook.playbook._log import LOG_COLUMNS, log_cells, to_markdown, tuning_log, write_csv

    from tunebook.study._url import display

    try:
        storage = resolve_storage(args)
    except NoStorage as error:
        if args.csv or args.markdown:
            raise
        print(f"no studies: {error}")
        return 0
    rows = tuning_log(storage)
    if args.csv:
        with _open_csv(args.csv) as file:
            write_csv(rows, file)
        return 0
    if args.markdown:
        sys.stdout.write(to_markdown(rows))
        return 0
    if not rows:
        print(f"no studies in {display(storage)}")
        return 0
    _table([label for _, label in LOG_COLUMNS], [log_cells(row) for row in rows], sys.stdout)
    return 0


# ------------------------------------------------------------------------------ parser


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (it is how many trials to show), got {value}")
    return value


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    """The ``--storage`` option every command that reads studies takes."""
    parser.add_argument(
        "--storage", default=None, metavar="URL",
        help=f"database URL: sqlite:///path.db or postgresql://user:password@host:5432/db (default: "
             f"${STORAGE_ENV}, else ./{DEFAULT_FILE}, else the one study database under this directory)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunebook", description="Track and inspect tuning studies.")
    parser.add_argument("--version", action="version", version=f"tunebook {tunebook.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    studies = commands.add_parser("studies", help="the study table: every study in a storage")
    add_storage_option(studies)
    studies.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV ('-' for stdout)")
    studies.set_defaults(run=_studies)

    study = commands.add_parser("study", help="one study: show its trials or export them")
    study_commands = study.add_subparsers(dest="study_command", required=True, metavar="COMMAND")
    show = study_commands.add_parser("show", help="list a study's trials")
    show.add_argument("name")
    add_storage_option(show)
    show.add_argument("--sort", choices=("index", "best"), default="index", help="trial order")
    show.add_argument("--limit", type=_non_negative_int, default=None, metavar="N", help="show at most N trials")
    show.set_defaults(run=_show)
    export = study_commands.add_parser("export", help="export a study's trials as CSV")
    export.add_argument("name")
    export.add_argument("--csv", required=True, metavar="FILE", help="output file ('-' for stdout)")
    export.add_argument("--history", action="store_true", help="every reported metric value (trial, metric, step, value)")
    add_storage_option(export)
    export.set_defaults(run=_export)

    report = commands.add_parser("report", help="write a study's report (plots and tables)")
    report.add_argument("study")
    add_storage_option(report)
    report.add_argument("--out", default=None, metavar="FILE", help="output path (default: ./<study>-report.html)")
    report.set_defaults(run=_report)

    compare = commands.add_parser(
        "compare", help="adopt a change? compare two trials with their replicates (the playbook's rule)",
        description="Compares two trials, each with its replicates (Study.rerun): the difference of the best "
                    "metric, its uncertainty from both trial variances, and a verdict: adopt, no detectable "
                    "difference, worse, or too few replicates (rerun with n=... to decide).")
    compare.add_argument("baseline", help="STUDY (its best trial) or STUDY:TRIAL")
    compare.add_argument("candidate", help="STUDY (its best trial) or STUDY:TRIAL")
    add_storage_option(compare)
    compare.add_argument("--confidence", type=float, default=0.9, help="interval level (default 0.9)")
    compare.add_argument("--min-replicates", type=int, default=3, help="fewer replicates: too few (default 3)")
    compare.set_defaults(run=_compare)

    log = commands.add_parser("log", help="the tuning log: one row per round (study), in order")
    add_storage_option(log)
    formats = log.add_mutually_exclusive_group()
    formats.add_argument("--markdown", action="store_true", help="write the table as Markdown")
    formats.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV ('-' for stdout)")
    log.set_defaults(run=_log)
    return parser


# -------------------------------------------------------------------------------- main


def user_message(error: BaseException, storage: str | None = None) -> str | None:
    """The message for an error a user can fix (None for a bug, which keeps its traceback).

    This is the one place that maps exceptions to messages, for every subcommand.
    """
    import sqlalchemy as sa

    from tunebook.study import LeaseLostError, SchemaVersionError, StorageError
    from tunebook.study._url import error_message

    if isinstance(error, (CommandError, StorageError, SchemaVersionError, LeaseLostError)):
        return str(error)
    if isinstance(error, KeyError):
        return str(error.args[0]) if error.args else "not found"
    if isinstance(error, (LookupError, ValueError)):
        return str(error)
    if isinstance(error, ImportError):
        if "pip install" in str(error):
            return str(error)
        return f"a package tunebook needs is missing ({error}); reinstall tunebook: pip install tunebook"
    if isinstance(error, RuntimeError) and isinstance(error.__cause__, (ImportError, AttributeError)):
        # The study's search space class (a user's own) cannot be imported here.
        return f"{error}; make the module that defines it importable (e.g. on PYTHONPATH) and run this again"
    if isinstance(error, sa.exc.DBAPIError):
        return error_message(storage, error) if storage else str(error.orig)
    if isinstance(error, OSError) and error.filename:
        return f"cannot write {error.filename}: {error.strerror}; choose another path"
    return None


def _redact(message: str, storages: Sequence[str | None]) -> str:
    """``message`` with the passwords of ``storages`` (and any in URL form) hidden."""
    import sqlalchemy as sa

    from tunebook.study._url import mask

    message = mask(message)
    for storage in storages:
        with contextlib.suppress(Exception):
            password = sa.make_url(storage).password  # type: ignore[arg-type]
            if password and len(password) >= 4:
                message = message.replace(password, "***")
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    storages = [getattr(args, "storage", None), os.environ.get(STORAGE_ENV)]
    try:
        return int(args.run(args))
    except BrokenPipeError:
        # The reader went away (`tunebook study show x | head`); exit quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("tunebook: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_message(error, getattr(args, "storage", None) or os.environ.get(STORAGE_ENV))
        if message is None:
            raise
        print(f"tunebook: error: {_redact(message, storages)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
