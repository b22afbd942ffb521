"""SGD: drop-in torch.optim.SGD (momentum, Nesterov) with in-kernel clipping and a norm log."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import DEFAULT_NORM_LOG_CAPACITY, FusedOptimizer
from ._common_doc import check_common, with_extras_doc

__all__ = ["SGD"]


@with_extras_doc
class SGD(FusedOptimizer):
    r"""SGD with momentum, a drop-in ``torch.optim.SGD`` whose step is one fused kernel.

    torch.optim's formulas (the playbook uses the same ones), per param:

    .. math::
        g &\leftarrow -g \text{ if maximize};\quad g \leftarrow g + \lambda\theta \\
        b &\leftarrow g \text{ (first step)},\quad
        b \leftarrow \mu b + (1-\tau) g \text{ (after)} \\
        d &= g + \mu b \text{ (nesterov)}\ \text{ or }\ d = b;\qquad
        \theta \leftarrow \theta - \eta d

    Args: as ``torch.optim.SGD`` (``lr`` may be a 0-dim tensor; ``foreach`` and ``fused``
    are accepted; ``differentiable=True``: see below).

    Note: a momentum buffer is created zero-filled on a param's first step, so if that very
    step is skipped (non-finite norm) and ``dampening != 0``, the next step dampens the
    first gradient (torch's fused SGD leaves the buffer uninitialised in that case).

    Example:
        >>> opt = tunebook.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
        ...                          nesterov=True, max_grad_norm=1.0)
    """

    _torch_class = torch.optim.SGD

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        max_grad_norm: float | None = None,
        log_grad_norm: bool = True,
        norm_log_capacity: int = DEFAULT_NORM_LOG_CAPACITY,
        skip_nonfinite: bool = True,
        backend: str | None = None,
        process_group: Any = None,
    ) -> None:
        check_common(lr, None, weight_decay)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach,
            differentiable=differentiable, fused=fused,
        )
        super().__init__(
            params, defaults, max_grad_norm=max_grad_norm, log_grad_norm=log_grad_norm,
            norm_log_capacity=norm_log_capacity, skip_nonfinite=skip_nonfinite, backend=backend,
            process_group=process_group,
        )

    _scalar_state_keys = ()
    # Buffers made this step start as buf = g (torch's clone): the lists hold for one step
    # only while some are new.
    _fresh_state_changes_update = True
    _sparse_grad_error = None

    def _plan_key(self, group):
        return float(group["momentum"]) != 0

    def _collect_state(self, group, params):
        if float(group["momentum"]) == 0:
            return (None,), [[]], ()  # no state at all, as torch (no empty entries either)
        first: list[int] = []
        buffers: list[Tensor] = []
        for i, p in enumerate(params):
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["momentum_buffer"] = buf
                first.append(i)
            buffers.append(buf)
        return ("momentum_buffer",), [buffers], tuple(first)

    def _family_step(self, group, params, grads, lists, fresh, control, lr_tensor, lr,
                     grad_scale, ops) -> None:
        (buffers,) = lists
        momentum = float(group["momentum"])
        args = (
            control, lr_tensor, lr, momentum, float(group["dampening"]),
            float(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]),
        )
        if momentum == 0:
            ops.sgd_step_(params, grads, [], *args, False, grad_scale)
        elif not fresh:
            ops.sgd_step_(params, grads, buffers, *args, False, grad_scale)
        elif len(fresh) == len(params):
            ops.sgd_step_(params, grads, buffers, *args, True, grad_scale)
        else:
            is_first = set(fresh)
            for flag in (True, False):
                idx = [i for i in range(len(params)) if (i in is_first) == flag]
                ops.sgd_step_(
                    [params[i] for i in idx], [grads[i] for i in idx],
                    [buffers[i] for i in idx], *args, flag, grad_scale,
                )
