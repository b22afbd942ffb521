"""Checks of the integers every module takes the same way: training steps and seeds.

A step or a seed may be a Python ``int``, a NumPy integer scalar or an integer tensor
with one element (anything with ``__index__`` but a bool). Steps are stored as signed
64-bit integers (SQLite and PostgreSQL ``BIGINT``, NumPy ``int64`` histories, the Rust
ranking core), so they lie in ``[0, 2**63)``; so do study seeds. Halton seeds in
:func:`tunebook.halton` may use the full ``[0, 2**64)``.
"""

from __future__ import annotations

import operator
from typing import Any

#: One past the largest step (and study seed): steps are stored as signed 64-bit integers.
STEP_LIMIT = 2**63


def as_integer(name: str, value: Any) -> int:
    """``value`` as an ``int``; ValueError naming ``name`` unless it is an integer."""
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):  # also NumPy's
        raise ValueError(f"{name}={value!r} must be an integer, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r} must be an integer, got {type(value).__name__}") from None
    except (RuntimeError, ValueError):  # a tensor with several elements
        raise ValueError(f"{name} must be a single integer, got {type(value).__name__} {value!r}") from None


def as_step(value: Any, name: str = "step") -> int:
    """A training step: an integer in ``[0, 2**63)``."""
    step = as_integer(name, value)
    if not 0 <= step < STEP_LIMIT:
        raise ValueError(
            f"{name} must be a non-negative integer below 2**63 (steps are stored as 64-bit integers), got {step}"
        )
    return step


def as_seed(value: Any, name: str = "seed", limit: int = STEP_LIMIT) -> int:
    """A seed: an integer in ``[0, limit)``."""
    seed = as_integer(name, value)
    if not 0 <= seed < limit:
        bound = "2**63" if limit == STEP_LIMIT else "2**64" if limit == 2**64 else str(limit)
        raise ValueError(f"{name}={seed} must be in [0, {bound}); pick a smaller non-negative seed")
    return seed


def as_text(name: str, value: Any, *, limit: int | None = None, empty: bool = True) -> str:
    """A string a database stores as given: no NUL character (PostgreSQL refuses it), at
    most ``limit`` characters, non-empty unless ``empty``."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if not empty and not value:
        raise ValueError(f"{name} must be a non-empty string")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters, got {value[:40]!r}")
    if limit is not None and len(value) > limit:
        raise ValueError(f"{name} must be at most {limit} characters, got {len(value)}: {value[:40]!r}...")
    return value

