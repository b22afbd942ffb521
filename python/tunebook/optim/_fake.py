"""Fake (meta) kernels of the ``tunebook::`` ops, so torch.compile can trace them.

The update ops mutate their inputs in place and return nothing; ``grad_sq_norm`` returns a
new 0-dim float32 tensor on the grads' device.
"""

from __future__ import annotations

import torch

_MUTATING = ("step_control_", "sgd_step_", "adam_step_", "rmsprop_step_", "nadam_step_")


@torch.library.register_fake("tunebook::grad_sq_norm")
def _grad_sq_norm_fake(grads):
    return grads[0].new_empty((), dtype=torch.float32)


def _nothing(*args, **kwargs):
    return None


for _name in _MUTATING:
    torch.library.register_fake(f"tunebook::{_name}")(_nothing)
