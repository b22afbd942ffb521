"""Training seeds of trials: derived from the study seed, stable forever.

A seed is the first 31 bits of ``BLAKE2b("tunebook-trial-seed:{study seed}:{kind}:{keys}")``:
the same on every platform, Python and NumPy version (golden values are pinned in
``tests/test_study_features.py``), and in ``[0, 2**31)`` so that every RNG takes it
(``torch.manual_seed``, ``numpy.random.seed``, ``random.seed``, JAX, TensorFlow).

* quasi-random trial at Halton point ``p``: ``trial_seed(study_seed, "quasirandom", p)``;
* replicate ``r`` (1, 2, ...) of trial ``i``: ``trial_seed(study_seed, "replicate", i, r)``;
* the ``k``-th exploitation trial (0, 1, ...): ``trial_seed(study_seed, "exploit", k)``.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 31


def trial_seed(study_seed: int, kind: str, *keys: int) -> int:
    """The training seed of a trial (see the module docstring)."""
    text = ":".join(["tunebook-trial-seed", str(int(study_seed)), kind, *(str(int(k)) for k in keys)])
    digest = hashlib.blake2b(text.encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)
