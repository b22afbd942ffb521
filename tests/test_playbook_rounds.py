"""Two rounds of the incremental tuning loop end to end, on small CPU trainings, through
a real SQLite study and through the PostgreSQL test server: presets by budget, roles,
trial seeds, reruns, compare (API and `tunebook compare`), conclusions, the tuning log
(`tunebook log`, text, Markdown, CSV) and the report's new sections."""

from __future__ import annotations

import csv
import io
import uuid

import numpy as np
import pytest
import torch
from test_study import postgres_url

from tunebook.cli import main
from tunebook.playbook import adam_config, adam_space, compare, nesterov_config, nesterov_space, trial_variance
from tunebook.playbook import tuning_log
from tunebook.playbook._compare import VERDICTS
from tunebook.study import Study

STEPS = 40


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/rounds.db"
    return postgres_url()


def train(trial, make_optimizer) -> None:
    """A linear regression on fixed data; the trial's seed sets the initial weights and
    the batch order, so replicates differ only by chance."""
    data = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=data)
    y = x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(256, generator=data)
    rng = torch.Generator().manual_seed(trial.seed)
    model = torch.nn.Linear(8, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 8, generator=rng))
        model.bias.zero_()
    optimizer = make_optimizer(model.parameters(), trial.params)
    for step in range(1, STEPS + 1):
        batch = torch.randint(0, 192, (16,), generator=rng)
        loss = torch.nn.functional.mse_loss(model(x[batch]).squeeze(1), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            with torch.no_grad():
                valid = torch.nn.functional.mse_loss(model(x[192:]).squeeze(1), y[192:]).item()
            trial.report(step=step, train_loss=loss.item(), valid_loss=valid)
    trial.complete()


def run_round(study: Study, make_optimizer, reruns: int) -> int:
    while (trial := study.ask()) is not None:
        train(trial, make_optimizer)
    best = study.best_trial().index
    study.rerun(best, n=reruns)
    while (trial := study.ask()) is not None:
        train(trial, make_optimizer)
    return best


def sgd(params, config):
    return torch.optim.SGD(params, **nesterov_config(config))


def adam(params, config):
    return torch.optim.Adam(params, **adam_config(config))


def test_two_rounds_end_to_end(storage, tmp_path, capsys):
    tag = uuid.uuid4().hex[:6]
    first = Study(f"sgd-{tag}", nesterov_space(4, learning_rate=(1e-3, 0.3)), storage=storage, max_trials=4,
                  goal="a Nesterov baseline", scientific=["learning_rate"], command="pytest")
    best_sgd = run_round(first, sgd, reruns=3)
    second = Study(f"adam-{tag}", adam_space(4, learning_rate=(1e-3, 0.3)), storage=storage, max_trials=4,
                   goal="does Adam beat the Nesterov baseline?", nuisance=["learning_rate"],
                   fixed={"model": "linear", "steps": STEPS})
    best_adam = run_round(second, adam, reruns=3)

    records = second.trials()
    replicates = [r for r in records if r.kind == "replicate"]
    assert [r.parent for r in replicates] == [best_adam] * 3
    assert len({r.seed for r in records}) == len(records)
    assert len({r.best_value for r in replicates}) == 3, "other seeds, other results"
    variance = trial_variance(second, best_adam)
    np.testing.assert_allclose(variance.values, [r.best_value for r in replicates])
    assert variance.std == pytest.approx(np.std([r.best_value for r in replicates], ddof=1))

    result = compare(first, second)
    assert result.verdict in VERDICTS and result.baseline.trial == best_sgd and result.candidate.trial == best_adam
    assert result.difference == pytest.approx(variance.mean - trial_variance(first, best_sgd).mean)

    assert main(["compare", f"sgd-{tag}", f"adam-{tag}:{best_adam}", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert f"verdict: {result.verdict}" in out and "both trial variances" in out and "complexity" in out
    assert main(["compare", f"sgd-{tag}:99", f"adam-{tag}", "--storage", storage]) == 1
    assert "trial_index=99 is not a trial" in capsys.readouterr().err
    assert main(["compare", f"nope-{tag}", f"adam-{tag}", "--storage", storage]) == 1
    assert "does not exist" in capsys.readouterr().err

    first.conclude("Nesterov at lr ~0.05 is the baseline", adopt=best_sgd)
    second.conclude("Adam: " + result.verdict)
    rows = [row for row in tuning_log(storage) if row.study.endswith(tag)]
    assert [(row.study, row.goal, row.adopted) for row in rows] == [
        (f"sgd-{tag}", "a Nesterov baseline", best_sgd), (f"adam-{tag}", "does Adam beat the Nesterov baseline?", None)]
    assert rows[0].round < rows[1].round
    assert (rows[1].trials_run, rows[1].replicates, rows[1].not_run) == (4, 3, 0)
    assert rows[1].fixed == {"model": "linear", "steps": STEPS} and rows[1].scientific == ()
    assert rows[0].scientific == ("learning_rate",) and rows[0].conclusion.startswith("Nesterov")

    assert main(["log", "--storage", storage]) == 0
    text = capsys.readouterr().out
    assert "goal" in text and "scientific" in text and "adopted baseline" in text
    assert f"sgd-{tag}" in text and f"trial {best_sgd}" in text and "(+3 reruns)" in text
    assert main(["log", "--storage", storage, "--markdown"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("| round | study | goal |") and f"| sgd-{tag} |" in markdown
    assert main(["log", "--storage", storage, "--csv", "-"]) == 0
    table = [row for row in csv.DictReader(io.StringIO(capsys.readouterr().out)) if row["study"].endswith(tag)]
    assert [row["adopted"] for row in table] == [str(best_sgd), ""]
    assert table[1]["fixed"] == f"model=linear;steps={STEPS}"

    if storage.startswith("sqlite"):
        from tunebook.report import render_report

        html = render_report(second)
        for text in ("does Adam beat the Nesterov baseline?", "The tuning log", "Trial variance and study variance",
                     "mean ± std of 3 reruns", "Adam: ", "model = linear", "(rerun of"):
            assert text in html, text


def test_log_and_compare_create_nothing(tmp_path, capsys):
    missing = tmp_path / "none" / "studies.db"
    assert main(["log", "--storage", f"sqlite:///{missing}"]) == 0
    assert "no studies" in capsys.readouterr().out
    assert main(["compare", "a", "b", "--storage", f"sqlite:///{missing}"]) == 1
    assert "no study database" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_the_isolation_plots_follow_the_declared_roles():
    from tunebook.analysis import analyze_study
    from tunebook.search import SearchSpace

    space = SearchSpace.from_dict({"optimizer": ["sgd", "adam"], "learning_rate": {"low": 1e-3, "high": 1.0,
                                                                                   "scale": "log"}})
    undeclared = Study("plain", space, storage=f"memory://{uuid.uuid4().hex}", max_trials=8)
    declared = Study("round", space, storage=f"memory://{uuid.uuid4().hex}", max_trials=8,
                     scientific="learning_rate")
    for study in (undeclared, declared):
        while (trial := study.ask()) is not None:
            trial.report(step=1, valid_loss=abs(np.log10(trial.params["learning_rate"]) + 1.5))
            trial.complete()
    assert analyze_study(undeclared, n_boot=100).scientific == ("optimizer",), "the default: the categorical one"
    analysis = analyze_study(declared, n_boot=100)
    assert analysis.scientific == ("learning_rate",)
    assert [item.scientific for item in analysis.isolation] == ["learning_rate"]
