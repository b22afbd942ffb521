"""The tunebook command line: study table, trial listing, CSV export, report dispatch."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from study_helpers import StandInSpace

from tunebook.cli import main
from tunebook.study import Study

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def storage(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    study = Study("lr-sweep", StandInSpace(), storage=url, max_trials=5, config_path="configs/lr.yaml",
                  notes="first sweep", command="python train.py --lr-sweep")
    for i, curve in enumerate([[3.0, 2.0], [1.5, 0.75], [math.nan, math.nan], [2.0, 1.0]]):
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(step=step * 100, valid_loss=value, train_loss=value / 2)
        trial.infeasible("NaN loss") if i == 2 else trial.complete()
    Study("empty", StandInSpace(), storage=url)
    return url


def test_studies_table(storage, capsys):
    assert main(["studies", "--storage", storage]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["study", "config", "notes", "trials", "run", "infeasible", "best", "trial", "step",
                              "reproduce", "with"]
    row = out[2]
    for text in ["lr-sweep", "configs/lr.yaml", "first sweep", "0.75 (valid_loss, min)", "python train.py --lr-sweep"]:
        assert text in row
    # trials run 4, infeasible 1, best trial 1 at step 100
    assert row.split()[4:7] == ["4", "1", "0.75"]
    assert row.split()[9:11] == ["1", "100"]
    assert out[3].split()[0] == "empty"


def test_studies_on_a_missing_sqlite_file_creates_nothing(tmp_path, capsys):
    assert main(["studies", "--storage", f"sqlite:///{tmp_path}/none.db"]) == 0
    assert "no studies" in capsys.readouterr().out
    assert not (tmp_path / "none.db").exists()


def test_studies_csv(storage, tmp_path):
    path = tmp_path / "studies.csv"
    assert main(["studies", "--storage", storage, "--csv", str(path)]) == 0
    rows = list(csv.DictReader(path.open()))
    assert [r["name"] for r in rows] == ["lr-sweep", "empty"]
    assert (rows[0]["trials_run"], rows[0]["infeasible"], rows[0]["best_value"]) == ("4", "1", "0.75")


def test_study_show(storage, capsys):
    assert main(["study", "show", "lr-sweep", "--storage", storage, "--sort", "best"]) == 0
    out = capsys.readouterr().out
    assert "4 trials (3 complete, 1 infeasible, 0 failed, 0 running) of 5" in out
    assert "best 0.75 at trial 1 step 100" in out
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split()[:5] == ["trial", "state", "best", "valid_loss", "step"]
    assert [line.split()[0] for line in table[2:]] == ["1", "3", "0", "2"]
    assert "NaN loss" in table[-1]


def test_study_export(storage, tmp_path):
    path = tmp_path / "out" / "trials.csv"
    assert main(["study", "export", "lr-sweep", "--storage", storage, "--csv", str(path)]) == 0
    rows = list(csv.DictReader(path.open()))
    records = Study.load("lr-sweep", storage).trials()
    assert [int(r["trial"]) for r in rows] == [r.index for r in records]
    for row, record in zip(rows, records):
        assert row["state"] == record.state
        assert float(row["lr"]) == record.params["lr"]
        assert (float(row["best_value"]) if row["best_value"] else None) == record.best_value
    history = tmp_path / "history.csv"
    assert main(["study", "export", "lr-sweep", "--storage", storage, "--csv", str(history), "--history"]) == 0
    long = list(csv.DictReader(history.open()))
    assert len(long) == 4 * 2 * 2
    assert {"trial": "1", "metric": "valid_loss", "step": "100", "value": "0.75"} in long


def test_missing_study_and_report_dispatch(storage, capsys, monkeypatch, tmp_path):
    assert main(["study", "show", "nope", "--storage", storage]) == 1
    assert "study 'nope' does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tunebook.report", None)  # as if not installed
    assert main(["report", "lr-sweep", "--storage", storage]) == 1
    assert "cannot write a report" in capsys.readouterr().err
    calls = []

    def write_report(study, out_path):
        calls.append((study.name, out_path))
        return Path(out_path)

    monkeypatch.setitem(sys.modules, "tunebook.report", types.SimpleNamespace(write_report=write_report))
    assert main(["report", "lr-sweep", "--storage", storage, "--out", str(tmp_path / "r.html")]) == 0
    assert calls == [("lr-sweep", tmp_path / "r.html")]
    assert f"wrote {tmp_path / 'r.html'}" in capsys.readouterr().out


def test_python_dash_m_uses_the_storage_environment(storage):
    env = dict(os.environ, TUNEBOOK_STORAGE=storage, PYTHONPATH=str(TESTS))
    result = subprocess.run([sys.executable, "-m", "tunebook", "study", "export", "lr-sweep", "--csv", "-"],
                            env=env, capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 4


def test_read_commands_open_the_study_read_only(storage):
    """show/export/report/compare never write: the study they load refuses a write (before,
    load_study opened it read-write, taking the lock a running worker may need)."""
    from tunebook.cli import build_parser, load_study
    from tunebook.study import ReadOnlyStorageError

    args = build_parser().parse_args(["study", "show", "lr-sweep", "--storage", storage])
    study = load_study(args, "lr-sweep")
    assert len(study.trials()) == 4
    with pytest.raises(ReadOnlyStorageError):
        study.ask()
