"""Shared docstring fragments and argument checks of the optimizer classes."""

from __future__ import annotations

from typing import Any

from torch import Tensor

EXTRAS_DOC = """
    Keyword-only extras (beyond torch.optim):
        max_grad_norm: clip by the global L2 norm over all params of all groups, exactly as
            ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm)`` before the step
            (coefficient ``min(1, max_grad_norm / (norm + 1e-6))``), inside the fused step.
            None (default): no clipping.
        log_grad_norm: write each step's unclipped global norm into a device ring buffer,
            read with :meth:`grad_norms` (default True).
        norm_log_capacity: ring buffer length (default 65536 steps).
        skip_nonfinite: when the global norm is inf/NaN, skip the step: params, state and
            step counts stay bit-identical, and the skip is counted (default True).
        backend: "cpu", "cuda", "reference" or None (default: the compiled kernels for the
            params' device, else the pure-torch reference with one warning).
"""


def check_common(lr: Any, eps: float | None, weight_decay: float) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr as a Tensor must have exactly one element, got {lr.numel()}")
    elif not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr=} must be >= 0")
    if eps is not None and not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps=} must be >= 0")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay=} must be >= 0")


def check_betas(betas: Any) -> None:
    """Adam's and NAdam's betas: two floats in [0, 1) (Tensor betas are not supported)."""
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            raise ValueError(f"betas[{i}] as a Tensor is not supported by tunebook")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta} must be in [0, 1)")


def check_rule(rule: str) -> str:
    if rule not in ("torch", "playbook"):
        raise ValueError(f"{rule=} must be 'torch' (torch.optim's formulas) or 'playbook'")
    return rule
