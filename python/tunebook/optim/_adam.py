"""Adam and AdamW: drop-in torch.optim.Adam/AdamW with in-kernel clipping and a norm log."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from ._base import DEFAULT_NORM_LOG_CAPACITY, FusedOptimizer
from ._common_doc import check_betas, check_common, check_rule, with_extras_doc

__all__ = ["Adam", "AdamW"]


@with_extras_doc
class Adam(FusedOptimizer):
    r"""Adam, a drop-in ``torch.optim.Adam`` whose step is one fused multi-tensor kernel.

    ``rule="torch"`` (default), torch.optim's formulas, per param with gradient :math:`g`:

    .. math::
        g &\leftarrow -g \text{ if maximize};\quad
        g \leftarrow g + \lambda\theta \ \text{(L2)} \ \text{ or }\
        \theta \leftarrow \theta(1 - \eta\lambda) \ \text{(decoupled, AdamW)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \quad
        (\hat v = \max(\hat v, v) \text{ with amsgrad}) \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}\,
            \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``rule="playbook"``, the Tuning Playbook FAQ's Adam (bias correction outside
    :math:`\epsilon`):

    .. math::
        b_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t},\qquad
        \theta \leftarrow \theta - \eta\, b_t \frac{m}{\sqrt{v} + \epsilon}

    Args: as ``torch.optim.Adam`` (``lr`` may be a 0-dim tensor, read on the device each
    step; ``foreach``, ``fused`` and ``capturable`` are accepted and stored, the step is
    always fused and capturable; ``differentiable=True``: see below).
    rule: "torch" or "playbook".

    Example:
        >>> opt = tunebook.optim.Adam(model.parameters(), lr=3e-4, max_grad_norm=1.0)
        >>> loss.backward(); opt.step(); opt.zero_grad()
        >>> opt.grad_norms().norms[-1]  # the last unclipped global norm
    """

    _decoupled_default = False
    _torch_class = torch.optim.Adam

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool | None = None,
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
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._decoupled_default
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, rule=check_rule(rule),
        )
        super().__init__(
            params, defaults, max_grad_norm=max_grad_norm, log_grad_norm=log_grad_norm,
            norm_log_capacity=norm_log_capacity, skip_nonfinite=skip_nonfinite, backend=backend,
            process_group=process_group,
        )

    _sparse_grad_error = (
        "Adam does not support sparse gradients, please consider SparseAdam instead"
    )

    def _plan_key(self, group):
        return bool(group["amsgrad"])

    def _collect_state(self, group, params):
        amsgrad = group["amsgrad"]
        states = [self.state[p] for p in params]
        fresh = tuple(i for i, state in enumerate(states) if len(state) == 0)
        for p, state in zip(params, states):
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            elif amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if amsgrad else None, "step")
        lists = [[state[key] for state in states] if key else [] for key in keys]
        return keys, lists, fresh

    def _family_step(self, group, params, grads, lists, fresh, control, lr_tensor, lr,
                     grad_scale, ops) -> None:
        exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = lists
        beta1, beta2 = group["betas"]
        ops.adam_step_(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, control, lr_tensor,
            lr, float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]),
            bool(group["amsgrad"]), bool(group["maximize"]),
            bool(group["decoupled_weight_decay"]), F.RULES[group["rule"]], grad_scale,
        )


@with_extras_doc
class AdamW(Adam):
    r"""AdamW, a drop-in ``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay
    :math:`\theta \leftarrow \theta (1 - \eta\lambda)` and ``weight_decay=1e-2`` by default.
    """

    _decoupled_default = True
    _torch_class = torch.optim.AdamW

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        rule: str = "torch",
        max_grad_norm: float | None = None,
        log_grad_norm: bool = True,
        norm_log_capacity: int = DEFAULT_NORM_LOG_CAPACITY,
        skip_nonfinite: bool = True,
        backend: str | None = None,
        process_group: Any = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True, rule=rule, max_grad_norm=max_grad_norm,
            log_grad_norm=log_grad_norm, norm_log_capacity=norm_log_capacity,
            skip_nonfinite=skip_nonfinite, backend=backend,
            process_group=process_group,
        )

    def __setstate__(self, state):  # noqa: D105
        super().__setstate__(state)
        # As torch.optim.AdamW: loading any state (an Adam state_dict included) keeps the
        # decay decoupled.
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
