"""Fused drop-in replacements for torch.optim with in-kernel clipping and a norm log.

``SGD``, ``RMSprop``, ``Adam``, ``AdamW`` and ``NAdam`` take torch.optim's arguments and
state_dict layout, plus keyword-only extras: ``max_grad_norm`` (global-norm clipping inside
the step), ``log_grad_norm``/``norm_log_capacity`` (a device ring buffer of per-step norms,
read with ``opt.grad_norms()``), ``skip_nonfinite`` (skip steps whose norm is inf/NaN) and,
where the playbook differs from torch, ``rule="playbook"``.

The step runs compiled multi-tensor kernels (csrc/, built just in time and cached) on the
CPU or CUDA, or the pure-torch reference path; ``opt.backend`` tells which. What is the same
as torch.optim and what differs (the drop-in contract) is in the README and in each class's
docstring.
"""

from ._adam import Adam, AdamW
from ._base import DEFAULT_NORM_LOG_CAPACITY, FusedOptimizer, GradNormLog
from ._build import build_library, library_backends
from ._nadam import NAdam
from ._rmsprop import RMSprop
from ._sgd import SGD

__all__ = [
    "SGD",
    "RMSprop",
    "Adam",
    "AdamW",
    "NAdam",
    "GradNormLog",
    "FusedOptimizer",
    "DEFAULT_NORM_LOG_CAPACITY",
    "build_library",
    "library_backends",
]
