"""Quasi-random search: tunebook.search.halton against scipy.stats.qmc.Halton(scramble=True).

Prints two tables:

1. Speed: medians of wall time for (n, d) = (2^20, 32) and (2^16, 1000), tunebook and
   scipy run in the same process, and the ratio.
2. Uniformity: mean centred discrepancy (scipy.stats.qmc.discrepancy) over seeds at small
   n for tunebook, scipy, uniform random sampling, tunebook's points with a real shift
   mod 1 added (what the playbook reference does), and the playbook's reference
   implementation (MLCommons algoperf ``halton.py``, which has no seed: one value).

The reference is not part of tunebook. Point ``TUNEBOOK_ALGOPERF_HALTON`` at a copy of
``algoperf/halton.py`` (default ``/tmp/algoperf/halton.py``) to fill its column; without
one the column is skipped with a message.

Usage: ``python benches/halton.py [--quick]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import types

import numpy as np
from scipy.stats import qmc

from tunebook.search import halton


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        del result
    return statistics.median(times)


def _load_reference():
    path = os.environ.get("TUNEBOOK_ALGOPERF_HALTON", "/tmp/algoperf/halton.py")
    if not os.path.exists(path):
        print(f"[algoperf column skipped: no reference halton.py at {path}; set TUNEBOOK_ALGOPERF_HALTON]")
        return None
    if "absl" not in sys.modules:  # it only calls absl.logging.info
        try:
            import absl.logging  # noqa: F401
        except ImportError:
            absl = types.ModuleType("absl")
            absl.logging = types.SimpleNamespace(info=lambda *a, **k: None)  # type: ignore[attr-defined]
            sys.modules["absl"], sys.modules["absl.logging"] = absl, absl.logging  # type: ignore[assignment]
    spec = importlib.util.spec_from_file_location("algoperf_halton_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def speed(quick: bool) -> None:
    cases = [(2**16, 32), (2**14, 1000)] if quick else [(2**20, 32), (2**16, 1000)]
    print(f"\n## Speed (median wall time; {os.cpu_count()} CPUs)\n")
    print(f"| {'n':>8} | {'d':>5} | {'tunebook s':>10} | {'Mpoints/s':>9} | {'scipy s':>8} | {'Mpoints/s':>9} | {'speed-up':>8} |")
    print("|---------:|------:|-----------:|----------:|---------:|----------:|---------:|")
    for n, d in cases:
        halton(1024, d, seed=0)  # load the extension, warm the allocator
        qmc.Halton(d, scramble=True, seed=0).random(1024)
        ours = _median_seconds(lambda: halton(n, d, seed=1), 7)
        theirs = _median_seconds(lambda: qmc.Halton(d, scramble=True, seed=1).random(n), 3)
        print(
            f"| {n:>8} | {d:>5} | {ours:>10.4f} | {n / ours / 1e6:>9.2f} | {theirs:>8.3f} "
            f"| {n / theirs / 1e6:>9.3f} | {theirs / ours:>7.1f}x |"
        )


def uniformity(quick: bool) -> None:
    reference = _load_reference()
    seeds = range(8 if quick else 32)
    print(f"\n## Mean centred discrepancy over {len(seeds)} seeds (lower is better)\n")
    print(
        f"| {'n':>4} | {'d':>2} | {'tunebook':>9} | {'scipy':>9} | {'ratio':>5} | {'random':>9} "
        f"| {'mod-1 shift':>11} | {'algoperf':>9} |"
    )
    print("|-----:|---:|----------:|----------:|------:|----------:|------------:|----------:|")
    for n in (32, 64, 128):
        for d in (2, 4, 8):
            ours = np.mean([qmc.discrepancy(halton(n, d, seed=s)) for s in seeds])
            scipy = np.mean([qmc.discrepancy(qmc.Halton(d, scramble=True, seed=s).random(n)) for s in seeds])
            rand = np.mean([qmc.discrepancy(np.random.default_rng(s).random((n, d))) for s in seeds])
            rng = np.random.default_rng(12345)
            shifted = np.mean([qmc.discrepancy((halton(n, d, seed=s) + rng.random(d)) % 1.0) for s in seeds])
            if reference is not None:
                # No seed: its permutations and shifts are seeded by each prime; its final
                # shuffle of the rows does not change the discrepancy.
                ref = f"{qmc.discrepancy(np.array(reference.generate_sequence(n, d))):>9.5f}"
            else:
                ref = f"{'-':>9}"
            print(
                f"| {n:>4} | {d:>2} | {ours:>9.5f} | {scipy:>9.5f} | {ours / scipy:>5.2f} | {rand:>9.5f} "
                f"| {shifted:>11.5f} | {ref} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer seeds")
    args = parser.parse_args()
    print(f"# benches/halton.py on {platform.machine()}, Python {platform.python_version()}")
    speed(args.quick)
    uniformity(args.quick)


if __name__ == "__main__":
    main()
