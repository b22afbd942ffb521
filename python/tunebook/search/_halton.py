"""Scrambled, shifted Halton points: the Python face of ``tunebook._rust.halton``."""

from __future__ import annotations

import operator

import numpy as np

from tunebook import _rust

#: The largest dimension :func:`halton` accepts: the first 1000 primes (2 .. 7919).
MAX_DIMENSION: int = _rust.HALTON_MAX_DIMENSION


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be an integer, not a bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}={value!r} must be an integer (got {type(value).__name__})") from None


def halton(n: int, d: int, seed: int = 0, start: int = 0) -> np.ndarray:
    r"""Points ``start .. start + n - 1`` of a scrambled, shifted Halton sequence.

    Dimension :math:`j` uses the :math:`j`-th prime :math:`b` as base. Point :math:`i`
    writes the shifted index :math:`i + s_j` in base :math:`b` (digits :math:`a_k`,
    least significant first), permutes every digit with its own random permutation
    :math:`\pi_{j,k}` (Owen-style scrambling, as ``scipy.stats.qmc.Halton(scramble=True)``)
    and reads the digits back after the radix point:

    .. math::

        u_j(i) = \sum_{k \ge 0} \pi_{j,k}(a_k)\, b^{-(k+1)}
        \quad \text{(on a } 2^{-64} \text{ grid, rounded down to a multiple of } 2^{-53}).

    The shift :math:`s_j` is a random start per dimension (Wang & Hickernell 2000), a
    b-adic shift that keeps the stratification of any :math:`b^m` consecutive points,
    unlike a real shift mod 1. Bousquet et al. (2017, arXiv:1706.03200) recommend
    scrambled, shifted Halton points for hyperparameter search; the playbook cites them.

    The sequence is indexed, not stateful: point ``i`` depends only on ``(seed, i)`` and
    its dimension, never on ``n``, so ``halton(10, d, seed, start=5)`` equals rows
    ``5 .. 14`` of ``halton(15, d, seed)``. That lets a study be extended, resumed or split
    across machines without changing earlier trials. The values are computed with integer
    arithmetic from a PRNG written out in the Rust source (SplitMix64), so they are the
    same on every platform; golden values pin them in the tests, and they change only
    with a major version.

    Args:
        n: number of points, ``>= 0``.
        d: number of dimensions, ``1 <= d <= MAX_DIMENSION`` (1000).
        seed: any integer in ``[0, 2**64)``; all randomness comes from it.
        start: index of the first point, ``>= 0``.

    Returns:
        A C-contiguous float64 array of shape ``(n, d)`` with values in ``[0, 1)``
        (multiples of ``2**-53``; never 1.0).

    Raises:
        ValueError: ``n < 0``, ``d < 1``, ``d > MAX_DIMENSION``, ``seed`` outside
            ``[0, 2**64)``, ``start < 0``, ``start + n >= 2**64``, or a non-integer.

    Example:
        >>> points = halton(4, 2, seed=1)
        >>> points.shape, bool((points >= 0).all() and (points < 1).all())
        ((4, 2), True)
        >>> bool((halton(2, 2, seed=1, start=2) == points[2:]).all())
        True
    """
    n, d = _as_int("n", n), _as_int("d", d)
    seed, start = _as_int("seed", seed), _as_int("start", start)
    if n < 0:
        raise ValueError(f"n={n} must be >= 0: ask for a non-negative number of points")
    if d < 1:
        raise ValueError(f"d={d} must be >= 1: ask for at least one dimension")
    if d > MAX_DIMENSION:
        raise ValueError(
            f"d={d} must be <= {MAX_DIMENSION}: tunebook's Halton sequence uses the first "
            f"{MAX_DIMENSION} primes as bases; use fewer dimensions"
        )
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed={seed} must be in [0, 2**64): use a non-negative 64-bit integer")
    if start < 0:
        raise ValueError(f"start={start} must be >= 0: it is the index of the first point")
    if start + n >= 2**64:
        raise ValueError(f"start={start} plus n={n} must be < 2**64: use a smaller start")
    return _rust.halton(n, d, seed, start)
