"""The command line at its edges, as a new user meets them: every bad input gets a line or
two naming the problem and the fix, a non-zero exit, no traceback, no file created, and
never a password."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from study_helpers import StandInSpace

from tunebook.cli import main
from tunebook.search import SearchSpace
from tunebook.study import Study

TESTS = Path(__file__).resolve().parent
PYTHON = TESTS.parent / "python"
SECRET = "s3cretpassw0rd"


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root and its content (SQLite's shared-memory index, which any
    reader updates while another connection holds the database open, by name only)."""
    return {str(p.relative_to(root)): b"" if p.name.endswith("-shm") else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working directory with no storage in the environment."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("TUNEBOOK_STORAGE", raising=False)
    return work


def _fails(argv, capsys, *, code=1, contains=(), root=None):
    """Runs argv; checks the exit code, a short stderr naming the problem, no traceback,
    no password, and (with root) that no file under root was created or changed."""
    before = _files(root) if root is not None else None
    assert main(argv) == code
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    assert SECRET not in err + captured.out
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, err  # argparse: usage line + message
    for text in contains:
        assert text in err, f"{text!r} not in {err!r}"
    if root is not None:
        assert _files(root) == before, "the command created or changed files"
    return err


# ------------------------------------------------------------------------- bad storage


def test_sqlite_url_with_two_slashes(cwd, capsys):
    _fails(["studies", "--storage", "sqlite://t.db"], capsys, contains=["sqlite:///t.db", "three slashes"], root=cwd)
    _fails(["study", "show", "s", "--storage", "sqlite://t.db"], capsys, contains=["sqlite:///t.db"], root=cwd)


@pytest.mark.parametrize("storage, message", [
    ("t.db", "sqlite:///t.db"),
    ("runs/studies.db", "sqlite:///runs/studies.db"),
    ("sqlite:/t.db", "'://'"),
    ("mysql://u@localhost/db", "SQLite or PostgreSQL"),
])
def test_storage_that_is_not_a_url_we_take(cwd, capsys, storage, message):
    _fails(["study", "show", "s", "--storage", storage], capsys, contains=[message], root=cwd)


def test_port_that_is_not_a_number_never_prints_the_password(cwd, capsys):
    err = _fails(["studies", "--storage", f"postgresql://tuner:{SECRET}@localhost:abc/db"], capsys,
                 contains=["port 'abc' is not a number"], root=cwd)
    assert "***" in err


def test_postgres_not_running(cwd, capsys):
    pytest.importorskip("psycopg2")
    for argv in (["studies"], ["study", "show", "s"], ["report", "s"]):
        _fails([*argv, "--storage", f"postgresql://tuner:{SECRET}@127.0.0.1:1/db"], capsys,
               contains=["cannot connect to PostgreSQL at 127.0.0.1:1", "running"], root=cwd)


def test_postgres_wrong_password_is_not_printed(cwd, capsys):
    from test_study import postgres_url  # the server `make test` starts (skips if none)

    url = postgres_url()
    pytest.importorskip("psycopg2")
    import sqlalchemy as sa

    wrong = sa.make_url(url).set(password=SECRET).render_as_string(hide_password=False)
    _fails(["studies", "--storage", wrong], capsys, contains=["refused the login", "password"], root=cwd)


def test_garbage_database_file(cwd, capsys):
    (cwd / "g.db").write_bytes(os.urandom(4096))
    for argv in (["studies"], ["study", "show", "s"], ["study", "export", "s", "--csv", "x.csv"], ["report", "s"]):
        _fails([*argv, "--storage", "sqlite:///g.db"], capsys, contains=["g.db", "not a tunebook study database"],
               root=cwd)


def test_sqlite_database_of_something_else_is_not_touched(cwd, capsys):
    connection = sqlite3.connect(cwd / "other.db")
    connection.execute("CREATE TABLE songs (title TEXT)")
    connection.commit()
    connection.close()
    _fails(["study", "show", "s", "--storage", "sqlite:///other.db"], capsys,
           contains=["other.db", "without tunebook studies"], root=cwd)
    assert main(["studies", "--storage", "sqlite:///other.db"]) == 0
    assert "no studies" in capsys.readouterr().out
    assert _files(cwd).keys() == {"other.db"}
    tables = sqlite3.connect(cwd / "other.db").execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("songs",)]


def test_read_commands_on_a_missing_path_create_nothing(cwd, capsys):
    for argv in (["study", "show", "s1"], ["study", "export", "s1", "--csv", "out.csv"], ["report", "s1"]):
        _fails([*argv, "--storage", "sqlite:///typo/dir/x.db"], capsys,
               contains=["typo/dir/x.db", "does not exist"], root=cwd)
    assert not (cwd / "typo").exists()


def test_storage_that_is_a_directory(cwd, capsys):
    (cwd / "dir.db").mkdir()
    _fails(["study", "show", "s", "--storage", "sqlite:///dir.db"], capsys, contains=["dir.db", "directory"],
           root=cwd)


# --------------------------------------------------------------- with a real study


@pytest.fixture
def study_db(cwd):
    url = "sqlite:///runs/s.db"
    space = SearchSpace.from_dict({"lr": {"low": 1e-3, "high": 1.0, "scale": "log"}, "opt": ["adam", "sgd"]})
    study = Study("s1", space, storage=url, max_trials=3)
    for value in (2.0, 1.0, 3.0):
        trial = study.ask()
        trial.report(step=10, valid_loss=value)
        trial.complete()
    return url


def test_unknown_study_lists_the_ones_there(study_db, cwd, capsys):
    _fails(["study", "show", "nope", "--storage", study_db], capsys,
           contains=["study 'nope' does not exist", "'s1'"], root=cwd)


@pytest.mark.parametrize("make_target, text", [
    (lambda cwd: cwd / "a-directory", "is a directory"),
    (lambda cwd: cwd / "runs" / "s.db" / "out", "Not a directory"),
    (lambda cwd: Path("/sys/tunebook-test-out"), "Permission denied"),
])
def test_unwritable_outputs(study_db, cwd, capsys, make_target, text):
    (cwd / "a-directory").mkdir(exist_ok=True)
    target = make_target(cwd)
    for argv, option in ((["report", "s1", "--out", str(target)], "--out"),
                         (["studies", "--csv", str(target)], "--csv"),
                         (["study", "export", "s1", "--csv", str(target)], "--csv")):
        _fails([*argv, "--storage", study_db], capsys, contains=[option, str(target), text], root=cwd)


def test_output_in_new_directories_is_written(study_db, cwd, capsys):
    assert main(["study", "export", "s1", "--csv", "exports/deep/s1.csv", "--storage", study_db]) == 0
    assert (cwd / "exports" / "deep" / "s1.csv").read_text().startswith("trial,state")


def test_read_commands_change_nothing(study_db, cwd, capsys, tmp_path):
    before = _files(cwd)
    out = tmp_path / "out"
    for argv in (["studies"], ["study", "show", "s1", "--sort", "best"], ["study", "export", "s1", "--csv", "-"],
                 ["report", "s1", "--out", str(out / "r.html")]):
        assert main([*argv, "--storage", study_db]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert _files(cwd) == before
    assert [p.name for p in out.iterdir()] == ["r.html"]


def test_limit_must_not_be_negative(study_db, cwd, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "show", "s1", "--limit", "-1", "--storage", study_db])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--limit" in err and "must be >= 0" in err
    assert main(["study", "show", "s1", "--limit", "1", "--storage", study_db]) == 0
    table = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert len(table) == 3  # header, rule, one trial


def test_version(capsys):
    import tunebook

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tunebook {tunebook.__version__}"


# ------------------------------------------------------------ finding the storage


def test_storage_from_the_environment(study_db, cwd, capsys, monkeypatch):
    monkeypatch.setenv("TUNEBOOK_STORAGE", study_db)
    assert main(["study", "show", "s1"]) == 0
    assert "study s1: 3 trials" in capsys.readouterr().out
    monkeypatch.setenv("TUNEBOOK_STORAGE", "sqlite:///elsewhere.db")
    _fails(["study", "show", "s1"], capsys, contains=["elsewhere.db", "does not exist"], root=cwd)


def test_default_file_then_the_one_found_below(study_db, cwd, capsys):
    # No ./tunebook.db: the one study database under the directory is used, and said so.
    assert main(["study", "show", "s1"]) == 0
    captured = capsys.readouterr()
    assert "study s1" in captured.out and "sqlite:///runs/s.db" in captured.err
    # ./tunebook.db, the library's default, comes first.
    Study("t", StandInSpace(), storage="sqlite:///tunebook.db")
    assert main(["studies"]) == 0
    out = capsys.readouterr().out
    assert "t" in out.split() and "s1" not in out.split()


def test_several_databases_found_is_an_error_listing_them(study_db, cwd, capsys):
    Study("other", StandInSpace(), storage="sqlite:///runs/other/o.db")
    (cwd / "notes.db").write_bytes(b"not a database")  # not a study database: not listed
    _fails(["report", "s1"], capsys, contains=["2 study databases", "sqlite:///runs/s.db",
                                               "sqlite:///runs/other/o.db", "--storage"], root=cwd)


def test_no_database_anywhere(cwd, capsys):
    _fails(["study", "show", "s1"], capsys, contains=["./tunebook.db (the default) does not exist",
                                                     "no study database was found", "--storage", "TUNEBOOK_STORAGE"],
           root=cwd)
    assert main(["studies"]) == 0
    assert "no studies" in capsys.readouterr().out
    assert _files(cwd) == {}


# ---------------------------------------------------------------------- report


def test_report_of_a_study_with_no_finished_trial(cwd, capsys):
    space = SearchSpace.from_dict({"lr": {"low": 1e-3, "high": 1.0, "scale": "log"}})
    study = Study("fresh", space, storage="sqlite:///s.db", max_trials=4)
    assert main(["report", "fresh", "--storage", "sqlite:///s.db", "--out", "fresh.html"]) == 0
    assert "No trial has been run yet" in (cwd / "fresh.html").read_text()
    trial = study.ask()
    trial.report(step=1, valid_loss=0.5)
    trial.flush()
    failed = study.ask()
    failed.fail("out of memory")
    assert main(["report", "fresh", "--storage", "sqlite:///s.db", "--out", "fresh.html"]) == 0
    html = (cwd / "fresh.html").read_text()
    assert "None of its 2 trials has finished" in html and "1 running" in html and "1 failed" in html
    assert "out of memory" not in html or "failed" in html


# ------------------------------------------------------------------ end to end


def test_a_real_process_prints_no_traceback(tmp_path):
    pytest.importorskip("psycopg2")
    env = {k: v for k, v in os.environ.items() if k != "TUNEBOOK_STORAGE"}
    env["PYTHONPATH"] = str(PYTHON)
    for argv in (["studies", "--storage", f"postgresql://tuner:{SECRET}@127.0.0.1:1/db"],
                 ["study", "show", "x", "--storage", "sqlite://t.db"]):
        result = subprocess.run([sys.executable, "-m", "tunebook", *argv], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr and SECRET not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_when_the_space_class_cannot_be_imported(cwd, capsys, monkeypatch):
    study = Study("custom", StandInSpace(), storage="sqlite:///c.db")  # stored as study_helpers:StandInSpace
    trial = study.ask()
    trial.report(step=1, valid_loss=1.0)
    trial.complete()
    monkeypatch.setitem(sys.modules, "study_helpers", None)  # as in a process without the user's module
    _fails(["report", "custom", "--storage", "sqlite:///c.db"], capsys,
           contains=["study_helpers:StandInSpace", "importable"], root=cwd)
