"""RMSprop: drop-in torch.optim.RMSprop with in-kernel clipping and a norm log."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from ._base import DEFAULT_NORM_LOG_CAPACITY, FusedOptimizer
from ._common_doc import check_common, check_rule, with_extras_doc

__all__ = ["RMSprop"]


@with_extras_doc
class RMSprop(FusedOptimizer):
    r"""RMSprop, a drop-in ``torch.optim.RMSprop`` whose step is one fused kernel.

    ``rule="torch"`` (default), torch.optim's formulas, per param:

    .. math::
        v &\leftarrow \alpha v + (1-\alpha) g^2,\quad v_0 = 0;\qquad
        \bar g \leftarrow \alpha \bar g + (1-\alpha) g,\ v' = v - \bar g^2
        \text{ (centered, else } v' = v) \\
        b &\leftarrow \mu b + \frac{g}{\sqrt{v'} + \epsilon},\quad
        \theta \leftarrow \theta - \eta b
        \qquad (\theta \leftarrow \theta - \eta \tfrac{g}{\sqrt{v'}+\epsilon}
        \text{ without momentum})

    ``rule="playbook"``, the Tuning Playbook FAQ's RMSProp: :math:`v_0 = 1`, :math:`\epsilon`
    inside the root and the learning rate inside the momentum buffer:

    .. math::
        b \leftarrow \mu b + \frac{\eta\, g}{\sqrt{v' + \epsilon}},\qquad
        \theta \leftarrow \theta - b

    Args: as ``torch.optim.RMSprop``; ``rule``: "torch" or "playbook".
    """

    _torch_class = torch.optim.RMSprop

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        rule: str = "torch",
        max_grad_norm: float | None = None,
        log_grad_norm: bool = True,
        norm_log_capacity: int = DEFAULT_NORM_LOG_CAPACITY,
        skip_nonfinite: bool = True,
        backend: str | None = None,
        process_group: Any = None,
    ) -> None:
        check_common(lr, eps, weight_decay)
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum} (must be >= 0)")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha} (must be >= 0)")
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable, rule=check_rule(rule),
        )
        super().__init__(
            params, defaults, max_grad_norm=max_grad_norm, log_grad_norm=log_grad_norm,
            norm_log_capacity=norm_log_capacity, skip_nonfinite=skip_nonfinite, backend=backend,
            process_group=process_group,
        )

    _sparse_grad_error = "RMSprop does not support sparse gradients"

    def _plan_key(self, group):
        return (float(group["momentum"]) > 0, bool(group["centered"]))

    def _collect_state(self, group, params):
        momentum, centered = float(group["momentum"]), bool(group["centered"])
        states = [self.state[p] for p in params]
        fresh = tuple(i for i, state in enumerate(states) if len(state) == 0)
        for p, state in zip(params, states):
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                fill = torch.ones_like if group["rule"] == "playbook" else torch.zeros_like
                state["square_avg"] = fill(p, memory_format=torch.preserve_format)
            if momentum > 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if centered and "grad_avg" not in state:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        keys = (
            "square_avg", "grad_avg" if centered else None,
            "momentum_buffer" if momentum > 0 else None, "step",
        )
        return keys, [[state[key] for state in states] if key else [] for key in keys], fresh

    def _family_step(self, group, params, grads, lists, fresh, control, lr_tensor, lr,
                     grad_scale, ops) -> None:
        square_avgs, grad_avgs, buffers, steps = lists
        ops.rmsprop_step_(
            params, grads, square_avgs, grad_avgs, buffers, steps, control, lr_tensor, lr,
            float(group["alpha"]), float(group["eps"]), float(group["weight_decay"]),
            float(group["momentum"]), bool(group["centered"]), bool(group["maximize"]),
            F.RULES[group["rule"]], grad_scale,
        )
