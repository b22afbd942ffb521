"""The HTML study report: self-contained, complete, and readable in a real browser."""

from __future__ import annotations

import base64
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from tunebook.report import default_report_path, render_report, write_report  # noqa: E402
from tunebook.search import SearchSpace  # noqa: E402
from tunebook.study import Study  # noqa: E402

SPACE = {
    "optimizer": {"type": "categorical", "choices": ["nesterov", "adam"]},
    "nesterov_lr": {"name": "learning_rate", "low": 1e-3, "high": 1.0, "scale": "log",
                    "when": {"optimizer": ["nesterov"]}},
    "adam_lr": {"name": "learning_rate", "low": 1e-5, "high": 1e-1, "scale": "log",
                "when": {"optimizer": ["adam"]}},
    "warmup": {"low": 0.0, "high": 0.2},
}


def run_study(tmp_path: Path, n: int = 16) -> Study:
    """A synthetic study: a loss curve whose floor depends on log(lr); too-large
    learning rates diverge (infeasible)."""
    study = Study("report-test", SearchSpace.from_dict(SPACE), storage=f"sqlite:///{tmp_path}/s.db",
                  seed=0, max_trials=n, notes="synthetic study for the report test",
                  command="pytest tests/test_report.py")
    rng = np.random.default_rng(0)
    while (trial := study.ask()) is not None:
        p = trial.params
        centre = -1.0 if p["optimizer"] == "nesterov" else -3.0
        if math.log10(p["learning_rate"]) > centre + 0.8:
            trial.report(step=0, train_loss=2.3, valid_loss=2.3)
            trial.report(step=10, train_loss=float("nan"), valid_loss=float("nan"))
            trial.infeasible("diverged")
            continue
        floor = 0.1 + 0.2 * (math.log10(p["learning_rate"]) - centre) ** 2
        for step in range(0, 200, 10):
            valid = floor + 2 * math.exp(-step / 40) + rng.normal(0, 0.005)
            trial.report(step=step, train_loss=valid - 0.05, valid_loss=valid,
                         grad_norm=float(abs(rng.normal(1.0, 0.3))))
        trial.complete()
    return study


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    study = run_study(tmp_path)
    path = write_report(study, tmp_path / "out" / "report.html")
    return study, path


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_is_self_contained_and_complete(report):
    study, path = report
    assert path.exists() and path.parent.name == "out"
    html = path.read_text(encoding="utf-8")
    # Nothing external: no links, scripts, remote images or fonts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 6  # axis, isolation, curves, best step, grad norms, sampled enough
    for encoded in images:
        width, height = png_size(base64.b64decode(encoded))
        assert width >= 300 and height >= 150
    summary = study.summary()
    assert "report-test" in html and "synthetic study for the report test" in html
    assert "pytest tests/test_report.py" in html
    for section in ("Warnings", "Hyperparameter axis plots", "Isolation plot: optimizer",
                    "Training curves of the best trials", "Best-checkpoint step", "Gradient norms",
                    "Have we sampled enough?", "All trials"):
        assert section in html, section
    # One table row per trial, the infeasible ones marked.
    rows = re.findall(r'<tr class="(best|complete|infeasible|failed|running|pending)">', html)
    assert len(rows) == summary["trials"] == 16
    assert rows.count("infeasible") == summary["infeasible"] > 0
    assert rows.count("best") == 1
    assert f"{summary['best_value']:.6g} (trial {summary['best_trial']}" in html


def test_report_lists_the_analysis_warnings(report):
    _, path = report
    html = path.read_text(encoding="utf-8")
    # 16 trials and a needle-shaped optimum: the bootstrap says more trials would help,
    # and the learning-rate optimum sits near the top of both ranges.
    codes = set(re.findall(r"<li><code>([a-z_]+)</code>", html))
    assert codes, "expected warnings in this synthetic study"
    assert codes <= {"boundary", "infeasible_fraction", "overfitting", "high_variance", "still_improving",
                     "saturated_early", "best_step_early", "best_step_late", "clip_fraction",
                     "not_sampled_enough"}
    assert "infeasible_fraction" in codes  # a third of the trials diverge by construction


def test_report_from_plain_trials_and_default_path(tmp_path, monkeypatch):
    trials = [{"index": i, "params": {"lr": 10 ** -i}, "state": "complete", "best_value": float(i),
               "best_step": 0, "history": {"valid_loss": ([0, 1], [float(i), float(i) + 1])}} for i in range(4)]
    html = render_report(trials, title="plain trials")
    assert "<title>plain trials</title>" in html and "Gradient norms" not in html
    monkeypatch.chdir(tmp_path)
    path = write_report(trials)
    assert path == default_report_path("study") == Path("study-report.html") and path.exists()
    assert default_report_path("my study/2") == Path("my_study_2-report.html")


def test_cli_writes_the_report(report, tmp_path):
    from tunebook.cli import main

    study, _ = report
    out = tmp_path / "cli.html"
    assert main(["report", study.name, "--storage", study.storage, "--out", str(out)]) == 0
    assert out.stat().st_size > 50_000


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (scripts/chromium.sh installs Debian's package as root)")
    _, path = report
    shot = tmp_path / "screenshot.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-dev-shm-usage", "--no-first-run", f"--screenshot={shot}",
               "--window-size=1280,2400", path.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"chromium wrote no screenshot: {result.stderr[-2000:]}"
    assert png_size(shot.read_bytes()) == (1280, 2400)
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    # Not blank: plenty of non-white pixels, and real variety (text, plots, colours).
    non_white = np.mean(pixels.min(axis=-1) < 0.9)
    assert non_white > 0.03, f"only {non_white:.1%} of the page is drawn"
    assert pixels.std() > 0.05
    colours = np.unique((pixels.reshape(-1, 3) * 15).round().astype(int), axis=0)
    assert len(colours) > 40
    # The plots are drawn, not broken-image icons: the page's CSS has no blue, so the
    # blue of the plotted trials (matplotlib's C0) appears only if the images render.
    blue = np.mean((pixels[..., 2] > 0.55) & (pixels[..., 0] < 0.35))
    assert blue > 2e-4, f"only {blue:.4%} of the page is plot blue: are the images rendered?"


def test_report_of_a_study_whose_space_does_not_list_its_parameters(tmp_path):
    """Study takes any space with sample/to_dict/from_dict; the report inferred nothing from
    such a space and raised TypeError ('StandInSpace' object is not iterable). Now the
    hyperparameters come from the trials' values."""
    from study_helpers import StandInSpace

    study = Study("own-space", StandInSpace(), storage=f"sqlite:///{tmp_path}/s.db")
    for i in range(6):
        trial = study.ask()
        trial.report(step=1, valid_loss=1.0 + i)
        trial.complete()
    html = render_report(study)
    for name in ("lr", "wd", "opt"):
        assert name in html
