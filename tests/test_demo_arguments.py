"""The demo checks its arguments and what it needs before it touches the study, and a
new ``--trials`` on a resumed study is honoured."""

from __future__ import annotations

import importlib.util

import pytest

from tunebook import demo
from tunebook.search import SearchSpace
from tunebook.study import Study


@pytest.mark.parametrize("argv, message", [
    (["--max-grad-norm", "0"], "--max-grad-norm=0.0 must be a finite number > 0"),
    (["--max-grad-norm", "nan"], "--max-grad-norm=nan must be a finite number > 0"),
    (["--max-grad-norm", "-1"], "must be a finite number > 0"),
    (["--seed", "-1"], "--seed=-1 must be in [0, 2**63)"),
    (["--seed", str(2**63)], "must be in [0, 2**63)"),
    (["--trials", "0"], "--trials=0 must be >= 1"),
    (["--name", " "], "--name must not be empty"),
])
def test_bad_arguments_touch_no_study(tmp_path, capsys, argv, message):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        demo.main([*argv, "--out", str(out)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_packages_name_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    out = tmp_path / "demo"
    with pytest.raises(SystemExit, match=r'scikit-learn: pip install "tunebook\[demo\]"'):
        demo.main(["--out", str(out)])
    assert not (out / "studies.db").exists()


def test_unwritable_output_directory(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SystemExit, match="cannot write to --out"):
        demo.main(["--out", str(tmp_path / "file" / "demo")])
    with pytest.raises(SystemExit, match="cannot write to --out /sys/tunebook-demo"):
        demo.main(["--out", "/sys/tunebook-demo"])


def _finished_study(storage: str, trials: int) -> Study:
    study = Study(demo.STUDY_NAME, SearchSpace.from_dict(demo.SPACE), storage=storage, max_trials=trials)
    while (trial := study.ask()) is not None:
        trial.report(step=1, valid_loss=1.0)
        trial.complete()
    return study


def test_a_new_trials_on_resume_is_honoured(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    _finished_study(storage, 2)
    # More trials than the finished study has: it is resumed and grown, not replaced.
    study, resumed = demo.open_study(demo.parse_args(["--trials", "5"]), storage)
    assert resumed and study.name == demo.STUDY_NAME and study.max_trials == 5
    assert Study.load(demo.STUDY_NAME, storage).max_trials == 5
    # Fewer than an unfinished study was to run: it shrinks to the new size.
    study, resumed = demo.open_study(demo.parse_args(["--trials", "4"]), storage)
    assert resumed and study.max_trials == 4
    # Without --trials the stored size stands.
    study, resumed = demo.open_study(demo.parse_args([]), storage)
    assert resumed and study.max_trials == 4


def test_the_recorded_command_is_the_one_that_ran(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    args = demo.parse_args(["--trials", "3", "--name", "my study"])
    study, resumed = demo.open_study(args, storage)
    assert not resumed and study.max_trials == 3
    assert study.command == "python -m tunebook.demo --trials 3 --name 'my study'"
    study, _ = demo.open_study(demo.parse_args([]), f"sqlite:///{tmp_path / 'other.db'}")
    assert study.command == "make demo" and study.max_trials == demo.DEFAULT_TRIALS
