"""How a study records the procedures' results (study attributes, a JSON codec that
rebuilds only known classes) and the report sections that show them."""

from __future__ import annotations

import base64
import doctest
import json
import math
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunebook import playbook
from tunebook.analysis import AnalysisWarning
from tunebook.playbook import (
    constant_lr_sweep,
    early_instability_check,
    lr_sweep_instability,
    max_train_steps_from_sweep,
    record,
    recorded,
    round_two,
    shortest_stable_warmup,
    throughput_sweep,
    warmup_sweep,
    with_warmup,
)
from tunebook.playbook._record import decode, encode
from tunebook.study import Study

SECTIONS = {
    "throughput_sweep": "Batch size: the throughput sweep",
    "max_train_steps": "How many steps: max_train_steps from a constant learning-rate sweep",
    "lr_sweep_instability": "Training instability above the best learning rate",
    "early_instability_check": "Early instability: a short run at twice the best learning rate",
    "shortest_stable_warmup": "Warmup: the shortest warmup that trains stably",
    "round_two": "Round 2: the longer run&#x27;s schedule",
}


def test_the_docstring_examples_run():
    for module in (playbook._grid, playbook._instability, playbook._steps, playbook._warmup, playbook._round_two,
                   playbook):
        result = doctest.testmod(module, verbose=False)
        assert result.failed == 0, module.__name__


def sweep_study(storage: str, name: str = "sweep") -> Study:
    """A constant learning-rate sweep whose 3rd learning rate fits fastest; the two
    largest rise mid-training (unstable above lr*)."""
    space = constant_lr_sweep(1e-3, 1.0, 5)
    study = Study(name, space, storage=storage, max_trials=space.size, metric="valid_loss")
    while (trial := study.ask()) is not None:
        k = trial.index
        fit = {0: None, 1: 600, 2: 300, 3: 450, 4: None}[k]
        for step in range(0, 1001, 20):
            error = max(0.0, 1 - step / fit) if fit else 0.4
            train = 0.1 + 2 * math.exp(-step / 150) + (0.002 * max(0, step - 500) if k >= 3 else 0.0)
            trial.report(step=step, train_error=error, train_loss=train, valid_loss=0.3 + 0.1 * abs(k - 2) + train)
        trial.complete()
    return study


def all_results(study: Study):
    results = {"max_train_steps": max_train_steps_from_sweep(study, record=True),
               "lr_sweep_instability": lr_sweep_instability(study, record=True)}
    results["throughput_sweep"] = throughput_sweep(lambda b: time.sleep(0.001 * max(1, b / 32)), start=8,
                                                   warmup_steps=1, timed_steps=2, repeats=2, study=study)

    def train(lr, steps, every, report):
        for step in range(0, steps + 1, every):
            report(step, 2.3 * math.exp(-step / 30) + (1.0 if 40 <= step < 60 else 0.0))

    results["early_instability_check"] = early_instability_check(train, 0.01, steps=200, study=study)
    results["round_two"] = round_two({"learning_rate": 0.1}, "linear", 1000, 2000, warmup_steps=100)
    results["round_two"].record(study)
    return results


def test_records_round_trip_through_storage(tmp_path):
    study = sweep_study(f"sqlite:///{tmp_path}/s.db")
    results = all_results(study)
    reopened = Study("sweep", storage=study.storage)
    records = {r.procedure: r for r in recorded(reopened)}
    assert set(records) == set(results)
    for procedure, original in results.items():
        item = records[procedure]
        assert item.key == f"playbook.{procedure}" and item.error == "" and item.recorded_at > 0
        assert_same(item.result, original, ignore={"schedule"})
    assert recorded(reopened, "round_two")[0].result.schedule is None  # a callable is not data
    assert reopened.attrs["playbook.throughput_sweep"]["format"] == 1


def assert_same(a, b, ignore=frozenset()):
    assert type(a) is type(b)
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        for field in a._fields:
            if field not in ignore:
                assert_same(getattr(a, field), getattr(b, field), ignore)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)  # NaN == NaN here
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y, ignore)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key], ignore)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_the_codec_keeps_types_and_rebuilds_only_known_classes():
    value = {"a": (1, 2.5, None, "x"), "b": [np.arange(3, dtype=np.int64), np.array([[np.nan, np.inf]])],
             "w": AnalysisWarning("code", "message", "subject"), "s": np.float32(1.5)}
    back = decode(json.loads(json.dumps(encode(value))))
    assert back["a"] == (1, 2.5, None, "x") and isinstance(back["a"], tuple)
    assert back["b"][0].dtype == np.int64 and back["b"][1].shape == (1, 2) and np.isnan(back["b"][1][0, 0])
    assert back["w"] == AnalysisWarning("code", "message", "subject") and back["s"] == 1.5
    with pytest.raises(ValueError, match="unknown recorded class 'os.system'"):
        decode({"__tuple__": "os.system", "fields": {}})
    with pytest.raises(TypeError, match="cannot record a set"):
        encode({1, 2})
    with pytest.raises(TypeError, match="only dicts with string keys"):
        encode({1: 2})


def test_bad_records_and_keys(tmp_path):
    study = Study("s", constant_lr_sweep(0.1, 1, 3), storage=f"sqlite:///{tmp_path}/s.db", max_trials=3)
    sweep = throughput_sweep(lambda b: None, max_batch_size=16, warmup_steps=0, timed_steps=1, repeats=1)
    with pytest.raises(ValueError, match="key='mine' must start with 'playbook.'"):
        record(study, sweep, key="mine")
    with pytest.raises(TypeError, match="result must be the result of a tunebook.playbook procedure"):
        record(study, {"not": "a result"})
    with pytest.raises(TypeError, match="study must be a tunebook.Study"):
        record([], sweep)
    assert record(study, sweep, key="playbook.throughput_sweep.gpu") == "playbook.throughput_sweep.gpu"
    study.set_attr("playbook.broken", {"procedure": "throughput_sweep", "format": 1, "recorded_at": 1.0,
                                       "result": {"__tuple__": "ThroughputSweep", "fields": {"device": "cpu"}}})
    study.set_attr("playbook.future", {"procedure": "throughput_sweep", "format": 99, "result": {}})
    study.set_attr("not.playbook", 1)
    items = {r.key: r for r in recorded(study)}
    assert set(items) == {"playbook.throughput_sweep.gpu", "playbook.broken", "playbook.future"}
    assert items["playbook.broken"].result is None and "lacks the fields" in items["playbook.broken"].error
    assert "format 99" in items["playbook.future"].error
    assert items["playbook.throughput_sweep.gpu"].result.recommended == sweep.recommended


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    pytest.importorskip("matplotlib")
    from tunebook.report import write_report

    tmp_path = tmp_path_factory.mktemp("playbook-report")
    storage = f"sqlite:///{tmp_path}/s.db"
    study = sweep_study(storage)
    results = all_results(study)
    # The warmup sweep's own study, with its own section.
    plan = warmup_sweep(0.2, 20_000)
    warm = Study("warmup", plan.space, storage=storage, max_trials=plan.space.size)
    while (trial := warm.ask()) is not None:
        w = trial.params["warmup_steps"]
        for step in np.unique(np.geomspace(1, 3 * w, 30).astype(int)).tolist():
            loss = 2 * math.exp(-step / (w + 10)) + 0.1 + (0.05 * (step - w) if w < 100 and step > w else 0)
            trial.report(step=step, train_loss=loss)
        trial.complete()
    results["shortest_stable_warmup"] = shortest_stable_warmup(warm, record=True)
    from tunebook.cli import main

    path = tmp_path / "sweep.html"  # as `tunebook report` writes it
    assert main(["report", study.name, "--storage", storage, "--out", str(path)]) == 0
    warm_path = write_report(warm, tmp_path / "warmup.html")
    return results, path.read_text(encoding="utf-8"), warm_path.read_text(encoding="utf-8")


def test_the_report_has_a_section_per_recorded_procedure(report_html):
    results, html, warm_html = report_html
    for procedure, title in SECTIONS.items():
        page = warm_html if procedure == "shortest_stable_warmup" else html
        assert f"<h2>{title}</h2>" in page, procedure
        assert results[procedure].verdict.split(":")[0].replace("'", "&#x27;") in page
    # Each section cites its playbook section and draws its figure.
    assert "Playbook: “Choosing the batch size" in html and "(Figure 5)" in html and "(Figure 6)" in warm_html
    alts = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', html)
    drawn = {alt for _, alt in alts}
    assert {SECTIONS[p] for p in results if p != "shortest_stable_warmup"} <= drawn
    for encoded, _ in alts:
        assert base64.b64decode(encoded)[:8] == b"\x89PNG\r\n\x1a\n"
    # The sections come in the playbook's order, after the best configuration.
    positions = [html.index(f"<h2>{SECTIONS[p]}</h2>") for p in
                 ("throughput_sweep", "max_train_steps", "lr_sweep_instability", "early_instability_check",
                  "round_two")]
    assert positions == sorted(positions) and html.index("<h2>Best configuration") < positions[0]
    assert positions[-1] < html.index("<h2>Hyperparameter axis plots")


def test_the_sections_tables_and_warnings(report_html):
    results, html, warm_html = report_html
    sweep = results["throughput_sweep"]
    assert "<th>batch size</th><th>time per step (ms)</th>" in html
    assert f'<tr class="best"><td>{sweep.recommended}</td>' in html
    assert "<th>first step at the target (train_error)</th>" in html
    assert '<tr class="best"><td>2</td><td>0.03162</td><td>300</td></tr>' in html  # the fastest fit
    assert "<th>warmup steps</th>" in warm_html
    # Their warnings join the report's list at the top, once each.
    codes = re.findall(r"<li><code>([a-z_]+)</code>", html.split("<h2>Best configuration")[0])
    assert "unstable_above_best_lr" in codes and "loss_rises" in codes
    assert len(codes) == len(set(codes)) or codes.count("best_step_late") <= 1
    assert "class='verdict-bad'" in html  # the unstable verdicts are highlighted


def test_an_unreadable_record_is_named_and_nothing_else_is_shown(tmp_path):
    pytest.importorskip("matplotlib")
    from tunebook.report import render_report

    study = Study("small", constant_lr_sweep(0.01, 1.0, 3), storage=f"sqlite:///{tmp_path}/s.db", max_trials=3)
    while (trial := study.ask()) is not None:
        trial.report(step=1, valid_loss=1.0 + trial.index)
        trial.complete()
    html = render_report(study)
    assert not any(f"<h2>{title}</h2>" in html for title in SECTIONS.values())
    study.set_attr("playbook.throughput_sweep", {"procedure": "throughput_sweep", "format": 99, "result": {}})
    html = render_report(study)
    assert "<h2>Batch size: the throughput sweep</h2>" in html and "This record could not be read" in html
    assert sum(f"<h2>{title}</h2>" in html for title in SECTIONS.values()) == 1


def test_the_procedures_do_not_import_matplotlib():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, math, tunebook.playbook as p; "
            "p.detect_instability([0, 1, 2], [1.0, 0.5, 2.0]); p.warmup_sweep(0.1, 1000); "
            "p.round_two({'learning_rate': 0.1}, 'cosine', 10, 20); "
            "p.throughput_sweep(lambda b: None, max_batch_size=16, warmup_steps=0, timed_steps=1, repeats=1); "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    env = dict(os.environ, PYTHONPATH=str(Path(playbook.__file__).parents[2]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.floats(allow_nan=True),
                        st.text(max_size=8))
arrays = st.one_of(
    st.lists(st.floats(allow_nan=True, width=64), max_size=6).map(lambda v: np.asarray(v, dtype=np.float64)),
    st.lists(st.integers(-2**31, 2**31), max_size=6).map(lambda v: np.asarray(v, dtype=np.int64)),
    st.lists(st.booleans(), max_size=6).map(lambda v: np.asarray(v, dtype=bool)),
)
values = st.recursive(
    st.one_of(json_leaves, arrays, st.builds(AnalysisWarning, st.text(max_size=5), st.text(max_size=5))),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
                            st.dictionaries(st.text(max_size=5).filter(lambda k: not k.startswith("__")), inner,
                                            max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(values)
def test_any_recordable_value_survives_json(value):
    assert_same(decode(json.loads(json.dumps(encode(value)))), value)


@settings(max_examples=150, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**7),
       st.floats(allow_nan=True, allow_infinity=True))
def test_warmup_arguments_are_checked(unstable, max_train_steps, factor):
    try:
        sweep = warmup_sweep(unstable, max_train_steps, factor=factor)
    except ValueError as error:
        assert any(name in str(error) for name in ("unstable_base_lr", "max_train_steps", "factor"))
        return
    assert math.isfinite(sweep.base_learning_rate) and sweep.factor > 1
    assert all(w <= 0.1 * max_train_steps for w in sweep.warmup_steps)
    warm = with_warmup(0.1, sweep.warmup_steps[-1], max_train_steps)
    assert warm.max_train_steps == max_train_steps + sweep.warmup_steps[-1]


def test_every_drawing_returns_a_figure():
    pytest.importorskip("matplotlib")
    from tunebook.playbook import detect_instability, instability_plot, plot, round_two_plot

    steps = np.arange(100)
    found = detect_instability(steps, [2.0 - 0.015 * s if s <= 60 else 1.1 + 0.05 * (s - 60) for s in steps])
    figure = instability_plot(found, label="train_loss", log_x=True)
    assert figure.axes[0].get_xscale() == "symlog" and len(figure.axes[0].lines) == 2
    assert plot(found).axes  # the dispatcher knows every result
    two = round_two({"learning_rate": 0.1}, "cosine", 100, 300)
    assert len(round_two_plot(two).axes[0].lines) == 3  # both schedules and the end of Round 1
    with pytest.raises(TypeError, match="no drawing for a dict"):
        plot({})
