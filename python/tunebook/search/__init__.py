"""Quasi-random search: scrambled, shifted Halton sequences and search spaces.

The playbook recommends quasi-random search for the exploration phase of tuning: a
low-discrepancy sequence covers a search space more evenly than random sampling, yet,
unlike a grid, any prefix of it is a good design and it extends without changing the
trials already run.

    >>> from tunebook.search import SearchSpace
    >>> space = SearchSpace.from_dict({
    ...     "lr": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    ...     "opt": {"feasible_points": ["adam", "nesterov"]},
    ... })
    >>> trials = space.sample(16, seed=0)
    >>> sorted(trials[0])
    ['lr', 'opt']

Public names:
    halton: points ``start .. start + n - 1`` of the sequence, a float64 array (n, d).
    SearchSpace: hyperparameters and conditions; ``sample`` maps points to trials.
    Parameter: one hyperparameter of a space (read-only).
    MAX_DIMENSION: the largest dimension ``halton`` supports (1000).
"""

from tunebook.search._halton import MAX_DIMENSION, halton
from tunebook.search._parameters import Parameter
from tunebook.search._space import SearchSpace

__all__ = ["MAX_DIMENSION", "Parameter", "SearchSpace", "halton"]
