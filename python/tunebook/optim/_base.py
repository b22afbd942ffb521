"""The machinery every tunebook optimizer shares: global-norm clipping, the gradient-norm
log, non-finite skipping, GradScaler support, backend choice and torch's state layout.

One ``step()`` runs, with no host synchronisation:

1. ``grad_sq_norm``: the sum of squares of every gradient of every param group (skipped when
   clipping, the log and non-finite skipping are all off) -- :meth:`_global_sq_norm`;
2. ``step_control_``: on the device, ``norm = sqrt(sum) / grad_scale``, the clip coefficient
   ``min(1, max_grad_norm / (norm + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``'s), the skip
   flag (``norm`` not finite, or GradScaler's ``found_inf``), the counters, and ``norm``
   written into a ring buffer;
3. one fused update per param group and dtype, which multiplies each gradient by the
   coefficient as it reads it, and changes nothing at all when the skip flag is set --
   :meth:`_update_groups`.

What each update takes (params with a grad, their state tensors, split by dtype) comes from
``_init_group``, torch's name for the per-group collection, so that torch.compile runs it
in Python (state initialisation, buffers) and traces the rest, as it does for torch.optim.
Outside torch.compile the result is cached per param group between steps
(:class:`_StepPlan`) and rebuilt only when something it was read from has changed, checked
each step by object identity: the group, its params, which params have a grad, the state
mapping and every state tensor. So an eager step costs a few C-level comparisons per param
on the host; new grad tensors only have their layout checked.

Layouts. The kernels process each tensor as its flat storage, so the tensors of one index
must share their strides. A state tensor laid out differently from its param (a checkpoint
saved contiguous, loaded into a channels_last model) is re-laid out once, in place in the
state; a grad laid out differently is copied for the step (and copied back when the step
writes it); a param that is not dense (a strided view) is stepped through a contiguous
working copy that is written back. Complex params are stepped as their real view, as
torch.optim does. None of this costs anything when every layout already agrees.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
import os
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _distributed
from . import _functional as F
from . import _reference
from ._build import library_backends
from ._common_doc import check_rule

__all__ = ["FusedOptimizer", "GradNormLog", "DEFAULT_NORM_LOG_CAPACITY"]

DEFAULT_NORM_LOG_CAPACITY = 1 << 16
_BACKENDS = ("cpu", "cuda", "reference")
_STATE_DICT_KEY = "tunebook_grad_norms"
# The global (not per-group) options, restored by __setstate__ with these defaults.
_GLOBAL_OPTIONS = {
    "max_grad_norm": None,
    "log_grad_norm": True,
    "norm_log_capacity": DEFAULT_NORM_LOG_CAPACITY,
    "skip_nonfinite": True,
    "process_group": None,
    "_requested_backend": None,
    "_counters": None,
    "_norm_log": None,
}
_SUPPORTED_DTYPES = (
    torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.complex64,
    torch.complex128,
)
_STATE_LISTS = 4  # state lists an update takes at most (Adam: m, v, max v, step)
_warned_reference_on: set[str] = set()
_is = operator.is_


class GradNormLog(NamedTuple):
    """The gradient-norm history of an optimizer (see ``FusedOptimizer.grad_norms``).

    Attributes:
        norms: 1-D float32 CPU tensor, the unclipped global L2 norm of each logged step in
            step order, the most recent ``capacity`` of them; skipped steps appear as
            inf/NaN. Empty when the log is off.
        clipped: steps whose clip coefficient was below 1.
        skipped: steps skipped (non-finite or overflowing norm, or GradScaler found inf).
        steps: steps attempted (``step()`` calls that had at least one gradient).
        max_grad_norm: the clipping threshold, None when clipping is off.
    """

    norms: Tensor
    clipped: int
    skipped: int
    steps: int
    max_grad_norm: float | None


def check_max_grad_norm(max_grad_norm: Any) -> float | None:
    """``max_grad_norm`` as a float (any real number type, numpy's included), or None."""
    if max_grad_norm is None:
        return None
    if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, numbers.Real):
        raise TypeError(f"{max_grad_norm=} must be a real number or None (off)")
    value = float(max_grad_norm)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{max_grad_norm=} must be a finite number > 0 (or None: off)")
    return value


class FusedOptimizer(Optimizer):
    """Base class: a torch.optim.Optimizer whose step is a handful of fused ops.

    Subclasses define ``_collect_state(group, params)`` (initialise missing state, return the
    state lists the update takes), ``_family_step(...)`` (call the family's update op) and
    pass torch's defaults, plus ``rule`` for the families that have one.

    Options live where torch keeps them: the per-group ones (torch's, and ``rule``) in
    ``defaults`` and ``param_groups``, so ``state_dict`` carries them; the global ones
    (``max_grad_norm``, ``log_grad_norm``, ``norm_log_capacity``, ``skip_nonfinite``,
    ``backend``, ``process_group``, by name) and the norm log on the instance, carried by
    ``__getstate__`` (deepcopy, pickle). Caches are rebuilt after ``__setstate__``.

    Distributed training (DTensor params, ``process_group``, ZeroRedundancyOptimizer) adds
    the local-shard calls and one all-reduce to the step: see
    :mod:`tunebook.optim._distributed`.
    """

    # GradScaler then hands over `grad_scale`/`found_inf` instead of calling step() only
    # when no inf was found, exactly as with torch's fused optimizers: no host sync.
    _step_supports_amp_scaling = True
    # State keys that hold 0-dim float32 device scalars (torch's fused layout).
    _scalar_state_keys: tuple[str, ...] = ("step",)
    # True where a state created this very step changes the update (SGD's first momentum
    # step), so the collected lists are valid for one step only.
    _fresh_state_changes_update = False
    # torch.optim's error for a sparse gradient, or None where sparse gradients are stepped
    # (SGD: densified for the step, as dense math on the same values).
    _sparse_grad_error: str | None = "does not support sparse gradients"

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
        process_group: Any = None,
    ) -> None:
        name = type(self).__name__
        if defaults.get("differentiable"):
            if defaults.get("fused"):
                raise RuntimeError("`fused` does not support `differentiable`")
            _check_differentiable_rule(name, defaults.get("rule", "torch"))
        if defaults.get("fused") and defaults.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        max_grad_norm = check_max_grad_norm(max_grad_norm)
        if isinstance(norm_log_capacity, bool) or not isinstance(norm_log_capacity, numbers.Integral):
            raise TypeError(f"{norm_log_capacity=} must be an int")
        if norm_log_capacity < 1:
            raise ValueError(f"{norm_log_capacity=} must be >= 1")
        if backend is not None and backend not in _BACKENDS:
            raise ValueError(f"{backend=} must be one of {_BACKENDS} or None (automatic)")
        process_group = _distributed.check_process_group(process_group)
        if process_group is None:
            process_group = _distributed.zero_process_group()
        self._reset_caches()
        self._control: Tensor | None = None
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm
        self.log_grad_norm = bool(log_grad_norm)
        self.norm_log_capacity = int(norm_log_capacity)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.process_group = process_group
        self._requested_backend = backend
        self._counters: Tensor | None = None
        self._norm_log: Tensor | None = None
        if backend is not None:
            device = self._params_device()
            if device is not None and device.type != "meta":
                self._backend_for(device)  # a clear error now rather than at the first step

    # ----------------------------------------------------------------- configuration
    @property
    def backend(self) -> str:
        """Which implementation runs the step for the params' current device: "cpu",
        "cuda" (compiled kernels), "meta" (shape-only) or "reference" (pure torch)."""
        return self._backend_for(self._params_device() or torch.device("cpu"))

    @property
    def rule(self) -> str:
        """The update rule ("torch" or "playbook"): the default of new param groups.
        Setting it sets it for every param group (it lives in ``param_groups``)."""
        return self.defaults.get("rule", "torch")

    @rule.setter
    def rule(self, value: str) -> None:
        if "rule" not in self.defaults:
            raise AttributeError(f"{type(self).__name__} has a single rule (torch.optim's)")
        value = check_rule(value)
        if self.defaults.get("differentiable"):
            _check_differentiable_rule(type(self).__name__, value)
        self.defaults["rule"] = value
        for group in self.param_groups:
            group["rule"] = value
        self._invalidate_plans()

    def _params_device(self) -> torch.device | None:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return None

    def _backend_for(self, device: torch.device) -> str:
        """The backend for params on ``device``, chosen on first use (params made on the
        meta device and materialised later get the compiled kernels of their new device)."""
        backend = self._backends.get(device)
        if backend is None:
            backend = self._backends[device] = _resolve_backend(self._requested_backend, device)
        return backend

    @torch._disable_dynamo
    def add_param_group(self, param_group: dict[str, Any]) -> None:  # noqa: D102
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        # torch's own normalisation, done first so that a generator is read only once.
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif not isinstance(params, set):  # torch raises its own TypeError for a set
            param_group["params"] = list(params)
            name = type(self).__name__
            for item in param_group["params"]:
                p = item[1] if isinstance(item, tuple) and len(item) == 2 else item
                if isinstance(p, Tensor) and p.dtype not in _SUPPORTED_DTYPES:
                    raise ValueError(
                        f"{name}: params must be floating point or complex (float32, bfloat16, "
                        f"float16, float64, complex64, complex128), got a {p.dtype} param"
                    )
        if "rule" in param_group and "rule" in self.defaults:
            check_rule(param_group["rule"])
            if self.defaults.get("differentiable"):
                _check_differentiable_rule(type(self).__name__, param_group["rule"])
        super().add_param_group(param_group)
        self._invalidate_plans()

    def __getstate__(self) -> dict[str, Any]:  # noqa: D105
        state = super().__getstate__()
        for key in _GLOBAL_OPTIONS:
            state[key] = getattr(self, key)
        # A ProcessGroup cannot be pickled: its name can, and names the same group again.
        state["process_group"] = _distributed.picklable_group(self.process_group)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:  # noqa: D105
        # Called by pickle/deepcopy with __getstate__'s dict, and by load_state_dict with
        # only "state" and "param_groups".
        super().__setstate__(state)
        for key, default in _GLOBAL_OPTIONS.items():
            self.__dict__.setdefault(key, default)
        self.__dict__.setdefault("_control", None)
        self._reset_caches()
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def _reset_caches(self) -> None:
        self._backends: dict[torch.device, str] = {}
        self._torch_twin = None
        # Set by `_init_group` when it created state whose first update differs from later
        # ones (SGD's buf = g); read and cleared in traced code, see `_traced_work`.
        self._fresh_pending = {"set": False}
        self._invalidate_plans()

    def _invalidate_plans(self) -> None:
        """Forgets every cached step plan (the next step rebuilds them from the state)."""
        self._plans: list[_StepPlan | None] = []
        self._state_snapshot = None
        self._distributed: _distributed.DistributedStep | None | bool = False  # False: unbuilt

    # ----------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's docstring applies
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.defaults.get("differentiable"):
            with torch.enable_grad():
                self._differentiable_step()
            return loss
        if torch.compiler.is_compiling():
            # _init_group, which torch.compile runs in Python, builds the distributed part.
            work = self._traced_work()
            distributed = self._distributed or None
            if distributed is not None:
                raise NotImplementedError(
                    f"torch.compile of {type(self).__name__}.step() with DTensor params or "
                    "process_group is not supported; step it eagerly"
                )
        else:
            # First: a distributed set-up that cannot work raises here, on every rank
            # alike, before any state is created or any collective issued.
            distributed = self._distributed_step()
            work = self._cached_work()
        if work is not None:
            device, backend, calls = work
        elif distributed is not None and distributed.participates:
            # A rank with no gradient this step still takes part in the all-reduce (its
            # partition may be empty while others have work), so the counters agree.
            device = self._params_device() or distributed.device
            backend, calls = self._backend_for(device), []
            self._ensure_buffers(device)
        else:
            return loss
        ops = F.ops_for(backend)
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if grad_scale is not None:
            grad_scale = grad_scale.to(device=device, dtype=torch.float32, non_blocking=True)
        if found_inf is not None:
            found_inf = found_inf.to(device=device, dtype=torch.float32, non_blocking=True)
        if distributed is None:
            sq_norm = self._global_sq_norm(ops, calls)
        else:
            calls, sq_norm, found_inf = self._distributed_sq_norm(
                distributed, ops, device, calls, found_inf
            )
        # torch.distributed.checkpoint's state-creating step (zero grads, lr 0) is not a
        # training step: the norm log and the counters stay as they were.
        uncounted = not torch.compiler.is_compiling() and _distributed.in_checkpoint_state_init()
        if uncounted:
            log = self._counters.clone(), self._norm_log.clone()
        ops.step_control_(
            sq_norm, grad_scale, found_inf, self._control, self._counters, self._norm_log,
            self.max_grad_norm, self.skip_nonfinite,
        )
        if uncounted:
            self._counters.copy_(log[0])
            self._norm_log.copy_(log[1])
        self._update_groups(ops, device, calls, grad_scale)
        return loss

    def _norm_needed(self) -> bool:
        return self.max_grad_norm is not None or self.log_grad_norm or self.skip_nonfinite

    def _global_sq_norm(self, ops: Any, calls: list) -> Tensor | None:
        """The sum of squares of every gradient the step uses, over all groups (None when
        nothing needs it): the one global reduction of the step."""
        if not self._norm_needed():
            return None
        if len(calls) == 1 and len(calls[0][1]) == 1:
            return ops.grad_sq_norm(calls[0][1][0].grads)
        grads = [g for _, group_calls in calls for call in group_calls for g in call.grads]
        return ops.grad_sq_norm(grads)

    # ----------------------------------------------------------------- differentiable=True
    # torch.optim subclasses name the torch.optim class they are a drop-in for.
    _torch_class: type[Optimizer] | None = None

    def _differentiable_step(self) -> None:
        """``differentiable=True``: the step is a function of the params, grads, state and
        hyperparameter tensors that autograd can differentiate, as torch.optim's is.

        The update is torch.optim's own single-tensor implementation (what torch runs for
        ``differentiable=True``), reached through a twin optimizer that shares this one's
        ``param_groups`` and ``state``: one definition of torch's differentiable math, kept
        by torch. tunebook's chain before it is written in differentiable torch ops: the
        global norm, the clip coefficient ``min(1, max_grad_norm / (norm + 1e-6))`` that
        scales each grad (the grads themselves are left as they were), GradScaler's scale.
        The skip decision (non-finite norm, GradScaler's ``found_inf``) is read on the host
        (one synchronisation per step), and the counters and norm log are kept as by the
        fused step. ``rule="playbook"`` has no torch implementation: refused at construction.
        """
        if self._distributed_step() is not None:
            raise NotImplementedError(
                f"{type(self).__name__}(differentiable=True) with DTensor params or a "
                "process_group is not supported (the global norm would be a local one); "
                "use differentiable=False, or torch.optim for a differentiable local step"
            )
        groups = self.param_groups
        with_grad = [p for group in groups for p in group["params"] if p.grad is not None]
        if not with_grad:
            return
        device = with_grad[0].device
        for p in with_grad:
            if p.device != device:
                raise ValueError(_devices_error(type(self).__name__, device, p.device))
        self._ensure_buffers(device)
        ops = F.ops_for(self._backend_for(device))
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if grad_scale is not None:
            grad_scale = grad_scale.to(device=device, dtype=torch.float32).reshape(())
        if found_inf is not None:
            found_inf = found_inf.to(device=device, dtype=torch.float32)
        grads = [p.grad for p in with_grad]
        norm = None
        if self._norm_needed():
            norm = _differentiable_norm(grads)
        with torch.no_grad():
            sq_norm = None if norm is None else norm.detach().float().square()
            ops.step_control_(
                sq_norm, grad_scale, found_inf, self._control, self._counters, self._norm_log,
                self.max_grad_norm, self.skip_nonfinite,
            )
        if bool(self._control[1]):
            return  # skipped: nothing changes, as in the fused step
        factor = None
        if grad_scale is not None:
            factor = 1 / grad_scale.to(norm.dtype if norm is not None else torch.float32)
        if self.max_grad_norm is not None:
            unscaled = norm if factor is None else norm * factor
            coef = torch.clamp(self.max_grad_norm / (unscaled + _reference.CLIP_EPS), max=1.0)
            factor = coef if factor is None else coef * factor
        twin = self._twin()
        if factor is None:
            twin_step(twin)
        else:
            try:
                for p, g in zip(with_grad, grads):
                    p.grad = g * factor.to(_math_dtype(g))
                twin_step(twin)
            finally:
                for p, g in zip(with_grad, grads):
                    p.grad = g
        if grad_scale is not None:
            with torch.no_grad():  # the fused step's contract: grads are left unscaled
                for g in grads:
                    g.copy_(g / grad_scale.to(_math_dtype(g)))

    def _twin(self) -> Optimizer:
        """The torch.optim optimizer whose step runs ``differentiable=True``: made once from
        this one's defaults, then given its ``param_groups``, ``state`` and ``defaults``."""
        twin = self._torch_twin
        cls = self._torch_class
        if cls is None:
            raise NotImplementedError(
                f"{type(self).__name__} names no torch.optim class for differentiable=True"
            )
        if twin is None:
            accepted = inspect.signature(cls.__init__).parameters
            kwargs = {k: v for k, v in self.defaults.items() if k in accepted}
            twin = cls([torch.zeros(1, requires_grad=True)], **kwargs)
            self._torch_twin = twin
        twin.defaults = self.defaults
        twin.param_groups = self.param_groups
        twin.state = self.state
        return twin

    def _distributed_step(self) -> _distributed.DistributedStep | None:
        """The distributed part of the step (None in a single process or under DDP), built
        at the first step and again after the param groups change."""
        distributed = self._distributed
        if distributed is False:
            distributed = self._distributed = _distributed.build_distributed_step(self)
        return distributed

    def _distributed_sq_norm(self, distributed, ops, device, calls, found_inf):
        """:meth:`_global_sq_norm` across ranks: the calls on local shards, and the sum of
        squares and ``found_inf`` summed over the group by one all-reduce (see
        :mod:`tunebook.optim._distributed`). Returns ``(calls, sq_norm, found_inf)``."""
        calls, norm_grads = distributed.localize(calls)
        sq_norm = None
        if self._norm_needed():
            sq_norm = distributed.local_sq_norm(ops, norm_grads, device)
        sq_norm, found_inf = distributed.all_reduce(sq_norm, found_inf)
        return calls, sq_norm, found_inf

    def _update_groups(self, ops: Any, device: torch.device, calls: list,
                       grad_scale: Tensor | None) -> None:
        """The per-group updates: one fused call per group and dtype, then the write-back
        of working copies (strided params, re-laid-out grads)."""
        control = self._control
        for group, group_calls in calls:
            lr = group["lr"]
            if isinstance(lr, Tensor):
                # A CPU lr tensor is read on the host by the ops (no copy per step); one on
                # another accelerator is moved. A captured CUDA step needs it on the device.
                lr_tensor = lr if lr.device == device or lr.device.type == "cpu" else lr.to(device)
                lr_value = 0.0
            else:
                lr_tensor, lr_value = None, float(lr)
            for call in group_calls:
                self._family_step(
                    group, call.params, call.grads, call.lists, call.fresh, control, lr_tensor,
                    lr_value, grad_scale, ops,
                )
                for dst, src in call.param_copies:
                    dst.copy_(src)
                if grad_scale is not None:
                    for dst, src in call.grad_copies:
                        dst.copy_(src)

    def _cached_work(self):
        """(device, backend, [(group, [_Call])]) for this step, from the cached plans; None
        when no param has a grad."""
        plans = self._plans
        groups = self.param_groups
        if len(plans) != len(groups):
            plans = self._plans = [None] * len(groups)
        state_unchanged = self._state_unchanged()
        sparse_error = self._sparse_grad_error
        rebuilt = False
        calls = []
        device = backend = None
        for index, group in enumerate(groups):
            params = group["params"]
            plan = plans[index]
            if plan is not None and state_unchanged and plan.matches(group, params, self):
                # Every param has a grad exactly where the plan was built with one.
                grads = list(map(_grad_of, plan.with_params))
            else:
                grads = [g for g in map(_grad_of, params) if g is not None]
                if not grads:
                    plans[index] = None
                    continue
                plan = self._build_plan(group, params)
                plans[index] = plan if plan.cacheable else None
                rebuilt = True
            group_calls = [_call_tensors(c, grads, sparse_error) for c in plan.chunks]
            if device is None:
                device, backend = plan.device, plan.backend
            elif plan.device != device:
                raise ValueError(_devices_error(type(self).__name__, device, plan.device))
            calls.append((group, group_calls))
        if rebuilt:
            state = self.state
            self._state_snapshot = (state, list(state.keys()), list(state.values()))
        if device is None:
            return None
        self._ensure_buffers(device)
        return device, backend, calls

    def _traced_work(self):
        """The same as :meth:`_cached_work` under torch.compile: no caches; ``_init_group``
        runs in Python (torch.compile calls it eagerly) and what follows is traced."""
        calls = []
        device = backend = None
        sparse_error = self._sparse_grad_error
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            states: list[list[Tensor]] = [[] for _ in range(_STATE_LISTS)]
            layout = self._init_group(group, params, grads, *states)
            if layout is None:
                continue
            group_backend, keys, chunk_layouts = layout
            if device is None:
                device, backend = params[0].device, group_backend
            chunks = [
                _Chunk.from_layout(params, grads, keys, states, chunk_layout)
                for chunk_layout in chunk_layouts
            ]
            calls.append((group, [_call_tensors(c, grads, sparse_error) for c in chunks]))
        # torch.compile turns `_init_group`'s result (which params got new state) into a
        # constant and builds its guards after `_init_group` ran, so nothing would make the
        # next call recompile: a graph traced on the step that created SGD's momentum
        # buffers (buf = g) would replay that first-step update forever. Reading the flag
        # here installs a guard on its value at entry (True) and clearing it is a side effect
        # replayed after the graph, so the next call sees False, fails the guard and
        # retraces with no new state, as torch.optim's own optimizers recompile once. (A
        # dict: dynamo refuses attribute stores on the optimizer itself.)
        if self._fresh_pending["set"]:
            self._fresh_pending["set"] = False
        if device is None:
            return None
        return device, backend, calls

    def _init_group(self, group, params, grads, state0, state1, state2, state3):
        """Collects ``group``'s params with a grad, their grads and state lists (creating
        missing state) into the given lists; returns the group's layout, a constant:
        ``(backend, state keys, chunk layouts)``, or None when no param has a grad.

        torch.compile runs this method in Python, as it does torch.optim's ``_init_group``,
        so that state, buffers and backend are set up eagerly; see :class:`_Chunk` for what
        a chunk layout holds.
        """
        self._distributed_step()  # built here under torch.compile (a cached no-op otherwise)
        for p in group["params"]:
            if p.grad is not None:
                if p.grad.layout != torch.strided and self._sparse_grad_error is not None:
                    raise RuntimeError(self._sparse_grad_error)
                params.append(p)
                grads.append(p.grad)
        if not params:
            return None
        device = self._check_group_device(group, params)
        backend = self._backend_for(device)
        self._ensure_buffers(device)
        self._adopt_loaded_log(params)
        layouts = []
        all_keys = None
        for index, chunk_params in _split_by_math_dtype(params):
            keys, lists, fresh = self._collect_state(group, chunk_params)
            if all_keys is None:
                all_keys = keys
            _relayout_states(self.state, chunk_params, keys, lists)
            special = tuple(
                i for i, p in enumerate(chunk_params) if p.is_complex() or not _is_dense(p)
            )
            layouts.append((index, fresh, special))
            if fresh and self._fresh_state_changes_update:
                self._fresh_pending["set"] = True
            for target, values in zip((state0, state1, state2, state3), lists):
                target.extend(values)
        # One list per state key across chunks, chunk after chunk (as `index` orders them).
        return backend, all_keys, tuple(layouts)

    def _check_group_device(self, group: dict[str, Any], params: list[Tensor]) -> torch.device:
        device = params[0].device
        name = type(self).__name__
        for p in params:
            if p.device != device:
                raise ValueError(_devices_error(name, device, p.device))
        if group.get("fused") and device.type not in ("cpu", "cuda"):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of "
                f"supported devices: ['cpu', 'cuda'] but {device.type} was found "
                f"({name} params on {device}; materialise them, e.g. with "
                "module.to_empty(device=...), before stepping)"
            )
        return device

    def _build_plan(self, group: dict[str, Any], params: list[Tensor]) -> _StepPlan:
        with_params: list[Tensor] = []
        with_grads: list[Tensor] = []
        states: list[list[Tensor]] = [[] for _ in range(_STATE_LISTS)]
        backend, keys, chunk_layouts = self._init_group(
            group, with_params, with_grads, *states
        )
        chunks = [
            _Chunk.from_layout(with_params, with_grads, keys, states, layout, self.state)
            for layout in chunk_layouts
        ]
        cacheable = not (
            self._fresh_state_changes_update and any(chunk.fresh for chunk in chunks)
        )
        # Recorded after _init_group, which may have re-laid out state but never a param.
        layouts = _param_layouts(params) if cacheable else None
        return _StepPlan(
            group, params, with_params, self._plan_key(group), chunks, cacheable,
            with_params[0].device, backend, layouts,
        )

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

    def _plan_key(self, group: dict[str, Any]) -> Any:
        """The group options that change which state lists the op takes."""
        return None

    def _collect_state(
        self, group: dict[str, Any], params: list[Tensor]
    ) -> tuple[tuple[str | None, ...], list[list[Tensor]], tuple[int, ...]]:
        """Initialises missing state of ``params`` (one math dtype) and returns the op's
        state lists.

        Returns:
            ``(keys, lists, fresh)``: ``lists[k]`` holds ``state[p][keys[k]]`` for each
            param (an empty list where the option is off, with key None); ``fresh``: the
            positions whose state was created now. Never touches ``self.state[p]`` when the
            family keeps no state (torch leaves no empty entries).
        """
        raise NotImplementedError

    def _family_step(self, group, params, grads, lists, fresh, control, lr_tensor, lr,
                     grad_scale, ops) -> None:
        raise NotImplementedError

    def _ensure_buffers(self, device: torch.device) -> None:
        """The step-control scratch tensor, the counters and the norm log on ``device``.

        Made without a host-to-device copy (a copy from pageable memory synchronises and
        cannot be captured in a CUDA graph): zeros and fills only. ``control`` needs no
        initial value: step_control_ writes it before any update reads it.
        """
        if self._control is None or self._control.device != device:
            self._control = torch.zeros(2, dtype=torch.float32, device=device)
        if self._counters is None:
            capacity = self.norm_log_capacity if self.log_grad_norm else 0
            self._counters = torch.zeros(3, dtype=torch.int64, device=device)
            self._norm_log = torch.full(
                (capacity,), float("nan"), dtype=torch.float32, device=device
            )
        elif self._counters.device != device:
            if self._counters.is_meta:  # params made on meta, now materialised: start here
                self._counters = None
                self._ensure_buffers(device)
            else:  # the params moved (e.g. a checkpoint loaded before model.to(device))
                self._counters = self._counters.to(device)
                self._norm_log = self._norm_log.to(device)

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
        norms = _unroll_ring(self._norm_log.detach().to("cpu", copy=True), steps)
        return GradNormLog(norms, clipped, skipped, steps, self.max_grad_norm)

    # ----------------------------------------------------------------- state_dict
    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, plus the norm log under ``"tunebook_grad_norms"``.

        torch.optim ignores the extra key, so the result loads into torch.optim as well.

        A distributed optimizer (DTensor params or ``process_group``) keeps the log in
        the state of its first param instead, as ``{"norm_log": ring buffer, "counters":
        [steps, clipped, skipped]}`` (tensors of fixed shapes, copied on the device):
        ``torch.distributed.checkpoint`` carries only ``"state"`` and ``"param_groups"``, and
        loads into tensors of the shapes the loading optimizer's own state_dict has. The log
        is the same on every rank, so DCP saves it once and every rank loads it back.
        """
        state = super().state_dict()
        if self._counters is None:
            return state
        if _distributed.is_distributed(self):
            if self.param_groups and self.param_groups[0]["params"]:
                # torch's entries are the live per-param dicts: add to a copy.
                entry = dict(state["state"].get(0, {}))
                entry[_STATE_DICT_KEY] = {
                    "norm_log": self._norm_log.clone(), "counters": self._counters.clone(),
                }
                state["state"][0] = entry
            return state
        log = self.grad_norms()
        state[_STATE_DICT_KEY] = {
            "norms": log.norms,
            "steps": log.steps,
            "clipped": log.clipped,
            "skipped": log.skipped,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state_dict from tunebook or from torch.optim (same layout).

        For DTensor params, per-element state that arrives as plain full-size tensors (a
        torch.optim or single-process state_dict, loaded the same on every rank) is sharded
        like its param; a sharded checkpoint loads through
        ``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict``.
        """
        saved_log = state_dict.get(_STATE_DICT_KEY)
        states = state_dict.get("state", {})
        hosts = [k for k, v in states.items() if isinstance(v, dict) and _STATE_DICT_KEY in v]
        if hosts:  # a distributed optimizer's log: take it out, leave the caller's dict alone
            states = dict(states)
            for k in hosts:
                states[k] = dict(states[k])
                saved_log = states[k].pop(_STATE_DICT_KEY)
                if not states[k]:
                    del states[k]
            state_dict = {**state_dict, "state": states}
        super().load_state_dict(state_dict)
        self._invalidate_plans()
        _distributed.shard_loaded_state(self)
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

    def _adopt_loaded_log(self, params: list[Tensor]) -> None:
        """Takes a distributed optimizer's norm log out of a param's state where a loader
        other than :meth:`load_state_dict` put it with the rest of that param's state
        (ZeroRedundancyOptimizer's ``load_state_dict`` fills its local optimizer's ``state``
        directly), and restores it."""
        state = self.state
        for p in params:
            entry = state.get(p)
            if entry and _STATE_DICT_KEY in entry:
                self._restore_log(entry.pop(_STATE_DICT_KEY))

    def _restore_log(self, saved: dict[str, Any]) -> None:
        if "counters" in saved:  # a distributed optimizer's: the ring buffer as it was
            steps, clipped, skipped = (int(x) for x in saved["counters"].tolist())
            saved = {
                "norms": _unroll_ring(saved["norm_log"].detach().to("cpu"), steps),
                "steps": steps, "clipped": clipped, "skipped": skipped,
            }
        device = self._params_device() or torch.device("cpu")
        self._counters = None
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


def _unroll_ring(ring: Tensor, steps: int) -> Tensor:
    """The norms of a ring buffer written at ``step % capacity``, oldest first."""
    capacity = ring.numel()
    if capacity == 0:
        return torch.empty(0)
    if steps <= capacity:
        return ring[:steps].clone()
    start = steps % capacity
    return torch.cat([ring[start:], ring[:start]])


def _resolve_backend(requested: str | None, device: torch.device) -> str:
    if requested is None and os.environ.get("TUNEBOOK_BACKEND") == "reference":
        requested = "reference"
    if requested == "reference":
        return "reference"
    available = library_backends()
    if device.type == "meta":
        # Shape-only params: the compiled ops' fake kernels do nothing, as torch.optim's
        # ops on meta tensors do. They get their device's kernels once materialised.
        return "meta" if available else "reference"
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
            stacklevel=4,
        )
    return "reference"


def _devices_error(name: str, first: torch.device, other: torch.device) -> str:
    return (
        f"{name}: all params with a gradient must be on one device, got {first} and {other}; "
        "use one optimizer per device"
    )


def _math_dtype(p: Tensor) -> torch.dtype:
    """The dtype a param is stepped in: its own, or its real view's for complex params."""
    return p.dtype.to_real() if p.is_complex() else p.dtype


def _split_by_math_dtype(params: list[Tensor]) -> list[tuple[tuple[int, ...] | None, list[Tensor]]]:
    """``[(positions or None for all, params)]``, one entry per math dtype (the ops take one
    params dtype per call)."""
    first = _math_dtype(params[0])
    if all(_math_dtype(p) == first for p in params):
        return [(None, params)]
    splits = []
    for dtype in dict.fromkeys(_math_dtype(p) for p in params):
        index = tuple(i for i, p in enumerate(params) if _math_dtype(p) == dtype)
        splits.append((index, [params[i] for i in index]))
    return splits


def _is_dense(t: Tensor) -> bool:
    """Whether ``t`` is non-overlapping and dense (contiguous in some dimension order)."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(
        ((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=operator.itemgetter(1)
    ):
        if stride != expected:
            return False
        expected *= size
    return True


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides = []
    expected = 1
    for size in reversed(shape):
        strides.append(expected)
        expected *= max(size, 1)
    return tuple(reversed(strides))


def _target_strides(p: Tensor) -> tuple[int, ...]:
    """The layout a param is stepped in: its own if dense, else contiguous (working copy)."""
    return p.stride() if _is_dense(p) else _contiguous_strides(p.shape)


def _relayout_states(state: Any, params: list[Tensor], keys, lists) -> None:
    """Re-lays out, once and in place in ``state``, every per-element state tensor whose
    strides differ from its param's stepping layout (e.g. a contiguous checkpoint loaded into
    a channels_last model)."""
    for k, key in enumerate(keys):
        if key is None:
            continue
        values = lists[k]
        for i, (p, t) in enumerate(zip(params, values)):
            if t.dim() == 0 or t.shape != p.shape:
                continue  # scalar state (step, mu_product)
            strides = _target_strides(p)
            if t.stride() != strides:
                fixed = torch.empty_strided(p.shape, strides, dtype=t.dtype, device=t.device)
                fixed.copy_(t)
                state[p][key] = values[i] = fixed


class _Call(NamedTuple):
    """The tensors of one update op call, ready for the op, and what to write back after."""

    params: list[Tensor]
    grads: list[Tensor]
    lists: list[list[Tensor]]
    fresh: tuple[int, ...]
    param_copies: list[tuple[Tensor, Tensor]]  # (param, its working copy)
    grad_copies: list[tuple[Tensor, Tensor]]  # (grad, its re-laid-out copy)


class _Chunk:
    """One update op call's static part: the params of one math dtype of one group and
    their state lists.

    A chunk layout (what ``_init_group`` returns per chunk, a constant) is
    ``(index, fresh, special)``: the positions of these params among the group's params with
    a grad (None: all of them), the positions whose state was created this step, and the
    positions that need per-step work before the op sees them (complex params: their real
    view; params that are not dense: a contiguous working copy). ``copies``: the positions
    whose grads are not in their param's stepping layout (sparse, or other strides), read
    from the grads the chunk was made with; a cached chunk is used only while every grad
    keeps the layout it had then (:class:`_StepPlan`).
    """

    __slots__ = ("params", "index", "keys", "lists", "dicts", "fresh", "special", "strides",
                 "copies")

    def __init__(self, params, grads, index, keys, lists, dicts, fresh, special):
        self.params = params
        self.index = index
        self.keys = keys
        self.lists = lists
        self.dicts = dicts  # the per-param state dicts the lists were read from (cache check)
        self.fresh = fresh
        self.special = special
        # The strides each grad must have to be stepped in place (else it is copied).
        self.strides = [_target_strides(p) for p in params]
        self.copies = tuple(
            i for i, (g, strides) in enumerate(zip(grads, self.strides))
            if g.layout != torch.strided or g.stride() != strides
        )

    @classmethod
    def from_layout(cls, params, grads, keys, states, layout, state=None) -> _Chunk:
        index, fresh, special = layout
        if index is None:
            chunk_params, chunk_grads = params, grads
            lists = [states[k] if key else [] for k, key in enumerate(keys)]
        else:
            chunk_params = [params[i] for i in index]
            chunk_grads = [grads[i] for i in index]
            # The state lists hold the chunks one after the other in `index` order.
            offset = _chunk_offset(params, index)
            lists = [
                states[k][offset:offset + len(index)] if key else [] for k, key in enumerate(keys)
            ]
        dicts = (
            [state[p] for p in chunk_params]
            if state is not None and any(key is not None for key in keys) else []
        )
        return cls(chunk_params, chunk_grads, index, keys, lists, dicts, fresh, special)


def _chunk_offset(params: list[Tensor], index: tuple[int, ...]) -> int:
    """Where a chunk's entries start in the concatenated state lists: the number of params
    of the chunks before it (chunks follow the first appearance of their math dtype)."""
    dtype = _math_dtype(params[index[0]])
    order = list(dict.fromkeys(_math_dtype(p) for p in params))
    before = set(order[:order.index(dtype)])
    return sum(1 for p in params if _math_dtype(p) in before)


def _call_tensors(chunk: _Chunk, group_grads: list[Tensor], sparse_error: str | None) -> _Call:
    """The op's tensors for this step: grads in their params' layouts (copies where not),
    complex params as real views, non-dense params as contiguous working copies."""
    grads = group_grads if chunk.index is None else [group_grads[i] for i in chunk.index]
    grad_copies: list[tuple[Tensor, Tensor]] = []
    if chunk.copies:
        grads = list(grads)
        for i in chunk.copies:
            g, strides = grads[i], chunk.strides[i]
            if g.layout != torch.strided:
                if sparse_error is not None:
                    raise RuntimeError(sparse_error)
                # SGD: the dense math on the same values (torch's sparse add sums duplicates
                # as to_dense does). A sparse grad is not written back unscaled.
                dense = g.to_dense()
                grads[i] = dense if dense.stride() == strides else _copy_to(dense, strides)
            else:
                grads[i] = _copy_to(g, strides)
                grad_copies.append((g, grads[i]))
    if not chunk.special:
        return _Call(chunk.params, grads, chunk.lists, chunk.fresh, [], grad_copies)
    params = list(chunk.params)
    grads = list(grads)
    lists = [list(values) for values in chunk.lists]
    param_copies = []
    for i in chunk.special:
        p = params[i]
        if not _is_dense(p):
            work = p.contiguous()
            param_copies.append((p, work))
            p = work
        if p.is_complex():
            p = torch.view_as_real(p)
            grads[i] = torch.view_as_real(grads[i])
            for values in lists:
                if values and values[i].is_complex():
                    values[i] = torch.view_as_real(values[i])
        params[i] = p
    return _Call(params, grads, lists, chunk.fresh, param_copies, grad_copies)


def _copy_to(t: Tensor, strides: tuple[int, ...]) -> Tensor:
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def _check_differentiable_rule(name: str, rule: Any) -> None:
    if rule != "torch":
        raise ValueError(
            f"{name}(differentiable=True) runs torch.optim's update, which has no "
            f"rule={rule!r}; use rule='torch' (the default) or differentiable=False"
        )


def twin_step(twin: Optimizer) -> None:
    """``twin.step()`` without the hooks around it (this optimizer's step ran them, global
    optimizer hooks included: they must fire once per step)."""
    step = type(twin).step
    getattr(step, "__wrapped__", step)(twin)


def _differentiable_norm(grads: list[Tensor]) -> Tensor:
    """The global L2 norm of ``grads``, in float64 when any grad is float64 (gradcheck's
    precision), else float32; differentiable."""
    wide = any(g.dtype in (torch.float64, torch.complex128) for g in grads)
    dtype = torch.float64 if wide else torch.float32
    norms = [
        torch.linalg.vector_norm(g.coalesce().values() if g.is_sparse else g).to(dtype)
        for g in grads
    ]
    return torch.linalg.vector_norm(torch.stack(norms))


class _PythonLayouts:
    """:class:`tunebook::ParamLayouts` (csrc/param_layouts.h) in Python, for when the
    compiled library is not available (the reference backend without a compiler): the
    same check, ~4 us per param."""

    __slots__ = ("params", "recorded")

    def __init__(self, params: list[Tensor]) -> None:
        self.params = list(params)
        self.recorded = [_layout_of(p) for p in self.params]

    def unchanged(self) -> bool:
        return all(map(operator.eq, map(_layout_of, self.params), self.recorded))


def _layout_of(p: Tensor) -> tuple:
    g = p.grad
    grad = None if g is None else (
        g.layout, g.dtype, g.device, g.shape, g.stride() if g.layout == torch.strided else None
    )
    return p.dtype, p.device, p.shape, p.stride(), grad


def _param_layouts(params: list[Tensor]) -> Any:
    """The layout record of a group's params and grads (see :class:`_StepPlan`)."""
    if _compiled_layouts():
        return torch.classes.tunebook.ParamLayouts(params)
    return _PythonLayouts(params)


def _compiled_layouts() -> bool:
    """Whether the compiled library (and with it ``tunebook::ParamLayouts``) is loaded;
    never builds it (the reference backend may run without a compiler)."""
    global _HAS_COMPILED_LAYOUTS
    if not _HAS_COMPILED_LAYOUTS:
        try:
            torch.classes.tunebook.ParamLayouts  # noqa: B018 - raises until loaded
        except (RuntimeError, AttributeError):
            return False
        _HAS_COMPILED_LAYOUTS = True
    return True


_HAS_COMPILED_LAYOUTS = False
_grad_of = operator.attrgetter("grad")


class _StepPlan:
    """What one param group's step passes to the ops, cached between eager steps.

    Rebuilding the lists costs a few microseconds of Python per param (state lookups,
    layout checks, the dtype split), as much as the fused update itself for small tensors,
    so a plan is reused while nothing it depends on has changed: the group dict, its
    ``params`` list and each entry, the options that change the op's lists (``_plan_key``),
    the state mapping (checked by the optimizer) and every state tensor the lists hold
    (``state[p][key] is lists[k][i]``), all checked by identity in C-level loops; and the
    params' and grads' metadata, checked in one C++ call (``layouts``,
    csrc/param_layouts.h): each param is the same tensor with the same dtype, device, sizes
    and strides (``.data`` swaps and ``swap_tensors`` change them behind the same object),
    and has a grad exactly where it had one, with the same layout, dtype, device, sizes and
    strides. New grad tensors each step (``zero_grad()`` sets them to None by default) keep
    the plan as long as they come in the same layouts.
    """

    __slots__ = (
        "group", "params_list", "params", "with_params", "key", "chunks", "cacheable",
        "device", "backend", "layouts",
    )

    def __init__(self, group, params_list, with_params, key, chunks, cacheable, device,
                 backend, layouts):
        self.group = group
        self.params_list = params_list
        self.params = list(params_list)
        self.with_params = with_params
        self.key = key
        self.chunks = chunks
        self.cacheable = cacheable
        self.device = device
        self.backend = backend
        self.layouts = layouts

    def matches(self, group, params, optimizer) -> bool:
        """Whether this plan still describes ``group`` (see the class docstring)."""
        if (
            group is not self.group
            or params is not self.params_list
            or len(params) != len(self.params)
            or not all(map(_is, params, self.params))
        ):
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
        return self.layouts.unchanged()
