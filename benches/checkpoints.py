"""CheckpointKeeper save overhead vs torch.save alone, and the Rust ranking core vs NumPy.

Part 1, a save: ``torch.save`` to a file (the baseline, not durable), ``torch.save``
plus fsync (what durability costs anyone), ``CheckpointKeeper.save`` (atomic: temp
file, fsync, rename, directory fsync, index commit, evictions), and the time an
``async_save`` keeper blocks the training loop (the snapshot copy only).

Part 2, study ranking at 100k trials x 1k evaluations (``--trials``, ``--evals``):
``best_per_trial``, ``rank_trials``, ``best_per_bucket`` and ``bootstrap_best_of_k``
against the NumPy code one would write, in the same process. Medians of repeats.

    python benches/checkpoints.py [--trials 100000] [--evals 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tunebook.checkpoints import (
    CheckpointKeeper,
    best_per_bucket,
    best_per_trial,
    bootstrap_best_of_k,
    rank_trials,
)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def model_state(megabytes: int) -> dict[str, torch.Tensor]:
    n = megabytes * 2**20 // 4 // 8
    return {f"layer{i}.weight": torch.randn(n) for i in range(8)}


def bench_saves(repeats: int) -> None:
    print("Save one checkpoint (ms, median); ratio vs torch.save alone")
    print(f"{'state':>8}{'torch.save':>12}{'+fsync':>10}{'keeper':>10}{'ratio':>8}{'async blocks':>14}{'ratio':>8}")
    for megabytes in (4, 64):
        state = model_state(megabytes)
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            counter = iter(range(10**9))

            def plain() -> None:
                torch.save(state, directory / f"plain-{next(counter)}.pt")

            def durable() -> None:
                with open(directory / f"durable-{next(counter)}.pt", "wb") as file:
                    torch.save(state, file)
                    file.flush()
                    os.fsync(file.fileno())

            rng = np.random.default_rng(0)
            keeper = CheckpointKeeper(directory / "keeper", keep=3, metric="loss")
            async_keeper = CheckpointKeeper(directory / "async", keep=3, metric="loss", async_save=True)

            def keep() -> None:
                keeper.save(next(counter), state, {"loss": float(rng.random())})

            def keep_async() -> None:
                async_keeper.save(next(counter), state, {"loss": float(rng.random())})

            for warm_up in (plain, durable, keep, keep_async):  # page cache, serializer, thread
                warm_up()
            async_keeper.flush()
            t_plain = median_ms(plain, repeats)
            t_durable = median_ms(durable, repeats)
            t_keep = median_ms(keep, repeats)
            blocked = []
            for _ in range(repeats):
                async_keeper.flush()  # time the call alone, with no save queued
                start = time.perf_counter()
                keep_async()
                blocked.append(time.perf_counter() - start)
            async_keeper.close()
            keeper.close()
            t_async = 1000 * statistics.median(blocked)
        print(
            f"{megabytes:>6}MB{t_plain:>12.1f}{t_durable:>10.1f}{t_keep:>10.1f}{t_keep / t_plain:>7.2f}x"
            f"{t_async:>14.1f}{t_async / t_plain:>7.2f}x"
        )


def numpy_best_per_trial(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masked = np.where(np.isfinite(values), values, np.inf)
    position = masked.argmin(axis=1)
    best = masked[np.arange(len(values)), position]
    none = ~np.isfinite(best)
    return np.where(none, -1, position), np.where(none, np.nan, best)


def numpy_rank(best: np.ndarray) -> np.ndarray:
    finite = np.isfinite(best)
    return np.lexsort((np.arange(len(best)), np.where(finite, best, 0.0), ~finite))


def numpy_best_per_bucket(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bucket = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    ok = np.isfinite(y)
    order = np.lexsort((np.arange(len(y))[ok], y[ok], bucket[ok]))
    sorted_buckets = bucket[ok][order]
    first = np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]]
    index = np.full(len(edges) - 1, -1)
    index[sorted_buckets[first]] = np.flatnonzero(ok)[order][first]
    return index


def numpy_bootstrap_brute(best: np.ndarray, budgets: list[int], n_boot: int, rng: np.random.Generator) -> None:
    for k in budgets:
        draws = rng.integers(0, len(best), size=(n_boot, k))
        np.quantile(best[draws].min(axis=1), [0.05, 0.5, 0.95])


def bench_ranking(trials: int, evals: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(trials, evals))
    values[rng.random(trials) < 0.05, evals // 2 :] = np.nan  # diverged trials
    steps = np.arange(evals, dtype=np.int64) * 100
    print(f"\nRanking {trials} trials x {evals} evaluations (ms, median of {repeats}); NumPy in the same process")
    print(f"{'operation':<44}{'tunebook':>10}{'numpy':>10}{'speedup':>9}")

    def row(label: str, ours: Callable[[], object], theirs: Callable[[], object], n: int = repeats) -> None:
        t_ours, t_theirs = median_ms(ours, n), median_ms(theirs, n)
        print(f"{label:<44}{t_ours:>10.1f}{t_theirs:>10.1f}{t_theirs / t_ours:>8.1f}x")

    result = best_per_trial(values, steps)
    reference = numpy_best_per_trial(values)
    assert np.array_equal(result.position, reference[0]), "best_per_trial disagrees with NumPy"
    row("best_per_trial (best step of each trial)", lambda: best_per_trial(values, steps),
        lambda: numpy_best_per_trial(values), n=max(3, repeats // 2))
    best = result.value
    assert np.array_equal(rank_trials(best), numpy_rank(best))
    row("rank_trials", lambda: rank_trials(best), lambda: numpy_rank(best))
    x = 10 ** rng.uniform(-5, -1, size=trials)
    edges = np.geomspace(1e-5, 1e-1, 51)
    assert np.array_equal(best_per_bucket(x, best, edges).index, numpy_best_per_bucket(x, best, edges))
    row("best_per_bucket (50 log buckets)", lambda: best_per_bucket(x, best, edges),
        lambda: numpy_best_per_bucket(x, best, edges))
    budgets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    row("bootstrap best-of-k, k<=1000, 1000 resamples",
        lambda: bootstrap_best_of_k(best, budgets, n_boot=1000, quantiles=[0.05, 0.5, 0.95]),
        lambda: numpy_bootstrap_brute(best, budgets, 1000, rng), n=3)
    all_budgets = np.unique(np.geomspace(1, trials, 30).astype(int))
    t = median_ms(lambda: bootstrap_best_of_k(best, all_budgets, n_boot=1000), 3)
    print(f"{'bootstrap, 30 budgets up to k=' + str(trials):<44}{t:>10.1f}{'(brute force: k x more work)':>28}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--evals", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-saves", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    if not args.skip_saves:
        bench_saves(args.repeats)
    bench_ranking(args.trials, args.evals, args.repeats)


if __name__ == "__main__":
    main()
