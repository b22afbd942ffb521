"""NAdam: drop-in torch.optim.NAdam with in-kernel clipping and a norm log."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from ._base import DEFAULT_NORM_LOG_CAPACITY, FusedOptimizer
from ._common_doc import check_betas, check_common, check_rule, with_extras_doc

__all__ = ["NAdam"]


@with_extras_doc
class NAdam(FusedOptimizer):
    r"""NAdam, a drop-in ``torch.optim.NAdam`` whose step is one fused kernel.

    ``rule="torch"`` (default), torch.optim's formulas with the momentum schedule
    :math:`\mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi})` (:math:`\psi` = momentum_decay):

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g,\qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad d = \sqrt{v / (1-\beta_2^t)} + \epsilon \\
        \theta &\leftarrow \theta - \eta \frac{1-\mu_t}{1-\prod_{i\le t}\mu_i}\frac{g}{d}
            - \eta \frac{\mu_{t+1}}{1-\prod_{i\le t+1}\mu_i}\frac{m}{d}

    ``rule="playbook"``, the Tuning Playbook FAQ's NAdam (no momentum schedule):

    .. math::
        b_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t},\qquad
        \theta \leftarrow \theta - \eta\, b_t
            \frac{\beta_1 m + (1-\beta_1) g}{\sqrt{v} + \epsilon}

    Args: as ``torch.optim.NAdam``; ``rule``: "torch" or "playbook" (``momentum_decay`` then
    only drives the ``mu_product`` state kept for torch compatibility).
    """

    _torch_class = torch.optim.NAdam

    _scalar_state_keys = ("step", "mu_product")

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        rule: str = "torch",
        max_grad_norm: float | None = None,
        log_grad_norm: bool = True,
        norm_log_capacity: int = DEFAULT_NORM_LOG_CAPACITY,
        skip_nonfinite: bool = True,
        backend: str | None = None,
        process_group: Any = None,
    ) -> None:
        check_common(lr, eps, weight_decay)
        check_betas(betas)
        if not 0.0 <= momentum_decay:
            raise ValueError(f"Invalid momentum_decay value: {momentum_decay} (must be >= 0)")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, rule=check_rule(rule),
        )
        super().__init__(
            params, defaults, max_grad_norm=max_grad_norm, log_grad_norm=log_grad_norm,
            norm_log_capacity=norm_log_capacity, skip_nonfinite=skip_nonfinite, backend=backend,
            process_group=process_group,
        )

    _sparse_grad_error = "NAdam does not support sparse gradients"

    def _collect_state(self, group, params):
        states = [self.state[p] for p in params]
        fresh = tuple(i for i, state in enumerate(states) if len(state) == 0)
        for p, state in zip(params, states):
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["mu_product"] = torch.ones((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        keys = ("exp_avg", "exp_avg_sq", "mu_product", "step")
        return keys, [[state[key] for state in states] for key in keys], fresh

    def _family_step(self, group, params, grads, lists, fresh, control, lr_tensor, lr,
                     grad_scale, ops) -> None:
        exp_avgs, exp_avg_sqs, mu_products, steps = lists
        beta1, beta2 = group["betas"]
        ops.nadam_step_(
            params, grads, exp_avgs, exp_avg_sqs, mu_products, steps, control, lr_tensor, lr,
            float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]),
            float(group["momentum_decay"]), bool(group["decoupled_weight_decay"]),
            bool(group["maximize"]), F.RULES[group["rule"]], grad_scale,
        )
