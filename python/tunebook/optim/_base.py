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

The lists each op takes (params with a grad, their state tensors, split by dtype) are
cached per param group between steps (:class:`_StepPlan`) and rebuilt only when something
they were read from has changed, checked each step by object identity: the group, its
params, which params have a grad, the state mapping and every state tensor. So a step costs
a few C-level comparisons per param on the host instead of dict lookups and layout checks;
new grad tensors only have their layout checked.
"""

from __future__ import annotations

import math
import operator
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
_is = operator.is_


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
        self._ops = None
        self._invalidate_plans()
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
        self._invalidate_plans()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._ops = None
        self._invalidate_plans()
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

    def _invalidate_plans(self) -> None:
        """Forgets every cached step plan (the next step rebuilds them from the state)."""
        self._plans = []
        self._state_snapshot = None

    def _state_unchanged(self) -> bool:
        """Whether ``self.state`` still maps the same params to the same per-param dicts."""
        snapshot = self._state_snapshot
        if snapshot is None:
            return False
        state, keys, values = snapshot
        current = self.state
        return (
            current is state
            and len(current) == len(keys)
            and all(map(_is, current.keys(), keys))
            and all(map(_is, current.values(), values))
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's docstring applies
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ops = self._ops
        if ops is None:
            ops = self._ops = F.ops_for(self._backend)
        plans = self._plans
        groups = self.param_groups
        if len(plans) != len(groups):
            plans = self._plans = [None] * len(groups)
        state_unchanged = self._state_unchanged()
        rebuilt = False
        work = []
        all_grads: list[Tensor] = []
        for index, group in enumerate(groups):
            params = group["params"]
            grads = [p.grad for p in params]
            with_grad = [g for g in grads if g is not None]
            if not with_grad:
                continue
            plan = plans[index]
            if plan is None or not (
                state_unchanged and plan.matches(group, params, grads, with_grad, self)
            ):
                plan = self._build_plan(group, params, grads)
                plans[index] = plan if plan.cacheable else None
                rebuilt = True
            with_grad = plan.checked_grads(with_grad, type(self).__name__)
            work.append((group, plan, with_grad))
            all_grads.extend(with_grad)
        if rebuilt:
            state = self.state
            self._state_snapshot = (state, list(state.keys()), list(state.values()))
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
        for group, plan, grads in work:
            lr = group["lr"]
            if isinstance(lr, Tensor):
                lr_tensor = lr if lr.device == device else lr.to(device, non_blocking=True)
                lr_value = 0.0
            else:
                lr_tensor, lr_value = None, float(lr)
            # One call per dtype: the ops take one params dtype per call.
            for chunk in plan.chunks:
                chunk_grads = grads if chunk.index is None else [grads[i] for i in chunk.index]
                self._family_step(
                    group, chunk.params, chunk_grads, chunk.lists, self._control, lr_tensor,
                    lr_value, ops,
                )
        return loss

    def _build_plan(self, group: dict[str, Any], params: list[Tensor], grads: list) -> _StepPlan:
        """Checks the grads, initialises missing state and collects the op's lists."""
        with_params, with_grads = [], []
        for p, g in zip(params, grads):
            if g is None:
                continue
            with_params.append(p)
            with_grads.append(g)
        strides = [p.stride() for p in with_params]
        checked = _check_grads(with_params, with_grads, strides, type(self).__name__)
        chunks = []
        cacheable = checked is with_grads
        dtype = with_params[0].dtype
        if all(p.dtype == dtype for p in with_params):
            splits = [(None, with_params)]
        else:
            splits = []
            for dt in dict.fromkeys(p.dtype for p in with_params):
                idx = [i for i, p in enumerate(with_params) if p.dtype == dt]
                splits.append((idx, [with_params[i] for i in idx]))
        for idx, chunk_params in splits:
            keys, lists, chunk_cacheable = self._collect_state(group, chunk_params)
            cacheable = cacheable and chunk_cacheable
            dicts = [self.state[p] for p in chunk_params]
            chunks.append(_Chunk(chunk_params, idx, keys, lists, dicts))
        return _StepPlan(
            group, params, grads, with_params, with_grads, strides, self._plan_key(group), chunks,
            cacheable, checked,
        )

    def _plan_key(self, group: dict[str, Any]) -> Any:
        """The group options that change which state lists the op takes."""
        return None

    def _collect_state(
        self, group: dict[str, Any], params: list[Tensor]
    ) -> tuple[tuple[str | None, ...], list[list[Tensor]], bool]:
        """Initialises missing state of ``params`` and returns the op's state lists.

        Returns:
            ``(keys, lists, cacheable)``: ``lists[k]`` holds ``state[p][keys[k]]`` for each
            param (an empty list where the option is off, with key None); ``cacheable`` is
            False when the lists are valid for this step only.
        """
        raise NotImplementedError

    def _family_step(self, group, params, grads, lists, control, lr_tensor, lr, ops) -> None:
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
        self._invalidate_plans()
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


def _check_grads(
    params: list[Tensor], grads: list[Tensor], strides: list[tuple[int, ...]], name: str
) -> list[Tensor]:
    """``grads`` itself when every grad is dense with its param's strides, else a new list
    where each other grad is copied into the param's layout (the ops read flat storage)."""
    try:
        if [g.stride() for g in grads] == strides:
            return grads
    except RuntimeError:
        # Sparse and other non-strided layouts have no strides.
        for g in grads:
            if g.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients") from None
        raise
    return [
        g if g.stride() == s else torch.empty_like(p).copy_(g)
        for p, g, s in zip(params, grads, strides)
    ]


class _Chunk(NamedTuple):
    """One fused update call: the params of one dtype of one group and their state lists."""

    params: list[Tensor]
    index: list[int] | None  # positions in the group's grads, None: all of them
    keys: tuple[str | None, ...]  # the state key of each list (None: not a state list)
    lists: list[list[Any]]
    dicts: list[dict[str, Any]]  # the per-param state dicts the lists were read from


class _StepPlan:
    """What one param group's step passes to the ops, cached between steps.

    Rebuilding the lists costs a few microseconds of Python per param (state lookups,
    layout checks, the dtype split), as much as the fused update itself for small tensors,
    so a plan is reused while nothing it depends on has changed: the group dict, its
    ``params`` list and each entry, which params have a grad, the options that change the
    op's lists (``_plan_key``), the state mapping (checked by the optimizer) and every state
    tensor the lists hold (``state[p][key] is lists[k][i]``). Checking all of that costs a
    few C-level identity comparisons per param. New grad tensors (``zero_grad()`` sets them
    to None by default) only have their layout re-checked.
    """

    __slots__ = (
        "group", "params_list", "params", "with_params", "full", "mask", "grads", "strides",
        "key", "chunks", "cacheable",
    )

    def __init__(self, group, params_list, grads_all, with_params, with_grads, strides, key,
                 chunks, cacheable, checked):
        self.group = group
        self.params_list = params_list
        self.params = list(params_list)
        self.with_params = with_params
        self.full = len(with_grads) == len(params_list)
        self.mask = None if self.full else [g is not None for g in grads_all]
        # The last grads whose layout was checked and that needed no copy.
        self.grads = with_grads if checked is with_grads else []
        self.strides = strides
        self.key = key
        self.chunks = chunks
        self.cacheable = cacheable

    def matches(self, group, params, grads, with_grad, optimizer) -> bool:
        """Whether this plan still describes ``group`` (see the class docstring)."""
        if (
            group is not self.group
            or params is not self.params_list
            or len(params) != len(self.params)
            or len(with_grad) != len(self.with_params)
            or not all(map(_is, params, self.params))
        ):
            return False
        if not self.full and [g is not None for g in grads] != self.mask:
            return False
        if optimizer._plan_key(group) != self.key:
            return False
        try:
            for chunk in self.chunks:
                for key, values in zip(chunk.keys, chunk.lists):
                    if key is not None and not all(
                        map(_is, map(operator.itemgetter(key), chunk.dicts), values)
                    ):
                        return False
        except KeyError:
            return False
        return True

    def checked_grads(self, grads: list[Tensor], name: str) -> list[Tensor]:
        """``grads`` in the params' layouts; only grads not seen last step are checked."""
        if len(grads) == len(self.grads) and all(map(_is, grads, self.grads)):
            return grads
        checked = _check_grads(self.with_params, grads, self.strides, name)
        if checked is grads:
            self.grads = grads
        return checked
