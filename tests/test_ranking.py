"""The ranking functions (Rust core) against plain NumPy / Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunebook.checkpoints import (
    TopK,
    best_per_bucket,
    best_per_trial,
    bootstrap_best_of_k,
    rank_trials,
)

# Few distinct values so ties are common, plus every kind of non-finite value.
VALUES = st.sampled_from([0.0, 1.0, 2.0, -1.5, 3.25, math.nan, math.inf, -math.inf])


def reference_best(row, steps, mode, tie):
    """Best finite (value, step) of one history by brute force; (-1, nan) if none."""
    candidates = [(v, s, i) for i, (v, s) in enumerate(zip(row, steps)) if math.isfinite(v)]
    if not candidates:
        return -1, math.nan, -1
    sign = 1.0 if mode == "min" else -1.0
    step_sign = 1 if tie == "earlier" else -1
    v, s, i = min(candidates, key=lambda c: (sign * c[0], step_sign * c[1]))
    return s, v, i


def reference_rank(values, mode):
    sign = 1.0 if mode == "min" else -1.0
    return sorted(
        range(len(values)),
        key=lambda i: (0, sign * values[i], i) if math.isfinite(values[i]) else (1, 0.0, i),
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(VALUES, min_size=0, max_size=12), min_size=1, max_size=8),
    st.sampled_from(["min", "max"]),
    st.sampled_from(["earlier", "later"]),
    st.booleans(),
)
def test_best_per_trial_matches_brute_force(rows, mode, tie, shuffled_steps):
    rng = np.random.default_rng(len(rows))
    steps = [
        (rng.permutation(len(r)) * 10 if shuffled_steps else np.arange(len(r)) * 10).astype(np.int64) for r in rows
    ]
    got = best_per_trial([np.array(r, dtype=np.float64) for r in rows], steps, mode=mode, tie=tie)
    for t, (row, st_) in enumerate(zip(rows, steps)):
        step, value, position = reference_best(row, st_, mode, tie)
        assert got.step[t] == step
        assert got.position[t] == position
        if math.isnan(value):
            assert math.isnan(got.value[t])
        else:
            assert got.value[t] == value


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_per_trial_dense_matches_numpy(mode):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 20, size=(300, 50)).astype(np.float64)
    values[rng.random(values.shape) < 0.1] = np.nan
    values[rng.random(values.shape) < 0.02] = np.inf
    values[5] = np.nan  # a trial with no finite value
    finite = np.where(np.isfinite(values), values, np.nan)
    eval_steps = np.arange(50) * 100
    got = best_per_trial(values, eval_steps, mode=mode)
    keep = ~np.all(np.isnan(finite), axis=1)
    arg = np.full(300, -1)
    arg[keep] = (np.nanargmin if mode == "min" else np.nanargmax)(finite[keep], axis=1)  # first occurrence
    np.testing.assert_array_equal(got.position, arg)
    np.testing.assert_array_equal(got.step, np.where(arg >= 0, eval_steps[np.maximum(arg, 0)], -1))
    expected = np.full(300, np.nan)
    expected[keep] = (np.nanmin if mode == "min" else np.nanmax)(finite[keep], axis=1)
    np.testing.assert_array_equal(got.value, expected)


def test_best_per_trial_large_input_parallel_path_matches_numpy():
    # Over 2^20 values the Rust core splits rows across threads.
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2000, 700))
    got = best_per_trial(values, mode="max")
    np.testing.assert_array_equal(got.position, values.argmax(axis=1))
    np.testing.assert_array_equal(got.value, values.max(axis=1))


def test_best_per_trial_input_errors():
    with pytest.raises(ValueError, match="mode"):
        best_per_trial([[1.0]], mode="best")
    with pytest.raises(ValueError, match="tie"):
        best_per_trial([[1.0]], tie="first")
    with pytest.raises(ValueError, match="steps must have shape"):
        best_per_trial(np.zeros((2, 3)), steps=np.arange(4))
    with pytest.raises(ValueError, match="steps"):
        best_per_trial([np.zeros(2), np.zeros(3)], steps=[np.arange(2), np.arange(2)])


@settings(max_examples=200, deadline=None)
@given(st.lists(VALUES, max_size=30), st.sampled_from(["min", "max"]))
def test_rank_trials_matches_sorting(values, mode):
    order = rank_trials(np.array(values, dtype=np.float64), mode=mode)
    assert order.tolist() == reference_rank(values, mode)


def test_rank_trials_reduces_histories_first():
    histories = [[3.0, 0.5], [np.nan, np.nan], [0.2, 9.0]]
    assert rank_trials(histories, mode="min").tolist() == [2, 0, 1]
    assert rank_trials([np.array([1.0]), np.array([5.0, 0.1])], mode="max").tolist() == [1, 0]


def reference_buckets(x, y, edges, mode):
    n = len(edges) - 1
    best_index, best_value = [-1] * n, [math.nan] * n
    sign = 1.0 if mode == "min" else -1.0
    for i, (xv, yv) in enumerate(zip(x, y)):
        if not (math.isfinite(xv) and math.isfinite(yv)) or xv < edges[0] or xv > edges[-1]:
            continue
        b = n - 1 if xv == edges[-1] else int(np.searchsorted(edges, xv, side="right")) - 1
        if best_index[b] < 0 or sign * yv < sign * best_value[b]:
            best_index[b], best_value[b] = i, yv
    return best_index, best_value


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_per_bucket_matches_brute_force(mode):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 5, size=500)
    y = rng.integers(0, 30, size=500).astype(float)
    x[::37] = np.nan
    y[::23] = np.nan
    edges = np.array([-0.5, 0.0, 1.0, 1.5, 4.0])
    got = best_per_bucket(x, y, edges, mode=mode)
    index, value = reference_buckets(x, y, edges, mode)
    np.testing.assert_array_equal(got.index, index)
    np.testing.assert_array_equal(got.value, value)
    np.testing.assert_allclose(got.centers, [-0.25, 0.5, 1.25, 2.75])


def test_best_per_bucket_bins_match_numpy_edges():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, size=200)
    y = rng.normal(size=200)
    got = best_per_bucket(x, y, 7)
    np.testing.assert_allclose(got.edges, np.histogram_bin_edges(x, 7), rtol=1e-12)
    counts, _ = np.histogram(x, got.edges)
    assert ((got.index >= 0) == (counts > 0)).all()
    index, _ = reference_buckets(x, y, got.edges, "min")
    np.testing.assert_array_equal(got.index, index)


def test_best_per_bucket_log_scale():
    x = np.array([1e-5, 3e-5, 2e-4, 3e-3, 1e-2, 0.0, -1.0])
    y = np.array([5.0, 4.0, 3.0, 2.0, 1.0, -10.0, -10.0])
    got = best_per_bucket(x, y, 3, log=True)
    np.testing.assert_allclose(got.edges, np.geomspace(1e-5, 1e-2, 4), rtol=1e-12)
    # Non-positive x cannot sit on a log axis and is left out.
    assert got.index.tolist() == [1, 2, 4]
    np.testing.assert_allclose(got.centers, np.sqrt(got.edges[:-1] * got.edges[1:]))
    with pytest.raises(ValueError, match="strictly increasing"):
        best_per_bucket(x, y, [1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="bins"):
        best_per_bucket(x, y, 0)


def exact_best_of_k_cdf(sorted_values, k):
    """P(best of k draws with replacement ranks at j or better), j = 0..n-1."""
    n = len(sorted_values)
    j = np.arange(1, n + 1)
    return 1.0 - (1.0 - j / n) ** k


@pytest.mark.parametrize("mode", ["min", "max"])
def test_bootstrap_matches_the_exact_distribution(mode):
    rng = np.random.default_rng(4)
    best = rng.normal(size=40)
    budgets = [1, 2, 5, 20, 100]
    result = bootstrap_best_of_k(best, budgets, n_boot=40_000, seed=3, mode=mode, return_samples=True)
    ranked = np.sort(best) if mode == "min" else np.sort(best)[::-1]
    for row, k in enumerate(budgets):
        samples = result.samples[row]
        ranks = np.searchsorted(ranked, samples) if mode == "min" else np.searchsorted(-ranked, -samples)
        empirical = np.array([(ranks <= j).mean() for j in range(len(best))])
        # Dvoretzky-Kiefer-Wolfowitz: sup error < 0.012 with probability 1 - 2e-5.
        assert np.abs(empirical - exact_best_of_k_cdf(ranked, k)).max() < 0.012
    # The quantiles are numpy's linear quantiles of the samples.
    np.testing.assert_allclose(result.values, np.quantile(result.samples, result.quantiles, axis=1).T, rtol=1e-12)


def test_bootstrap_agrees_with_brute_force_resampling():
    rng = np.random.default_rng(5)
    best = rng.exponential(size=25)
    draws = rng.integers(0, 25, size=(20_000, 6))
    brute = best[draws].min(axis=1)
    ours = bootstrap_best_of_k(best, [6], n_boot=20_000, seed=9, return_samples=True).samples[0]
    # Same law: each trial is the best equally often (4 standard deviations apart at most).
    ours_freq = np.array([(ours == v).mean() for v in best])
    brute_freq = np.array([(brute == v).mean() for v in best])
    assert ours_freq.sum() == 1.0
    np.testing.assert_allclose(ours_freq, brute_freq, atol=0.02)
    assert abs(ours.mean() - brute.mean()) < 0.02


def test_bootstrap_infeasible_trials_and_seeds():
    best = np.array([np.nan, np.inf, 1.0, 2.0])
    result = bootstrap_best_of_k(best, [1, 1000], n_boot=4000, seed=1, quantiles=[0.0, 0.5, 0.99], return_samples=True)
    # k = 1: half the draws hit an infeasible trial, which is worse than anything.
    assert np.isclose(np.isposinf(result.samples[0]).mean(), 0.5, atol=0.03)
    assert result.values[1].tolist() == [1.0, 1.0, 1.0]
    maxed = bootstrap_best_of_k(best, [1], n_boot=100, mode="max", return_samples=True).samples
    assert set(np.unique(maxed)) <= {-np.inf, 1.0, 2.0}
    again = bootstrap_best_of_k(best, [1, 1000], n_boot=4000, seed=1, quantiles=[0.0, 0.5, 0.99])
    np.testing.assert_array_equal(again.values, result.values)
    other = bootstrap_best_of_k(best, [1], n_boot=4000, seed=2, return_samples=True).samples
    assert not np.array_equal(other[0], result.samples[0])
    with pytest.raises(ValueError, match="budgets"):
        bootstrap_best_of_k(best, [0])
    with pytest.raises(ValueError, match="quantiles"):
        bootstrap_best_of_k(best, [1], quantiles=[1.5])
    with pytest.raises(ValueError, match="at least one trial"):
        bootstrap_best_of_k([], [1])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_best_of_k(best, [1], n_boot=0)


def reference_top_k(seen, k, mode, tie):
    sign = 1.0 if mode == "min" else -1.0
    step_sign = 1 if tie == "earlier" else -1
    finite = [(s, v) for s, v in seen if math.isfinite(v)]
    return [s for s, _ in sorted(finite, key=lambda e: (sign * e[1], step_sign * e[0]))[:k]]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(VALUES, max_size=40),
    st.integers(1, 5),
    st.sampled_from(["min", "max"]),
    st.sampled_from(["earlier", "later"]),
)
def test_top_k_matches_brute_force(values, k, mode, tie):
    top = TopK(k, mode, tie)
    kept: set[int] = set()
    seen = []
    for step, value in enumerate(values):
        admitted, evicted = top.offer(step, value)
        seen.append((step, value))
        if admitted:
            kept.add(step)
        kept -= set(evicted)
        expected = reference_top_k(seen, k, mode, tie)
        assert [s for s, _ in top.entries()] == expected
        assert kept == set(expected)
        assert not (admitted and not math.isfinite(value)), "non-finite values are never admitted"


def test_top_k_errors():
    with pytest.raises(ValueError, match="keep must be >= 1"):
        TopK(0)
    top = TopK(2)
    top.offer(3, 1.0)
    with pytest.raises(ValueError, match="already ranked"):
        top.offer(3, 0.5)
    with pytest.raises(ValueError, match="mode"):
        TopK(1, "maximum")
