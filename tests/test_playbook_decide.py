"""Deciding what to adopt: trial variance, study variance and compare, on synthetic data
with a known answer (planted variance, a clear win, a win inside the noise, too few
replicates), checked against independent references (NumPy, SciPy's Welch test, the
exact law of the best of k)."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from study_helpers import StandInSpace

from tunebook.playbook import compare, study_variance, trial_variance
from tunebook.playbook._compare import VERDICTS, replicates_needed
from tunebook.study import Study


def _study_with_replicates(values: list[float], original: float = 0.5, *, mode: str = "min", name: str = "s",
                           storage: str | None = None) -> Study:
    """A study whose trial 0 scored ``original`` and whose replicates score ``values``."""
    study = Study(name, StandInSpace(), storage=storage or f"memory://{uuid.uuid4().hex}", max_trials=1, mode=mode)
    trial = study.ask()
    trial.report(step=1, valid_loss=original)
    trial.complete()
    if values:
        study.rerun(0, n=len(values))
    for value in values:
        replicate = study.ask()
        replicate.report(step=3, valid_loss=value)
        replicate.complete()
    return study


def test_trial_variance_recovers_a_planted_variance():
    planted = np.random.default_rng(0).normal(1.0, 0.1, size=20)
    study = _study_with_replicates(list(planted))
    result = trial_variance(study, 0)
    np.testing.assert_array_equal(result.values, planted)
    assert result.n == 20 and result.original == 0.5
    assert result.mean == pytest.approx(planted.mean()) and result.std == pytest.approx(planted.std(ddof=1))
    assert 0.07 < result.std < 0.13, "the planted 0.1"
    assert result.sem == pytest.approx(planted.std(ddof=1) / math.sqrt(20))
    assert result.replicates == tuple(range(1, 21)) and len(set(result.seeds)) == 20
    assert not result.warnings
    via_replicate = trial_variance(study, 5)
    assert via_replicate.trial == 0 and via_replicate.std == result.std, "a replicate's index means its parent"
    with_original = trial_variance(study, 0, include_original=True)
    assert with_original.n == 21 and with_original.values[0] == 0.5
    assert "± 0.087 (std over 20 replicates)" in str(result)


def test_trial_variance_counts_unstable_and_pending_replicates():
    study = _study_with_replicates([1.0, 1.2])
    study.rerun(0, n=5)
    diverged = study.ask()
    diverged.report(step=1, valid_loss=float("nan"))
    diverged.infeasible("NaN")
    nan_complete = study.ask()
    nan_complete.report(step=1, valid_loss=float("inf"))
    nan_complete.complete()
    study.ask()  # still running
    result = trial_variance(study, 0)
    assert (result.n, result.infeasible, result.pending) == (2, 2, 1)
    assert {w.code for w in result.warnings} == {"unstable_replicates", "pending_replicates"}
    one_done = _study_with_replicates([])
    one_done.rerun(0, n=2)
    _finish = one_done.ask()
    _finish.report(step=1, valid_loss=1.0)
    _finish.complete()
    lonely = trial_variance(one_done, 0)
    assert lonely.n == 1 and math.isnan(lonely.std) and lonely.warnings[0].code == "few_replicates"
    with pytest.raises(ValueError, match="trial_index=42 is not a trial"):
        trial_variance(study, 42)


def test_study_variance_matches_the_exact_law_of_the_best_of_k():
    n, k = 40, 40
    trials = [{"index": i, "params": {}, "state": "complete", "best_value": float(i)} for i in range(n)]
    result = study_variance(trials, n_boot=20_000)
    # Best of k draws from {0..n-1} with replacement: P(J >= j) = ((n - j) / n) ** k.
    j = np.arange(n)
    survival = ((n - j) / n) ** k
    pmf = survival - np.r_[survival[1:], 0.0]
    mean = (pmf * j).sum()
    exact_std = math.sqrt((pmf * (j - mean) ** 2).sum())
    assert (result.budget, result.n_trials) == (k, n)
    assert result.std == pytest.approx(exact_std, rel=0.05)
    assert result.low <= result.median <= result.high
    assert study_variance(trials, budget=4, n_boot=20_000).std > result.std, "a smaller budget moves more"
    flat = [{"index": i, "params": {}, "state": "complete", "best_value": 1.0} for i in range(12)]
    assert study_variance(flat).std == 0.0


def test_study_variance_leaves_out_replicates_and_counts_infeasible_draws():
    trials = [{"index": i, "params": {}, "state": "complete", "best_value": float(i)} for i in range(5)]
    trials += [{"index": 5, "params": {}, "state": "infeasible", "best_value": None},
               {"index": 6, "params": {}, "state": "complete", "best_value": -100.0, "kind": "replicate"},
               {"index": 7, "params": {}, "state": "complete", "best_value": -50.0, "kind": "exploit"}]
    result = study_variance(trials, budget=1, n_boot=5000)
    assert result.n_trials == 6 and result.low >= 0.0, "replicates and exploitation trials are not draws"
    assert {w.code for w in result.warnings} == {"infeasible_draws", "few_trials"}
    with pytest.raises(ValueError, match="budget"):
        study_variance(trials, budget=0)
    with pytest.raises(ValueError, match="n_boot"):
        study_variance(trials, n_boot=10)
    with pytest.raises(ValueError, match="no finished quasi-random trial"):
        study_variance([])


def _welch_interval(baseline, candidate, confidence):
    # SciPy's Welch test of (baseline - candidate): the improvement for mode "min".
    test = stats.ttest_ind(baseline, candidate, equal_var=False)
    interval = test.confidence_interval(confidence_level=confidence)
    return interval.low, interval.high


def test_compare_a_clear_win():
    rng = np.random.default_rng(1)
    baseline, candidate = rng.normal(1.0, 0.02, 5), rng.normal(0.9, 0.02, 5)
    result = compare(baseline, candidate)
    assert result.verdict == "adopt" and result.rerun_n is None
    assert result.difference == pytest.approx(candidate.mean() - baseline.mean())
    assert result.improvement == pytest.approx(baseline.mean() - candidate.mean())
    assert result.uncertainty == pytest.approx(math.sqrt(baseline.var(ddof=1) / 5 + candidate.var(ddof=1) / 5))
    np.testing.assert_allclose(result.interval, _welch_interval(baseline, candidate, 0.9))
    assert "verdict: adopt" in result.message and "complexity" in result.message
    assert "± " in result.message and "both trial variances" in result.message
    flipped = compare(candidate, baseline)
    assert flipped.verdict == "worse" and flipped.improvement == pytest.approx(-result.improvement)
    higher_is_better = compare(baseline, candidate, mode="max")
    assert higher_is_better.verdict == "worse"


def test_compare_a_win_inside_the_noise():
    rng = np.random.default_rng(2)
    noise = rng.normal(0.0, 0.05, (2, 6))
    result = compare(1.0 + noise[0], 0.995 + noise[1])
    assert result.verdict == "no detectable difference" and result.rerun_n is None
    assert result.interval[0] < 0 < result.interval[1]
    assert "keep the simpler" in result.message


def test_compare_with_too_few_replicates_asks_for_more():
    result = compare([1.0, 1.1], [0.9, 0.95])
    assert result.verdict == "too few replicates" and result.rerun_n >= 3
    assert f"Rerun with n={result.rerun_n} to decide" in result.message
    alone = compare([1.0], [0.5, 0.6, 0.7])
    assert alone.verdict == "too few replicates" and math.isnan(alone.uncertainty)
    # A difference the replicates almost resolve: the n that would (80% power).
    baseline, candidate = [1.0, 1.05, 0.95, 1.02, 0.98], [0.96, 1.01, 0.91, 0.98, 0.94]
    borderline = compare(baseline, candidate)
    assert borderline.verdict == "too few replicates" and 5 < borderline.rerun_n <= 20
    sb, sc, d = np.std(baseline, ddof=1), np.std(candidate, ddof=1), np.mean(baseline) - np.mean(candidate)
    for n in range(2, 21):
        df = (sb**2 / n + sc**2 / n) ** 2 / ((sb**2 / n) ** 2 / (n - 1) + (sc**2 / n) ** 2 / (n - 1))
        if (stats.t.ppf(0.95, df) + stats.t.ppf(0.8, df)) * math.sqrt((sb**2 + sc**2) / n) <= d:
            break
    assert borderline.rerun_n == n
    assert replicates_needed(0.0, 1.0, 1.0, confidence=0.9) is None


def test_compare_studies_and_trials():
    base = _study_with_replicates([1.0, 1.01, 0.99, 1.0], original=0.9, name="base")
    cand = _study_with_replicates([0.8, 0.81, 0.79, 0.8], original=0.7, name="cand")
    result = compare(base, cand)
    assert result.verdict == "adopt" and result.baseline.study == "base" and result.baseline.trial == 0
    assert result.improvement == pytest.approx(0.2), "the replicates, not the lucky originals"
    assert compare((base, 0), (cand, 3)).verdict == "adopt"
    with pytest.raises(ValueError, match="trial_index=9 is not a trial"):
        compare((base, 9), cand)
    maximise = _study_with_replicates([0.5, 0.6, 0.7], mode="max", name="acc")
    with pytest.raises(ValueError, match="same metric and direction"):
        compare(base, maximise)
    for kwargs, message in [({"confidence": 1.5}, "confidence"), ({"min_replicates": 1}, "min_replicates"),
                            ({"max_replicates": 2}, "max_replicates"), ({"mode": "best"}, "mode")]:
        with pytest.raises(ValueError, match=message):
            compare(base, cand, **kwargs)
    with pytest.raises(ValueError, match="baseline must be"):
        compare("base", cand)
    empty = Study("empty", StandInSpace(), storage=f"memory://{uuid.uuid4().hex}")
    with pytest.raises(ValueError, match="candidate: study 'empty' has no trial"):
        compare(base, empty)


@settings(max_examples=60, deadline=None)
@given(baseline=st.lists(st.floats(-1e6, 1e6), max_size=8), candidate=st.lists(st.floats(-1e6, 1e6), max_size=8),
       confidence=st.floats(0.5, 0.99))
def test_compare_any_values(baseline, candidate, confidence):
    result = compare(baseline, candidate, confidence=confidence)
    assert result.verdict in VERDICTS
    swapped = compare(candidate, baseline, confidence=confidence)
    pairs = {("adopt", "worse"), ("worse", "adopt"), ("no detectable difference", "no detectable difference"),
             ("too few replicates", "too few replicates")}
    assert (result.verdict, swapped.verdict) in pairs
    if result.verdict == "too few replicates":
        assert 3 <= result.rerun_n <= 20
