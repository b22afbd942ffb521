"""The fused optimizers in distributed training: DTensor params (FSDP2's ``fully_shard``,
tensor parallelism, 2-D meshes) and params partitioned across ranks (ZeRO), with one global
gradient norm.

A distributed step is the single-process step (see :mod:`tunebook.optim._base`) with two
additions:

1. :meth:`DistributedStep.localize`: the update ops get each DTensor's local shard
   (``_local_tensor``: params, grads, state); gradients that DTensor left ``Partial``
   (sequence-parallel norms) are reduced first, in one all-reduce per mesh dimension and
   dtype for all of them;
2. :meth:`DistributedStep.all_reduce`: each rank's sum of squares of the shards it owns, and
   GradScaler's ``found_inf``, are summed over the process group by one ``all_reduce`` of
   two floats, on the device, with no host read. ``step_control_`` then derives the clip
   coefficient, the skip flag, the counters and the norm log from the same bits on every
   rank, so every rank takes the same decision: a NaN/inf in one rank's shard skips the step
   on all of them.

What one rank adds to the sum. A shard that the placements say is held by several ranks
(``Replicate()`` on a mesh dimension, or a param on a submesh of the params' largest mesh,
as FSDP2 x TP places the params that are not tensor-parallel on the data-parallel submesh)
is counted on one of them only, the one at coordinate 0 of the replicated dimensions (and
in the submesh that holds the largest mesh's first rank). The other copies still take part
with ``0 * sum``: nothing when finite, NaN when not, so a copy that went bad on one rank
alone skips the step everywhere. Plain tensors in an optimizer with ``process_group``
are each rank's own partition (ZeRO) and are all counted.

Why explicit local shards and one all-reduce, rather than sharding strategies registered
for the custom ops (``torch.distributed.tensor.experimental.register_sharding``, which would
propagate a ``Partial`` sum of squares):

- One collective for the whole step. DTensor runs an op on arguments of one mesh, so a
  strategy-based ``grad_sq_norm`` would need one call, and one lazy reduction, per mesh
  (FSDP2 x TP has two), plus another for GradScaler's ``found_inf``. Here everything rides
  in one ``all_reduce``.
- Replicas counted once, exactly. A ``Partial`` sum over a ``Replicate()`` dimension counts
  the same value once per rank; undoing that is a division by the replication factor
  (inexact in floating point, and it hides a replica that differs). Which rank owns a copy
  is not a placement DTensor can express; here it is a per-param flag computed once.
- No host work per op and no host sync. DTensor dispatch and sharding propagation cost
  host time per op call; the five update ops would need strategies too (lists of params,
  grads and state with scalars). The local ops are the single-process ops, unchanged, and
  the step stays graph-capturable (``all_reduce`` on the current stream, nothing read back).
- Errors before any collective. The checks (one mesh, the group's ranks) use only what
  every rank sees alike, so every rank raises the same error instead of some blocking in a
  collective that others never reach.
"""

from __future__ import annotations

import operator
import sys
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DistributedStep",
    "build_distributed_step",
    "check_process_group",
    "in_checkpoint_state_init",
    "is_distributed",
    "picklable_group",
    "shard_loaded_state",
    "zero_process_group",
]

_local = operator.attrgetter("_local_tensor")


def dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor`` if that module is loaded, else None.

    No DTensor can exist before the module is imported, and importing it costs most of a
    second, so tunebook never imports it itself.
    """
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def _non_member() -> Any:
    import torch.distributed as dist

    return dist.GroupMember.NON_GROUP_MEMBER


def check_process_group(group: Any) -> Any:
    """The constructor's check of ``process_group``: a ProcessGroup, a group name, the
    non-member sentinel ``new_group`` returns on ranks outside the group, or None."""
    if group is None or isinstance(group, str):
        return group
    if torch.distributed.is_available():
        import torch.distributed as dist

        if isinstance(group, dist.ProcessGroup) or (
            isinstance(group, int) and not isinstance(group, bool) and group == _non_member()
        ):
            return group
    raise TypeError(
        f"process_group must be a torch.distributed ProcessGroup, its group_name (str) "
        f"or None, got {type(group).__name__}"
    )


def picklable_group(group: Any) -> Any:
    """``group`` as pickle and deepcopy can carry it: a ProcessGroup becomes its name."""
    if group is None or isinstance(group, (str, int)):
        return group
    return group.group_name


def _resolve_group(value: Any, name: str) -> Any:
    """The ProcessGroup for ``process_group``; a clear error on a rank outside it."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError(
            f"{name}: process_group is set but torch.distributed is not initialized; "
            "call torch.distributed.init_process_group first (or drop process_group)"
        )
    if isinstance(value, str):
        from torch.distributed.distributed_c10d import _resolve_process_group

        try:
            value = _resolve_process_group(value)
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(
                f"{name}: process_group={value!r} names no process group of this "
                f"process ({error})"
            ) from None
    if isinstance(value, int) or dist.get_rank(value) < 0:
        raise ValueError(
            f"{name}: this rank ({dist.get_rank()}) is not a member of process_group; "
            "every rank that steps the optimizer must be in the group its norm is summed over"
        )
    return value


def zero_process_group() -> Any:
    """The ``process_group`` of the ``ZeroRedundancyOptimizer`` that is constructing this
    optimizer as its local one, else None.

    ZeroRedundancyOptimizer takes ``process_group`` for itself and passes only the other
    keyword arguments to ``optimizer_class``, so a local optimizer never sees the group its
    params were partitioned over. Without it each rank would clip by the norm of its own
    partition, wrongly and silently; so the group is read from the constructing frame
    (ZeRO sets it, WORLD by default, before it builds the local optimizer).
    """
    module = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    if module is None:
        return None
    code = module.ZeroRedundancyOptimizer._init_local_optimizer.__code__
    frame = sys._getframe(1)
    for _ in range(12):  # the subclass constructors sit in between
        if frame is None:
            return None
        if frame.f_code is code:
            return getattr(frame.f_locals.get("self"), "process_group", None)
        frame = frame.f_back
    return None


def in_checkpoint_state_init() -> bool:
    """Whether this ``step()`` is the one ``torch.distributed.checkpoint``'s
    ``get/set_optimizer_state_dict`` make to create the state of an optimizer whose state
    is empty (``_init_optim_state``: zero gradients, lr 0).

    That step creates state tensors to load into; it is not a training step, so it must not
    count in the norm log. A stateless optimizer (SGD without momentum) gets one on every
    call, at each checkpoint.
    """
    module = sys.modules.get("torch.distributed.checkpoint.state_dict")
    init = getattr(module, "_init_optim_state", None)
    if init is None:
        return False
    frame = sys._getframe(2)
    for _ in range(6):  # step() <- no_grad <- torch's hook wrapper <- _init_optim_state
        if frame is None:
            return False
        if frame.f_code is init.__code__:
            return True
        frame = frame.f_back
    return False


def is_distributed(optimizer: Any) -> bool:
    """Whether ``optimizer`` steps DTensor params or sums its norm over a process group."""
    if optimizer.process_group is not None:
        return True
    dtensor = dtensor_type()
    return dtensor is not None and any(
        isinstance(p, dtensor) for group in optimizer.param_groups for p in group["params"]
    )


class _NormGrads(NamedTuple):
    """The local grads of one step, split by whether this rank counts them in the norm."""

    counted: list[Tensor]
    copies: list[Tensor]  # held by other ranks too, counted there: checked for inf/NaN only


class DistributedStep:
    """What a distributed step adds to the single-process one, for one optimizer; built
    once (:func:`build_distributed_step`) and rebuilt when the param groups change.

    Attributes:
        group: the process group the sum of squares is all-reduced over.
        copies: ``id(param) -> param`` for the DTensor params whose local shard this rank
            does not count (another rank holds the same values and counts them).
        participates: every ``step()`` takes part in the all-reduce, even on a rank that
            has no gradient this step (True with ``process_group``: the ranks'
            partitions differ, so one rank may have nothing to step while others do).
    """

    __slots__ = ("group", "copies", "participates", "device")

    def __init__(self, group: Any, copies: dict[int, Tensor], participates: bool,
                 device: torch.device) -> None:
        self.group = group
        self.copies = copies
        self.participates = participates
        self.device = device  # where the all-reduce runs when this rank has no params

    # ------------------------------------------------------------------ per step
    def localize(self, calls: list) -> tuple[list, _NormGrads]:
        """The step's update calls on local tensors, and the grads for the norm.

        ``calls`` is ``[(group, [_Call])]`` as :meth:`FusedOptimizer._cached_work` returns
        it; DTensors are replaced by their local shards, plain tensors (ZeRO partitions)
        are kept. Grads whose placements differ from their param's (``Partial``) are
        reduced first and stored back in ``p.grad``.
        """
        dtensor = dtensor_type()
        mismatched = [
            (p, g)
            for _, group_calls in calls
            for call in group_calls
            for p, g in zip(call.params, call.grads)
            if isinstance(p, dtensor) and g._spec.placements != p._spec.placements
        ]
        reduced = _reduce_mismatched_grads(mismatched, dtensor) if mismatched else None
        counted: list[Tensor] = []
        copies: list[Tensor] = []
        local_calls = []
        for group, group_calls in calls:
            local_group_calls = []
            for call in group_calls:
                local_group_calls.append(
                    self._local_call(call, dtensor, reduced, counted, copies)
                )
            local_calls.append((group, local_group_calls))
        return local_calls, _NormGrads(counted, copies)

    def _local_call(self, call: Any, dtensor: type, reduced: dict | None, counted: list,
                    copies: list) -> Any:
        params = call.params
        if not any(isinstance(p, dtensor) for p in params):
            counted.extend(call.grads)  # a plain partition: this rank's own
            return call
        if call.param_copies or call.grad_copies:
            raise NotImplementedError(
                "tunebook steps DTensor params of dense layouts with grads of the same layout "
                "(FSDP2 and tensor parallelism make them so); got a strided view or a grad "
                "laid out differently"
            )
        grads = call.grads
        if reduced:
            grads = [reduced.get(id(g), g) for g in grads]
        local_params = list(map(_local, params))
        local_grads = list(map(_local, grads))
        for i, (p, g) in enumerate(zip(local_params, local_grads)):
            if g.stride() != p.stride():  # the ops take the tensors of one index in one layout
                local_grads[i] = torch.empty_like(p).copy_(g)
        if self.copies:
            for p, g in zip(params, local_grads):
                (copies if id(p) in self.copies else counted).append(g)
        else:
            counted.extend(local_grads)
        lists = [
            list(map(_local, values)) if values and isinstance(values[0], dtensor) else values
            for values in call.lists
        ]
        return call._replace(params=local_params, grads=local_grads, lists=lists)

    def local_sq_norm(self, ops: Any, grads: _NormGrads, device: torch.device) -> Tensor:
        """This rank's share of the global sum of squares (0-dim float32 on ``device``)."""
        if grads.counted:
            sq_norm = ops.grad_sq_norm(grads.counted)
        else:
            sq_norm = torch.zeros((), dtype=torch.float32, device=device)
        if grads.copies:
            # 0 when every copy is finite, NaN otherwise: the step is skipped everywhere.
            sq_norm = sq_norm + ops.grad_sq_norm(grads.copies) * 0.0
        return sq_norm

    def all_reduce(self, sq_norm: Tensor | None,
                   found_inf: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Sums ``sq_norm`` and ``found_inf`` over the group in one collective (none when
        both are None), on the device, with no host read."""
        if sq_norm is None and found_inf is None:
            return None, None
        import torch.distributed as dist

        like = sq_norm if sq_norm is not None else found_inf
        zero = torch.zeros((), dtype=torch.float32, device=like.device)
        buffer = torch.stack([
            sq_norm.reshape(()) if sq_norm is not None else zero,
            found_inf.reshape(()).float() if found_inf is not None else zero,
        ])
        dist.all_reduce(buffer, group=self.group)
        return (
            buffer[0] if sq_norm is not None else None,
            buffer[1] if found_inf is not None else None,
        )


def _reduce_mismatched_grads(mismatched: list, dtensor: type) -> dict[int, Tensor]:
    """Brings each ``(param, grad)``'s grad to the param's placements and stores it in
    ``p.grad``; returns ``{id(old grad): new grad}``. ``Partial(sum)`` grads on a dimension
    the param replicates (what tensor-parallel norms leave) are reduced in one all-reduce
    per (mesh, dimensions, dtype) for all of them; anything else through
    ``DTensor.redistribute``."""
    import torch.distributed as dist

    reduced: dict[int, Tensor] = {}
    buckets: dict[tuple, list] = {}
    for p, g in mismatched:
        target = p._spec
        if g._spec.mesh != target.mesh:
            raise ValueError(
                f"a gradient lives on {g._spec.mesh} but its param on {target.mesh}; "
                "a param's gradient must be on the param's device mesh"
            )
        dims = []
        simple = True
        for dim, (have, want) in enumerate(zip(g._spec.placements, target.placements)):
            if have == want:
                continue
            summed = have.is_partial() and getattr(have, "reduce_op", None) == "sum"
            if summed and want.is_replicate():
                dims.append(dim)
            else:
                simple = False
        if simple:
            buckets.setdefault((id(target.mesh), tuple(dims), g.dtype), []).append((p, g))
        else:
            reduced[id(g)] = p.grad = g.redistribute(target.mesh, target.placements)
    for (_, dims, _), items in buckets.items():
        mesh = items[0][0]._spec.mesh
        flat = torch.cat([g._local_tensor.reshape(-1) for _, g in items])
        for dim in dims:
            dist.all_reduce(flat, group=mesh.get_group(dim))
        offset = 0
        for p, g in items:
            local = g._local_tensor
            local_sum = torch.empty_like(p._local_tensor)
            local_sum.copy_(flat[offset:offset + local.numel()].view(local.shape))
            offset += local.numel()
            reduced[id(g)] = p.grad = dtensor.from_local(
                local_sum, mesh, p._spec.placements, run_check=False, shape=p.shape,
                stride=p.stride(),
            )
    return reduced


def _mesh_ranks(mesh: Any) -> list[int]:
    return mesh.mesh.flatten().tolist()


def _mesh_group(mesh: Any) -> Any:
    """A process group over every rank of ``mesh``."""
    import torch.distributed as dist

    if mesh.size() == dist.get_world_size():
        return dist.group.WORLD
    if mesh.ndim == 1:
        return mesh.get_group()
    return mesh._flatten().get_group()


def build_distributed_step(optimizer: Any) -> DistributedStep | None:
    """The distributed part of ``optimizer``'s step, or None for a single-process (or DDP)
    optimizer: no DTensor params and no ``process_group``.

    Raises:
        TypeError: DTensor and plain params mixed without ``process_group``.
        ValueError: params on unrelated device meshes; ``process_group`` not spanning
            exactly the params' mesh, or not holding this rank.
        NotImplementedError: complex DTensor params.
    """
    name = type(optimizer).__name__
    option = optimizer.process_group
    dtensor = dtensor_type()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    dtensors = [p for p in params if dtensor is not None and isinstance(p, dtensor)]
    if not dtensors:
        if option is None:
            return None
        group = _resolve_group(option, name)
        return DistributedStep(group, {}, True, _group_device(group))
    if option is None and len(dtensors) != len(params):
        raise TypeError(
            f"{name}: the params mix DTensors and plain tensors. Shard every module that "
            "holds params (e.g. fully_shard the root module too), or, if each rank's plain "
            "params are its own partition (ZeRO), pass process_group"
        )
    if any(p.is_complex() for p in dtensors):
        raise NotImplementedError(f"{name}: complex DTensor params are not supported")
    meshes = list(dict.fromkeys(p.device_mesh for p in dtensors))
    largest = max(meshes, key=lambda mesh: mesh.size())
    largest_ranks = set(_mesh_ranks(largest))
    root = largest._get_root_mesh()
    for mesh in meshes:
        if mesh._get_root_mesh() != root or not set(_mesh_ranks(mesh)) <= largest_ranks:
            raise ValueError(
                f"{name}: the params live on unrelated device meshes ({largest} and {mesh}); "
                "one optimizer takes the params of one mesh and its submeshes. Use one "
                "optimizer per mesh"
            )
    first_rank = _mesh_ranks(largest)[0]
    copies: dict[int, Tensor] = {}
    for p in dtensors:
        mesh = p.device_mesh
        coordinate = mesh.get_coordinate()
        if coordinate is None:
            raise ValueError(f"{name}: a param's device mesh {mesh} does not hold this rank")
        if any(placement.is_partial() for placement in p.placements):
            raise ValueError(f"{name}: a param is Partial ({p.placements}); params must be "
                             "Shard or Replicate")
        copy = any(
            placement.is_replicate() and index != 0
            for placement, index in zip(p.placements, coordinate)
        )
        if mesh is not largest and first_rank not in _mesh_ranks(mesh):
            copy = True  # a sibling submesh holds the counted copy
        if copy:
            copies[id(p)] = p
    if option is None:
        group = _mesh_group(largest)
    else:
        group = _resolve_group(option, name)
        import torch.distributed as dist

        group_ranks = set(dist.get_process_group_ranks(group))
        if group_ranks != largest_ranks:
            raise ValueError(
                f"{name}: process_group spans ranks {sorted(group_ranks)} but the params' "
                f"device mesh spans {sorted(largest_ranks)}; pass the mesh's group, or leave "
                "process_group None (DTensor params bring their mesh)"
            )
    return DistributedStep(group, copies, option is not None, _group_device(group))


def _group_device(group: Any) -> torch.device:
    """The device the group's collectives take tensors on (CPU for gloo)."""
    import torch.distributed as dist

    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_loaded_state(optimizer: Any) -> None:
    """After ``load_state_dict``: per-element state that arrived as a plain full-size
    tensor (a torch.optim or single-process state_dict) for a DTensor param becomes a
    DTensor with the param's placements, each rank keeping its own shard (no
    communication: every rank loaded the same full tensor)."""
    dtensor = dtensor_type()
    if dtensor is None:
        return
    from torch.distributed.tensor import distribute_tensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, dtensor):
                continue
            state = optimizer.state.get(p)
            if not state:
                continue
            for key, value in state.items():
                if not isinstance(value, Tensor) or isinstance(value, dtensor) or value.dim() == 0:
                    continue
                if value.shape != p.shape:
                    raise ValueError(
                        f"{type(optimizer).__name__}.load_state_dict: state {key!r} has shape "
                        f"{tuple(value.shape)} but its DTensor param has the global shape "
                        f"{tuple(p.shape)}; load a sharded checkpoint with "
                        "torch.distributed.checkpoint.state_dict.set_optimizer_state_dict"
                    )
                local = distribute_tensor(
                    value.to(p.device), p.device_mesh, p.placements, src_data_rank=None
                )._local_tensor
                # A copy in the param's local layout: the shard is a view into the full
                # tensor, which would stay alive on every rank (and alias the caller's
                # state_dict) otherwise.
                own = torch.empty_like(p._local_tensor, dtype=local.dtype).copy_(local)
                state[key] = dtensor.from_local(
                    own, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                    stride=p.stride(),
                )
