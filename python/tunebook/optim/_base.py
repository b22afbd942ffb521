"""The machinery every tunebook optimizer shares: global-norm clipping, the gradient-norm
log, non-finite skipping, GradScaler support, backend choice and torch state_dict layout.

One ``step()`` runs, with no host synchronisation:

1. ``grad_sq_norm``: the sum of squares of every gradient of every param group (skipped when
   clipping, the log and non-finite skipping are all off);
2. ``step_control_``: on the device, ``norm = sqrt(sum) / grad_scale``, the clip coefficient
   ``min(1, max_grad_norm / (norm + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``'s), the skip
   flag (``norm`` not finite, or GradScaler's ``found_inf``), the counters, and ``norm``
   written into a ring buffer;
3. one fused update per param group and dtype, which multiplies each gradient by the
   coefficient as it reads it, and changes nothing at all when the skip flag is set.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _functional as F
from ._build import library_backends

__all__ = ["FusedOptimizer", "GradNormLog", "DEFAULT_NORM_LOG_CAPACITY"]

DEFAULT_NORM_LOG_CAPACITY = 1 << 16
_BACKENDS = ("cpu", "cuda", "reference")
_STATE_DICT_KEY = "tunebook_grad_norms"
_warned_reference_on: set[str] = set()


class GradNormLog(NamedTuple):
    """The gradient-norm history of an optimizer (see ``FusedOptimizer.grad_norms``).

    Attributes:
        norms: 1-D float32 CPU tensor, the unclipped global L2 norm of each logged step in
            step order, the most recent ``capacity`` of them; skipped steps appear as
            inf/NaN. Empty when the log is off.
        clipped: steps whose clip coefficient was below 1.
        skipped: steps skipped (non-finite norm, or GradScaler found inf).
        steps: steps attempted (``step()`` calls that had at least one gradient).
        max_grad_norm: the clipping threshold, None when clipping is off.
    """

    norms: Tensor
    clipped: int
    skipped: int
    steps: int
    max_grad_norm: float | None


class FusedOptimizer(Optimizer):
    """Base class: a torch.optim.Optimizer whose step is a handful of fused ops.

    Subclasses define ``_family_step(group, params, grads, control, ops)`` and
    ``_init_state(group, param)`` and the torch defaults.
    """

    # GradScaler then hands over `grad_scale`/`found_inf` instead of calling step() only
    # when no inf was found, exactly as with torch's fused optimizers: no host sync.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        max_grad_norm: float | None,
        log_grad_norm: bool,
        norm_log_capacity: int,
        skip_nonfinite: bool,
        backend: str | None,
    ) -> None:
        if defaults.get("differentiable"):
            raise NotImplementedError(
                f"{type(self).__name__}(differentiable=True) is not supported by tunebook; "
                f"use torch.optim.{type(self).__name__} for differentiable optimizer steps"
            )
        if max_grad_norm is not None:
            if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float)):
                raise TypeError(f"{max_grad_norm=} must be a float or None")
            if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
                raise ValueError(f"{max_grad_norm=} must be a finite number > 0 (or None: off)")
            max_grad_norm = float(max_grad_norm)
        if isinstance(norm_log_capacity, bool) or not isinstance(norm_log_capacity, int):
            raise TypeError(f"{norm_log_capacity=} must be an int")
        if norm_log_capacity < 1:
            raise ValueError(f"{norm_log_capacity=} must be >= 1")
        if backend is not None and backend not in _BACKENDS:
            raise ValueError(f"{backend=} must be one of {_BACKENDS} or None (automatic)")
        self._device: torch.device | None = None
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm
        self.log_grad_norm = bool(log_grad_norm)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.norm_log_capacity = norm_log_capacity
        self._backend = self._resolve_backend(backend)
        self._control: Tensor | None = None
        self._counters: Tensor | None = None
        self._norm_log: Tensor | None = None

    # ----------------------------------------------------------------- configuration
    @property
    def backend(self) -> str:
        """Which implementation runs the step: "cpu", "cuda" (compiled) or "reference"."""
        return self._backend

    def _resolve_backend(self, requested: str | None) -> str:
        device = self._device or torch.device("cpu")
        if requested is None and os.environ.get("TUNEBOOK_BACKEND") == "reference":
            requested = "reference"
        if requested == "reference":
            return "reference"
        available = library_backends()
        if requested is not None and requested != device.type:
            raise ValueError(
                f"backend={requested!r} does not match the params' device {device}; "
                f"use backend={device.type!r}, 'reference' or None"
            )
        if device.type in available:
            return device.type
        if requested is not None:
            raise RuntimeError(
                f"backend={requested!r} was requested but the compiled {requested} kernels are "
                "not available (see the build warning); use backend='reference' or None"
            )
        if device.type != "cpu" and device.type not in _warned_reference_on:
            # The CPU case already warned once when the build failed.
            _warned_reference_on.add(device.type)
            warnings.warn(
                f"tunebook: no compiled kernels for {device.type} tensors; using the "
                "pure-torch reference path (slower, one host sync per step)",
                RuntimeWarning,
                stacklevel=3,
            )
        return "reference"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                continue  # torch's own check raises the right error
            if p.is_complex():
                raise ValueError(
                    f"{type(self).__name__}: complex params are not supported by tunebook "
                    f"(got a {p.dtype} param); use torch.optim or view_as_real"
                )
            if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise ValueError(
                    f"{type(self).__name__}: params must be float32, bfloat16 or float16, "
                    f"got {p.dtype}"
                )
            if self._device is None:
                self._device = p.device
            elif p.device != self._device:
                raise ValueError(
                    f"{type(self).__name__}: all params must be on one device, got "
                    f"{self._device} and {p.device}; use one optimizer per device"
                )
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # ----------------------------------------------------------------- the step
    def _ensure_buffers(self, device: torch.device) -> None:
        if self._control is not None and self._control.device == device:
            return
        capacity = self.norm_log_capacity if self.log_grad_norm else 0
        self._control = torch.tensor([1.0, 0.0], dtype=torch.float32, device=device)
        self._counters = torch.zeros(3, dtype=torch.int64, device=device)
        self._norm_log = torch.full((capacity,), float("nan"), dtype=torch.float32, device=device)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's docstring applies
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ops = F.ops_for(self._backend)
        work = []
        all_grads: list[Tensor] = []
        for group in self.param_groups:
            params, grads = [], []
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients"
                    )
                if g.stride() != p.stride():
                    g = torch.empty_like(p).copy_(g)
                params.append(p)
                grads.append(g)
            if params:
                work.append((group, params, grads))
                all_grads.extend(grads)
        if not all_grads:
            return loss
        device = all_grads[0].device
        self._ensure_buffers(device)
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if grad_scale is not None:
            grad_scale = grad_scale.to(device=device, dtype=torch.float32, non_blocking=True)
        if found_inf is not None:
            found_inf = found_inf.to(device=device, dtype=torch.float32, non_blocking=True)
        needs_norm = self.max_grad_norm is not None or self.log_grad_norm or self.skip_nonfinite
        sq_norm = ops.grad_sq_norm(all_grads) if needs_norm else None
        ops.step_control_(
            sq_norm, grad_scale, found_inf, self._control, self._counters, self._norm_log,
            self.max_grad_norm, self.skip_nonfinite,
        )
        for group, params, grads in work:
            lr = group["lr"]
            if isinstance(lr, Tensor):
                lr_tensor = lr if lr.device == device else lr.to(device, non_blocking=True)
                lr_value = 0.0
            else:
                lr_tensor, lr_value = None, float(lr)
            # One call per dtype: the ops take one params dtype per call.
            dtype = params[0].dtype
            if all(p.dtype == dtype for p in params):
                self._family_step(group, params, grads, self._control, lr_tensor, lr_value, ops)
            else:
                for dt in dict.fromkeys(p.dtype for p in params):
                    idx = [i for i, p in enumerate(params) if p.dtype == dt]
                    self._family_step(
                        group, [params[i] for i in idx], [grads[i] for i in idx],
                        self._control, lr_tensor, lr_value, ops,
                    )
        return loss

    def _family_step(self, group, params, grads, control, lr_tensor, lr, ops) -> None:
        raise NotImplementedError

    def _state_float32(self, state: dict[str, Any], key: str, param: Tensor, init: float) -> Tensor:
        """A 0-dim float32 scalar state (step, mu_product) on the param's device."""
        value = state.get(key)
        if not isinstance(value, Tensor):
            value = torch.tensor(init if value is None else float(value), dtype=torch.float32)
        if value.device != param.device or value.dtype != torch.float32:
            value = value.to(device=param.device, dtype=torch.float32)
        state[key] = value
        return value

    # ----------------------------------------------------------------- the log
    def grad_norms(self) -> GradNormLog:
        """The gradient-norm log: unclipped norms in step order and the counters.

        This is the optimizer's only host synchronisation.

        Returns:
            A :class:`GradNormLog`.
        """
        if self._counters is None:
            return GradNormLog(torch.empty(0), 0, 0, 0, self.max_grad_norm)
        steps, clipped, skipped = (int(x) for x in self._counters.tolist())
        ring = self._norm_log.detach().to("cpu", copy=True)
        capacity = ring.numel()
        if capacity == 0:
            norms = torch.empty(0)
        elif steps <= capacity:
            norms = ring[:steps].clone()
        else:
            start = steps % capacity
            norms = torch.cat([ring[start:], ring[:start]])
        return GradNormLog(norms, clipped, skipped, steps, self.max_grad_norm)

    # ----------------------------------------------------------------- state_dict
    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, plus the norm log under ``"tunebook_grad_norms"``.

        torch.optim ignores the extra key, so the result loads into torch.optim as well.
        """
        state = super().state_dict()
        if self._counters is not None:
            log = self.grad_norms()
            state[_STATE_DICT_KEY] = {
                "norms": log.norms,
                "steps": log.steps,
                "clipped": log.clipped,
                "skipped": log.skipped,
            }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state_dict from tunebook or from torch.optim (same layout)."""
        saved_log = state_dict.get(_STATE_DICT_KEY)
        super().load_state_dict(state_dict)
        # torch's loader casts every floating state to the param's dtype except `step`, which
        # it leaves on the CPU: tunebook keeps its scalars in float32 on the params' device.
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                for key in self._scalar_state_keys:
                    if key in state:
                        self._state_float32(state, key, p, 0.0)
        if saved_log is not None:
            self._restore_log(saved_log)

    _scalar_state_keys: tuple[str, ...] = ("step",)

    def _restore_log(self, saved: dict[str, Any]) -> None:
        device = self._device or torch.device("cpu")
        self._control = None
        self._ensure_buffers(device)
        steps = int(saved["steps"])
        self._counters.copy_(
            torch.tensor([steps, int(saved["clipped"]), int(saved["skipped"])], dtype=torch.int64)
        )
        capacity = self._norm_log.numel()
        norms = saved["norms"].float()[-capacity:] if capacity else saved["norms"][:0]
        if norms.numel():
            positions = torch.arange(steps - norms.numel(), steps) % capacity
            self._norm_log.index_copy_(0, positions.to(device), norms.to(device))
