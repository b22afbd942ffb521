"""The functional core: the step of each optimizer family over lists of tensors.

Each function has two interchangeable implementations with the same signature: the fused
op ``torch.ops.tunebook.<name>`` (compiled, CPU or CUDA, routed by the dispatcher; see
:mod:`tunebook.optim._kernels`) and the pure-torch single-tensor reference
(:mod:`tunebook.optim._reference`). ``ops_for(backend)`` picks one; the optimizer classes
only validate, keep state and call these.

The chain each family implements, as optax would name it, is
``clip_by_global_norm(max_grad_norm) -> skip_if_nonfinite -> <family's scaling> ->
scale_by_learning_rate``; the first two steps are ``grad_sq_norm`` + ``step_control_``,
which the update ops read from the small ``control`` tensor.
"""

from __future__ import annotations

from types import ModuleType

from . import _kernels, _reference

RULES = {"torch": _reference.RULE_TORCH, "playbook": _reference.RULE_PLAYBOOK}


def ops_for(backend: str) -> ModuleType:
    """The op implementations for a backend: compiled ("cpu", "cuda", and "meta", whose
    fake kernels only check shapes) or "reference". Both are modules of plain functions, so
    torch.compile traces a step through either."""
    return _reference if backend == "reference" else _kernels
