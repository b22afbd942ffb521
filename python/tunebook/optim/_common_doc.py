"""Shared docstring fragments, the docstring decorator and the argument checks of the
optimizer classes."""

from __future__ import annotations

from typing import Any, TypeVar

from torch import Tensor

EXTRAS_DOC = """
    Keyword-only extras (beyond torch.optim):
        max_grad_norm: clip by the global L2 norm over all params of all groups, exactly as
            ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm)`` before the step
            (coefficient ``min(1, max_grad_norm / (norm + 1e-6))``), inside the fused step.
            ``p.grad`` itself is left unclipped. None (default): no clipping.
        log_grad_norm: write each step's unclipped global norm into a device ring buffer,
            read with :meth:`grad_norms` (default True).
        norm_log_capacity: ring buffer length (default 65536 steps).
        skip_nonfinite: when the global norm is inf/NaN (or its sum of squares overflows
            float32, a norm above ~1.8e19), skip the step: params, state and step counts stay
            bit-identical, and the skip is counted (default True). False: step like torch.
        backend: "cpu", "cuda", "reference" or None (default: the compiled kernels for the
            params' device, chosen at the first step, else the pure-torch reference with one
            warning).
        process_group: the ``torch.distributed`` process group (or its name) over which the
            gradients' sum of squares is all-reduced, when each rank holds only its own
            partition of the params as plain tensors (hand-written ZeRO). Not needed for
            DTensor params (FSDP2, tensor parallelism: their device mesh is used), nor under
            DDP (every rank has every gradient), nor under
            ``torch.distributed.optim.ZeroRedundancyOptimizer`` (its ``process_group`` is
            taken). See README "Distributed training".

    Differences from torch.optim (the drop-in contract, README "Drop-in contract"):
        the step is always one fused multi-tensor call (``foreach``, ``fused``,
        ``capturable`` are accepted and stored); all params with a gradient must be on one
        device; Tensor ``betas`` raise a clear error; ``differentiable=True`` runs
        torch.optim's own single-tensor update (differentiable w.r.t. params, grads, state
        and tensor hyperparameters, as torch's) after tunebook's clipping, with one host
        sync per step for the skip decision, and refuses ``rule="playbook"``; each step
        bumps the ``_version`` of params and state as torch's default (foreach) step does;
        with a GradScaler, ``p.grad`` is left unscaled after the step as torch's fused
        optimizers leave it; a captured CUDA step needs a device ``lr`` tensor (a CPU one is
        read on the host each eager step).
"""

_Class = TypeVar("_Class")


def with_extras_doc(cls: _Class) -> _Class:
    """Appends :data:`EXTRAS_DOC` to a class docstring (``r\"\"\"...\"\"\" + X`` in the class
    body is an expression, not a docstring, and would leave ``__doc__`` None)."""
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + EXTRAS_DOC
    return cls


def check_common(lr: Any, eps: float | None, weight_decay: float) -> None:
    """torch.optim's checks of ``lr``, ``eps`` and ``weight_decay``, with its messages."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        value = float(lr.detach())
        if not 0.0 <= value:
            raise ValueError(f"Invalid learning rate: {value} (lr must be >= 0)")
    elif not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr} (lr must be >= 0)")
    if eps is not None and not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps} (eps must be >= 0)")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be >= 0)")


def check_betas(betas: Any) -> None:
    """Adam's and NAdam's betas: two floats in [0, 1) (Tensor betas are not supported)."""
    first, second = betas
    if isinstance(first, Tensor) != isinstance(second, Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    if isinstance(first, Tensor):
        raise ValueError(
            "betas[0] as a Tensor is not supported by tunebook (the fused step reads betas on "
            "the host); pass floats, e.g. betas=(0.9, 0.999)"
        )
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta} (must be in [0, 1))")


def check_rule(rule: str) -> str:
    if rule not in ("torch", "playbook"):
        raise ValueError(f"{rule=} must be 'torch' (torch.optim's formulas) or 'playbook'")
    return rule


__all__ = ["EXTRAS_DOC", "check_betas", "check_common", "check_rule", "with_extras_doc"]
