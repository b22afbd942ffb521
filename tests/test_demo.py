"""`make demo` end to end with a tiny budget: it trains, reports, summarises, and can be
run again (resuming an unfinished study, or starting the next one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from tunebook import demo  # noqa: E402
from tunebook.study import Study, list_studies  # noqa: E402

TINY = ["--steps", "40", "--eval-every", "10", "--check-steps", "30", "--no-progress"]


def test_demo_runs_resumes_and_starts_anew(tmp_path, capsys):
    out = tmp_path / "demo"
    storage = f"sqlite:///{out / 'studies.db'}"
    # 1. As `make demo` runs it: a module, in a fresh process.
    env = {**os.environ, "PYTHONPATH": str(Path(demo.__file__).parents[1])}
    first = subprocess.run([sys.executable, "-m", "tunebook.demo", "--trials", "4", "--out", str(out), *TINY],
                           capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    text = first.stdout
    assert "study 'digits-mlp'" in text and "(new, 4 trials" in text
    assert "Best configuration per optimizer" in text and "Is the comparison fair?" in text
    assert "suggested max_grad_norm" in text and "report:" in text
    for kind in ("nesterov", "adam"):
        assert f"  {kind}" in text
    # The playbook's opening moves: the batch size from a throughput sweep, and the
    # instability checks at the end; all recorded with the study and in its report.
    assert "Batch size (playbook: choosing the batch size), throughput sweep on cpu:" in text
    assert "Training instability (playbook: identifying unstable workloads):" in text
    assert "early check: At lr = 2 x " in text and "evaluated every step for 30 steps" in text
    report = out / "digits-mlp-report.html"
    assert report.exists() and report.stat().st_size > 50_000
    html = report.read_text(encoding="utf-8")
    assert "<h2>Batch size: the throughput sweep</h2>" in html
    assert "<h2>Early instability: a short run at twice the best learning rate</h2>" in html
    study = Study("digits-mlp", storage=storage)
    from tunebook.playbook import recorded

    results = {r.procedure: r.result for r in recorded(study)}
    batch_size = study.attrs["demo.batch_size"]
    assert batch_size == results["throughput_sweep"].recommended and 16 <= batch_size <= 128
    assert f"batch size: {batch_size}" in text
    check = results["early_instability_check"]
    assert check.evaluations == 31 and check.factor == 2.0
    best = study.best_trial()
    assert check.best_learning_rate == best.params["learning_rate"]
    records = study.trials()
    assert len(records) == 4 and all(r.state in ("complete", "infeasible") for r in records)
    assert {r.params["optimizer"] for r in records} == {"nesterov", "adam"}
    complete = [r for r in records if r.state == "complete"]
    assert complete, "no trial learned anything"
    steps, norms = complete[0].history("grad_norm")
    assert len(norms) == 40 and (norms > 0).all()  # the optimizer's norm log, one per step
    assert (out / "digits-mlp" / f"trial-{complete[0].index:04d}").is_dir()  # its CheckpointKeeper

    # 2. Extend the study; the next run resumes it instead of starting over.
    Study("digits-mlp", storage=storage, max_trials=6)
    assert demo.main(["--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "study 'digits-mlp'" in text and "resuming" in text
    assert len(Study("digits-mlp", storage=storage).trials()) == 6
    assert f"batch size: {batch_size}" in text  # a resumed study keeps its batch size
    Study("digits-mlp", storage=storage, max_trials=7)
    other = 32 if batch_size != 32 else 64
    with pytest.raises(SystemExit, match=f"runs with batch size {batch_size}"):
        demo.main(["--out", str(out), "--batch-size", str(other), *TINY])
    Study("digits-mlp", storage=storage, max_trials=6)  # finished again

    # 3. A finished study: the next run starts digits-mlp-2, without errors (here with
    # a given batch size, so without a sweep).
    assert demo.main(["--trials", "2", "--out", str(out), "--batch-size", "48", *TINY]) == 0
    text = capsys.readouterr().out
    assert "study 'digits-mlp-2'" in text and "(new, 2 trials" in text
    assert "batch size: 48" in text and "Batch size: 48 (given, not swept)" in text
    assert [row["name"] for row in list_studies(storage)] == ["digits-mlp", "digits-mlp-2"]
    assert (out / "digits-mlp-2-report.html").exists()


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--trials", "0"])
    assert "--trials=0 must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--steps", "10", "--eval-every", "20"])
    assert "--eval-every=20 must be <= --steps=10" in capsys.readouterr().err
    for flag in ("--check-steps", "--max-batch-size", "--batch-size"):
        with pytest.raises(SystemExit):
            demo.main([flag, "0"])
        assert f"{flag}=0 must be >= 1" in capsys.readouterr().err
