"""Helpers shared by the study tests and their worker subprocesses.

``StandInSpace`` stands in for ``tunebook.search.SearchSpace`` with the same contract
(``sample(n, seed=, start=)`` where point i does not depend on n, ``to_dict``,
``from_dict``), so the study tests do not depend on the search module's internals.
"""

from __future__ import annotations

from typing import Any


def _unit(seed: int, index: int, dim: int) -> float:
    # SplitMix64 of (seed, index, dim): a deterministic stand-in for a Halton point.
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + dim * 0x94D049BB133111EB + 1) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return ((z ^ (z >> 31)) >> 11) / 2**53


class StandInSpace:
    def __init__(self, low: float = 1e-4, high: float = 1e-1) -> None:
        self.low, self.high = low, high

    def sample(self, n: int, seed: int = 0, start: int = 0) -> list[dict[str, Any]]:
        out = []
        for i in range(start, start + n):
            u, v = _unit(seed, i, 0), _unit(seed, i, 1)
            out.append({"lr": self.low * (self.high / self.low) ** u, "wd": v, "opt": ["adam", "sgd"][i % 2]})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StandInSpace:
        return cls(data["low"], data["high"])
