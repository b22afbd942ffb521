"""tunebook's optimizers in distributed training on 2 CPU ranks (gloo): FSDP2, tensor
parallelism, DDP (with ``no_sync``), ZeroRedundancyOptimizer and hand-written ZeRO, each
class step by step against ``clip_grad_norm_`` + ``torch.optim.X(foreach=False)`` on an
identical plain model; a NaN/inf in one rank's shard; DCP and full state_dicts both ways;
one collective per step and no host read; clear errors instead of hangs.

All checks run in one group of 2 spawned processes (see ``distributed_harness``); each
``check_*`` function below runs on every rank and is reported as its own test.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

import distributed_harness as H  # noqa: E402 - tests/ is on sys.path (rootdir conftest-less)

WORLD = 2
ROWS = 4 * WORLD
KINDS = list(H.CLASSES)


# --------------------------------------------------------------------------- models
def mlp(seed: int = 0) -> nn.Sequential:
    """Widths 8 -> 16 -> 5 -> 1: dim 0 of 5 and 1 rows is uneven over 2 ranks, and the last
    layer leaves rank 1 an empty shard."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 1)
    )


def fsdp(model: nn.Module, mesh=None) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for module in model:
        if isinstance(module, nn.Linear):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def rank_rows(t: torch.Tensor) -> torch.Tensor:
    rows = t.shape[0] // WORLD
    return t[H.rank() * rows:(H.rank() + 1) * rows]


def tp_model(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A tensor-parallel block on 3-D inputs ``(batch, sequence, 8)``: column-parallel
    (``Shard(0)`` weight), row-parallel (``Shard(1)`` weight, ``Replicate`` bias) into a
    sequence-parallel LayerNorm (``Replicate`` params whose grads DTensor leaves
    ``Partial``), and a column-parallel head."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel, RowwiseParallel, SequenceParallel, parallelize_module,
    )

    torch.manual_seed(seed)
    reference = nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 6), nn.LayerNorm(6), nn.Linear(6, 3)
    )
    model = copy.deepcopy(reference)
    mesh = init_device_mesh("cpu", (WORLD,))
    parallelize_module(model, mesh, {
        "0": ColwiseParallel(),
        "2": RowwiseParallel(output_layouts=Shard(1)),
        "3": SequenceParallel(),
        "4": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    })
    return model, reference


# --------------------------------------------------------------------------- FSDP2
def _fsdp_check(kind: str, steps: int = 4) -> None:
    reference = mlp()
    model = fsdp(copy.deepcopy(reference))
    optimizer, reference_optimizer = H.make_optimizers(
        kind, model.parameters(), reference.parameters()
    )
    norms = H.compare_training(
        model, reference, optimizer, reference_optimizer, steps=steps, rows=ROWS, shape=(8,),
        out=1, local_rows=rank_rows,
    )
    assert any(n > 0.5 for n in norms), norms  # clipping was exercised
    H.assert_state_sharded_like_params(optimizer)
    log = optimizer.grad_norms()
    H.assert_same_on_all_ranks((log.steps, log.clipped, log.skipped, log.norms.tolist()), "log")


def check_fsdp2_SGD(work: Path) -> None:
    _fsdp_check("SGD")


def check_fsdp2_SGD_plain(work: Path) -> None:
    _fsdp_check("SGD_plain")


def check_fsdp2_Adam(work: Path) -> None:
    _fsdp_check("Adam")


def check_fsdp2_AdamW(work: Path) -> None:
    _fsdp_check("AdamW")


def check_fsdp2_RMSprop(work: Path) -> None:
    _fsdp_check("RMSprop")


def check_fsdp2_NAdam(work: Path) -> None:
    _fsdp_check("NAdam")


def check_fsdp2_norm_equals_clip_grad_norm_on_the_sharded_model(work: Path) -> None:
    """The logged norm is the norm torch's clip_grad_norm_ computes on the FSDP2 model's
    own DTensor grads (every shard of every rank, counted once)."""
    import tunebook

    model = fsdp(mlp())
    optimizer = tunebook.Adam(model.parameters(), lr=0.01, max_grad_norm=0.5)
    for step in range(2):
        x, y = H.batch(step, ROWS, (8,), 1)
        nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
        torch_norm = nn.utils.get_total_norm([p.grad for p in model.parameters()])
        optimizer.step()
        optimizer.zero_grad()
        logged = optimizer.grad_norms().norms[-1]
        torch.testing.assert_close(logged, H.full(torch_norm).float(), rtol=2e-6, atol=0)


# --------------------------------------------------------------------------- TP
def _tp_check(kind: str) -> None:
    model, reference = tp_model()
    optimizer, reference_optimizer = H.make_optimizers(
        kind, model.parameters(), reference.parameters()
    )
    H.compare_training(
        model, reference, optimizer, reference_optimizer, steps=3, rows=4, shape=(4, 8),
        out=3, local_rows=lambda t: t,
    )
    H.assert_state_sharded_like_params(optimizer)


def check_tp_SGD(work: Path) -> None:
    _tp_check("SGD")


def check_tp_Adam(work: Path) -> None:
    _tp_check("Adam")


def check_tp_AdamW(work: Path) -> None:
    _tp_check("AdamW")


def check_tp_RMSprop(work: Path) -> None:
    _tp_check("RMSprop")


def check_tp_NAdam(work: Path) -> None:
    _tp_check("NAdam")


# --------------------------------------------------------------------------- DDP
def _ddp_check(kind: str) -> None:
    """DDP with gradient accumulation: the first half of each rank's batch under
    ``no_sync()``, the second half synchronised."""
    from torch.nn.parallel import DistributedDataParallel

    reference = mlp()
    model = DistributedDataParallel(copy.deepcopy(reference))
    optimizer, reference_optimizer = H.make_optimizers(
        kind, model.parameters(), reference.parameters()
    )

    def accumulate(model, x, y):
        x, y = rank_rows(x), rank_rows(y)
        half = x.shape[0] // 2
        with model.no_sync():
            (nn.functional.mse_loss(model(x[:half]), y[:half]) / 2).backward()
        (nn.functional.mse_loss(model(x[half:]), y[half:]) / 2).backward()

    H.compare_training(
        model.module, reference, optimizer, reference_optimizer, steps=3, rows=ROWS,
        shape=(8,), out=1, local_rows=rank_rows, backward=lambda m, x, y: accumulate(model, x, y),
    )


def check_ddp_SGD(work: Path) -> None:
    _ddp_check("SGD")


def check_ddp_Adam(work: Path) -> None:
    _ddp_check("Adam")


def check_ddp_AdamW(work: Path) -> None:
    _ddp_check("AdamW")


def check_ddp_RMSprop(work: Path) -> None:
    _ddp_check("RMSprop")


def check_ddp_NAdam(work: Path) -> None:
    _ddp_check("NAdam")


# --------------------------------------------------------------------------- ZeRO
def _zero(model: nn.Module, kind: str, group, **extra):
    import tunebook
    from torch.distributed.optim import ZeroRedundancyOptimizer

    cls_name = kind.split("_")[0]
    return ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=getattr(tunebook, cls_name), process_group=group,
        max_grad_norm=0.5, lr=H.LR[kind], **H.CLASSES[kind], **extra,
    )


def _zero_check(kind: str) -> None:
    """ZeroRedundancyOptimizer(optimizer_class=tunebook.X, max_grad_norm=..., process_group=...)
    against DDP + clip_grad_norm_ + torch.optim.X: each rank steps its partition only, so
    the norm must be summed over the group (taken from ZeRO's process_group)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    group = dist.new_group(list(range(WORLD)))
    reference = mlp()
    model = DistributedDataParallel(copy.deepcopy(reference), process_group=group)
    zero = _zero(model, kind, group)
    assert zero.optim.process_group is group
    partition = [p for g in zero.optim.param_groups for p in g["params"]]
    assert 0 < len(partition) < len(list(model.parameters()))  # really partitioned
    cls_name = kind.split("_")[0]
    reference_optimizer = getattr(torch.optim, cls_name)(
        reference.parameters(), foreach=False, lr=H.LR[kind], **H.CLASSES[kind]
    )
    zero.grad_norms = zero.optim.grad_norms  # what compare_training reads
    H.compare_training(
        model.module, reference, zero, reference_optimizer, steps=3, rows=ROWS, shape=(8,),
        out=1, local_rows=rank_rows, backward=lambda m, x, y: nn.functional.mse_loss(
            model(rank_rows(x)), rank_rows(y)).backward(),
    )


def check_zero_SGD(work: Path) -> None:
    _zero_check("SGD")


def check_zero_Adam(work: Path) -> None:
    _zero_check("Adam")


def check_zero_AdamW(work: Path) -> None:
    _zero_check("AdamW")


def check_zero_RMSprop(work: Path) -> None:
    _zero_check("RMSprop")


def check_zero_NAdam(work: Path) -> None:
    _zero_check("NAdam")


def check_zero_default_group_is_world(work: Path) -> None:
    """ZeRO's default process_group (None: WORLD) reaches the local optimizer too."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(mlp())
    zero = _zero(model, "Adam", None)
    assert zero.optim.process_group == dist.group.WORLD


def check_hand_written_zero_with_process_group(work: Path) -> None:
    """Each rank builds its optimizer over its own partition with ``process_group=``, and
    broadcasts its params after the step; the optimizer survives pickle (the group travels
    by name)."""
    import tunebook
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    group = dist.new_group(list(range(WORLD)))
    reference = mlp()
    model = DistributedDataParallel(copy.deepcopy(reference))
    params = list(model.parameters())
    owner = [i % WORLD for i in range(len(params))]
    mine = [p for p, o in zip(params, owner) if o == H.rank()]
    optimizer = tunebook.AdamW(mine, lr=0.01, weight_decay=0.1, max_grad_norm=0.5,
                               process_group=group)
    restored = pickle.loads(pickle.dumps(optimizer))
    assert restored.process_group == group.group_name
    reference_optimizer = torch.optim.AdamW(
        reference.parameters(), lr=0.01, weight_decay=0.1, foreach=False
    )

    class Partitioned:
        def step(self):
            optimizer.step()
            for p, o in zip(params, owner):
                dist.broadcast(p.data, src=o, group=group)

        def zero_grad(self):
            model.zero_grad()

        def grad_norms(self):
            return optimizer.grad_norms()

    H.compare_training(
        model.module, reference, Partitioned(), reference_optimizer, steps=3, rows=ROWS,
        shape=(8,), out=1, local_rows=rank_rows, backward=lambda m, x, y: nn.functional.mse_loss(
            model(rank_rows(x)), rank_rows(y)).backward(),
    )


def check_zero_state_dict_round_trip_keeps_the_log(work: Path) -> None:
    """ZeroRedundancyOptimizer's consolidated state_dict, saved by rank 0 and loaded by every
    rank into a new one, resumes training identically, norm log and counters included."""
    from torch.nn.parallel import DistributedDataParallel

    def build():
        model = DistributedDataParallel(mlp())
        return model, _zero(model, "Adam", None)

    def train(model, zero, steps):
        for step in steps:
            x, y = H.batch(step, ROWS, (8,), 1)
            nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
            zero.step()
            zero.zero_grad()

    model, zero = build()
    train(model, zero, range(3))
    zero.consolidate_state_dict(to=0)
    if H.rank() == 0:
        torch.save(zero.state_dict(), work / "zero.pt")
    torch.distributed.barrier()
    weights = copy.deepcopy(model.module.state_dict())
    train(model, zero, range(3, 5))
    expected = [p.detach().clone() for p in model.parameters()]
    expected_log = zero.optim.grad_norms()

    model, zero = build()
    model.module.load_state_dict(weights)
    zero.load_state_dict(torch.load(work / "zero.pt", weights_only=True))
    train(model, zero, range(3, 5))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected))
    log = zero.optim.grad_norms()
    assert (log.steps, log.clipped, log.skipped) == (
        expected_log.steps, expected_log.clipped, expected_log.skipped), (log, expected_log)
    assert torch.equal(log.norms, expected_log.norms)
    assert not any(
        "tunebook_grad_norms" in state for state in zero.optim.state.values()
    )


# --------------------------------------------------------------------------- NaN / inf
def _snapshot(optimizer) -> list[torch.Tensor]:
    """Every local tensor the step may write: params and state, copied."""
    tensors = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            tensors.append(getattr(p, "_local_tensor", p).detach().clone())
            for value in optimizer.state[p].values():
                if isinstance(value, torch.Tensor):
                    tensors.append(getattr(value, "_local_tensor", value).clone())
    return tensors


def _assert_skipped_everywhere(optimizer, before: list[torch.Tensor], steps: int,
                               skipped: int = 1, model: nn.Module | None = None,
                               nonfinite_norm: bool = True) -> None:
    after = _snapshot(optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a skipped step wrote"
    log = optimizer.grad_norms()
    assert (log.steps, log.skipped) == (steps, skipped), log
    assert torch.isfinite(log.norms[-1]) != nonfinite_norm, log.norms
    H.assert_same_on_all_ranks(str(log.norms.tolist()), "norm log")
    H.assert_same_on_all_ranks((log.steps, log.clipped, log.skipped), "counters")
    # The params are bit-identical everywhere: the full tensors agree with rank 0's.
    params = (
        model.parameters() if model is not None
        else [p for group in optimizer.param_groups for p in group["params"]]
    )
    for p in params:
        values = H.gather(H.full(p).tolist())
        assert all(v == values[0] for v in values)


def _poison(grad: torch.Tensor, value: float) -> None:
    local = getattr(grad, "_local_tensor", grad)
    assert local.numel() > 0
    local.view(-1)[0] = value


def check_nan_in_one_ranks_fsdp2_shard_skips_every_rank(work: Path) -> None:
    import tunebook

    reference = mlp()
    model = fsdp(copy.deepcopy(reference))
    optimizer = tunebook.Adam(model.parameters(), lr=0.01, max_grad_norm=0.5)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, foreach=False)
    skipped = 0
    for step, poison in enumerate([None, float("nan"), None, float("inf"), None]):
        x, y = H.batch(step, ROWS, (8,), 1)
        nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
        if poison is not None:
            if H.rank() == 1:  # only rank 1's shard of layer 2's weight goes bad
                _poison(model[2].weight.grad, poison)
            before = _snapshot(optimizer)
            optimizer.step()
            optimizer.zero_grad()
            skipped += 1
            _assert_skipped_everywhere(optimizer, before, step + 1, skipped)
            continue
        optimizer.step()
        optimizer.zero_grad()
        nn.functional.mse_loss(reference(x), y).backward()
        nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        reference_optimizer.step()
        reference_optimizer.zero_grad()
    H.assert_params_close(model, reference)  # training went on as if the steps never were


def check_inf_in_one_ranks_replica_skips_every_rank(work: Path) -> None:
    """An inf in a Replicate param's grad on the rank whose copy is not counted in the norm
    (rank 1's copy of the row-parallel bias) still skips the step on every rank."""
    import tunebook

    model, _ = tp_model()
    optimizer = tunebook.SGD(model.parameters(), lr=0.05, momentum=0.9, max_grad_norm=0.5)
    x, y = H.batch(0, 4, (4, 8), 3)
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    assert model[2].bias.placements[0].is_replicate()
    if H.rank() == 1:
        _poison(model[2].bias.grad, float("inf"))
    before = _snapshot(optimizer)
    optimizer.step()
    _assert_skipped_everywhere(optimizer, before, 2)


def check_inf_in_one_ranks_zero_partition_skips_every_rank(work: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(mlp())
    zero = _zero(model, "Adam", None)
    for step in range(2):
        x, y = H.batch(step, ROWS, (8,), 1)
        nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
        if step == 1 and H.rank() == 1:
            _poison(zero.optim.param_groups[0]["params"][0].grad, float("inf"))
        before = _snapshot(zero.optim)
        full_before = [p.detach().clone() for p in model.parameters()]
        zero.step()
        zero.zero_grad()
    _assert_skipped_everywhere(zero.optim, before, 2, model=model)
    assert all(torch.equal(a, p) for a, p in zip(full_before, model.parameters()))


def check_grad_scaler_found_inf_on_one_rank_skips_every_rank(work: Path) -> None:
    """Under a GradScaler, the ``found_inf`` of one rank (an inf in its grad shard) is summed
    with the others' in the step's all-reduce: every rank skips, and the next step trains on
    as unscaled torch does."""
    import tunebook

    reference = mlp()
    model = fsdp(copy.deepcopy(reference))
    optimizer = tunebook.Adam(model.parameters(), lr=0.01, max_grad_norm=0.5,
                              skip_nonfinite=False)  # only found_inf can skip
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    for step in range(3):
        x, y = H.batch(step, ROWS, (8,), 1)
        scaler.scale(nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y))).backward()
        if step == 1 and H.rank() == 1:
            _poison(model[2].weight.grad, float("inf"))
        before = _snapshot(optimizer)
        with H.counting_collectives(refuse_host_reads=False) as counts:
            scaler.step(optimizer)
        assert counts.get("all_reduce") == 1, counts
        scaler.update()
        optimizer.zero_grad()
        if step == 1:
            _assert_skipped_everywhere(optimizer, before, 2)
            continue
        nn.functional.mse_loss(reference(x), y).backward()
        nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        reference_optimizer.step()
        reference_optimizer.zero_grad()
    H.assert_params_close(model, reference)
    # found_inf set on one rank only (as a scaler that checks only its rank's partition
    # sets it), with finite grads everywhere: GradScaler's protocol by hand.
    x, y = H.batch(3, ROWS, (8,), 1)
    nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
    before = _snapshot(optimizer)
    optimizer.grad_scale = torch.ones(())
    optimizer.found_inf = torch.tensor(float(H.rank() == 1))
    optimizer.step()
    del optimizer.grad_scale, optimizer.found_inf
    _assert_skipped_everywhere(optimizer, before, 4, skipped=2, nonfinite_norm=False)


# --------------------------------------------------------------------------- collectives
def check_one_collective_per_step_and_no_host_read(work: Path) -> None:
    """The norm path costs exactly one all_reduce per step, under FSDP2, TP (whose
    LayerNorm grads arrive Partial and take one more, bucketed, all-reduce) and ZeRO, and the
    step reads nothing on the host."""
    import tunebook
    from torch.nn.parallel import DistributedDataParallel

    model = fsdp(mlp())
    optimizer = tunebook.NAdam(model.parameters(), lr=0.01, max_grad_norm=0.5)
    for step in range(3):
        x, y = H.batch(step, ROWS, (8,), 1)
        nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
        # The first step builds the plans and reads the mesh's ranks (a CPU tensor).
        with H.counting_collectives(refuse_host_reads=step > 0) as counts:
            optimizer.step()
        assert counts == {"all_reduce": 1}, (step, counts)
        optimizer.zero_grad()
    # Nothing that needs the norm: no collective at all.
    quiet = tunebook.SGD(model.parameters(), lr=0.01, log_grad_norm=False, skip_nonfinite=False)
    nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
    with H.counting_collectives(refuse_host_reads=False) as counts:
        quiet.step()
    assert counts == {}, counts

    model, _ = tp_model()
    optimizer = tunebook.Adam(model.parameters(), lr=0.01, max_grad_norm=0.5)
    for step in range(2):
        x, y = H.batch(step, 4, (4, 8), 3)
        nn.functional.mse_loss(model(x), y).backward()
        partial = [p for p in model.parameters() if p.grad.placements != p.placements]
        with H.counting_collectives(refuse_host_reads=step > 0) as counts:
            optimizer.step()
        assert counts == {"all_reduce": 1 + bool(partial)}, (step, counts, len(partial))
        optimizer.zero_grad()

    model = DistributedDataParallel(mlp())
    zero = _zero(model, "Adam", None)
    for step in range(2):
        x, y = H.batch(step, ROWS, (8,), 1)
        nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
        with H.counting_collectives() as counts:
            zero.optim.step()
        assert counts == {"all_reduce": 1}, (step, counts)
        zero.zero_grad()


# --------------------------------------------------------------------------- state dicts
def _train(model, optimizer, steps: range) -> None:
    for step in steps:
        x, y = H.batch(step, ROWS, (8,), 1)
        nn.functional.mse_loss(model(rank_rows(x)), rank_rows(y)).backward()
        optimizer.step()
        optimizer.zero_grad()


def check_dcp_round_trip_mid_training_resumes_identically(work: Path) -> None:
    import tunebook
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
        set_optimizer_state_dict,
    )

    def build(seed):
        model = fsdp(mlp(seed))
        return model, tunebook.NAdam(model.parameters(), lr=0.01, max_grad_norm=0.5)

    model, optimizer = build(0)
    _train(model, optimizer, range(3))
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer),
    }
    dcp.save(state, checkpoint_id=str(work / "checkpoint"))
    _train(model, optimizer, range(3, 6))
    expected = [H.full(p) for p in model.parameters()]
    expected_log = optimizer.grad_norms()

    resumed, resumed_optimizer = build(1)  # other weights, no state: all must come back
    state = {
        "model": get_model_state_dict(resumed),
        "optim": get_optimizer_state_dict(resumed, resumed_optimizer),
    }
    dcp.load(state, checkpoint_id=str(work / "checkpoint"))
    set_model_state_dict(resumed, state["model"])
    set_optimizer_state_dict(resumed, resumed_optimizer, state["optim"])
    log = resumed_optimizer.grad_norms()
    assert (log.steps, log.clipped, log.skipped) == (3, expected_log.clipped - sum(
        n > 0.5 for n in expected_log.norms[3:].tolist()), 0), log
    assert torch.equal(log.norms, expected_log.norms[:3])
    H.assert_state_sharded_like_params(resumed_optimizer)
    _train(resumed, resumed_optimizer, range(3, 6))
    for p, q in zip(resumed.parameters(), expected):
        assert torch.equal(H.full(p), q)
    log = resumed_optimizer.grad_norms()
    assert torch.equal(log.norms, expected_log.norms)
    assert (log.steps, log.clipped, log.skipped) == (
        expected_log.steps, expected_log.clipped, expected_log.skipped)
    H.assert_same_on_all_ranks((log.steps, log.clipped, log.norms.tolist()), "restored log")


def check_dcp_state_dict_calls_do_not_count_as_steps(work: Path) -> None:
    """DCP's get/set_optimizer_state_dict step an optimizer whose state is empty (zero grads,
    lr 0) to create its state: SGD without momentum has none, so every checkpoint would
    add a step of norm 0 to the log. They do not count, and change no param."""
    import tunebook
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict,
    )

    model = fsdp(mlp())
    optimizer = tunebook.SGD(model.parameters(), lr=0.05, max_grad_norm=0.5)
    _train(model, optimizer, range(2))
    expected = optimizer.grad_norms()
    params = [H.full(p) for p in model.parameters()]
    for _ in range(3):
        state = get_optimizer_state_dict(model, optimizer)
    dcp.save({"optim": state}, checkpoint_id=str(work / "sgd"))
    log = optimizer.grad_norms()
    assert (log.steps, log.clipped, log.norms.tolist()) == (
        expected.steps, expected.clipped, expected.norms.tolist()), (log, expected)
    assert all(torch.equal(H.full(p), q) for p, q in zip(model.parameters(), params))

    fresh = tunebook.SGD(model.parameters(), lr=0.05, max_grad_norm=0.5)
    state = {"optim": get_optimizer_state_dict(model, fresh)}
    assert fresh.grad_norms().steps == 0
    dcp.load(state, checkpoint_id=str(work / "sgd"))
    # strict=False: DCP wants state for every param, which plain SGD (torch's too) lacks.
    set_optimizer_state_dict(model, fresh, state["optim"], options=StateDictOptions(strict=False))
    log = fresh.grad_norms()
    assert (log.steps, log.clipped, log.norms.tolist()) == (
        expected.steps, expected.clipped, expected.norms.tolist()), (log, expected)


def check_torch_full_state_dict_loads_into_sharded_tunebook(work: Path) -> None:
    """A torch.optim.Adam state_dict (plain, unsharded) loads into tunebook.Adam over FSDP2
    params, by ``load_state_dict`` and by DCP's full-state-dict API; training continues as
    torch's does."""
    import tunebook
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict,
    )

    reference = mlp()
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, foreach=False)
    for step in range(3):
        x, y = H.batch(step, ROWS, (8,), 1)
        nn.functional.mse_loss(reference(x), y).backward()
        nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        reference_optimizer.step()
        reference_optimizer.zero_grad()
    by_index = copy.deepcopy(reference_optimizer.state_dict())
    by_name = get_optimizer_state_dict(reference, reference_optimizer)
    for how in ("load_state_dict", "set_optimizer_state_dict"):
        continued = copy.deepcopy(reference)
        continued_optimizer = torch.optim.Adam(continued.parameters(), lr=0.01, foreach=False)
        # torch's load_state_dict keeps the given tensors (the CPU ones): a copy each.
        continued_optimizer.load_state_dict(copy.deepcopy(by_index))
        model = fsdp(copy.deepcopy(reference))
        optimizer = tunebook.Adam(model.parameters(), lr=0.01, max_grad_norm=0.5)
        given = copy.deepcopy(by_index if how == "load_state_dict" else by_name)
        if how == "load_state_dict":
            optimizer.load_state_dict(given)
        else:
            set_optimizer_state_dict(
                model, optimizer, given, options=StateDictOptions(full_state_dict=True)
            )
        # Each rank keeps its own shard, not a view into the full tensor it was given.
        full_storages = {
            v.untyped_storage().data_ptr() for s in given["state"].values() for v in s.values()
            if isinstance(v, torch.Tensor)
        }
        assert not any(
            v._local_tensor.untyped_storage().data_ptr() in full_storages
            for s in optimizer.state.values() for v in s.values() if v.dim() > 0
        )
        H.assert_state_sharded_like_params(optimizer)
        for p, q in zip(model.parameters(), continued.parameters()):
            for key in ("exp_avg", "exp_avg_sq"):
                expected = continued_optimizer.state[q][key]
                assert torch.equal(H.full(optimizer.state[p][key]), expected)
        H.compare_training(
            model, continued, optimizer, continued_optimizer, steps=2, rows=ROWS, shape=(8,),
            out=1, local_rows=rank_rows,
        )


def check_sharded_tunebook_state_dict_loads_into_torch(work: Path) -> None:
    """The other way: DCP's full state_dict of a sharded tunebook optimizer loads into a
    plain torch.optim.Adam, which then trains on as tunebook does."""
    import tunebook
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict,
    )

    reference = mlp()
    model = fsdp(copy.deepcopy(reference))
    optimizer, reference_optimizer = H.make_optimizers(
        "Adam", model.parameters(), reference.parameters()
    )
    H.compare_training(model, reference, optimizer, reference_optimizer, steps=3, rows=ROWS,
                       shape=(8,), out=1, local_rows=rank_rows)
    # A copy: the state_dict holds the optimizer's own 0-dim `step` tensors, which torch's
    # load_state_dict would share between the two optimizers.
    state = copy.deepcopy(get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True)
    ))
    plain = copy.deepcopy(reference)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=0.01, weight_decay=0.01,
                                       foreach=False)
    set_optimizer_state_dict(plain, plain_optimizer, copy.deepcopy(state))
    for p, q in zip(plain.parameters(), reference.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                plain_optimizer.state[p][key], reference_optimizer.state[q][key],
                rtol=1e-5, atol=1e-7,
            )
        assert float(plain_optimizer.state[p]["step"]) == 3
    # And back into tunebook single-process, log included.
    single = tunebook.Adam(plain.parameters(), lr=0.01, weight_decay=0.01, max_grad_norm=0.5)
    set_optimizer_state_dict(plain, single, copy.deepcopy(state))
    assert single.grad_norms().steps == 3
    torch.testing.assert_close(single.grad_norms().norms, optimizer.grad_norms().norms)
    H.compare_training(model, plain, optimizer, plain_optimizer, steps=2, rows=ROWS,
                       shape=(8,), out=1, local_rows=rank_rows)


# --------------------------------------------------------------------------- errors
def _raises(error: type, match: str, function) -> None:
    with pytest.raises(error, match=match):
        function()


def check_errors_are_clear_and_raised_on_every_rank(work: Path) -> None:
    """Bad set-ups raise the same clear error on every rank at the first step, before any
    collective (the harness's barrier after the check would hang otherwise)."""
    import tunebook
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    def dparam(mesh, rows=4):
        p = nn.Parameter(distribute_tensor(torch.randn(rows, 3), mesh, [Shard(0)]))
        p.grad = distribute_tensor(torch.randn(rows, 3), mesh, [Shard(0)])
        return p

    mesh = init_device_mesh("cpu", (WORLD,))
    reversed_mesh = DeviceMesh("cpu", list(reversed(range(WORLD))))
    optimizer = tunebook.Adam([dparam(mesh), dparam(reversed_mesh)], max_grad_norm=1.0)
    _raises(ValueError, "unrelated device meshes", optimizer.step)
    _raises(ValueError, "unrelated device meshes", optimizer.step)  # no wedged state

    plain = nn.Parameter(torch.randn(3))
    plain.grad = torch.randn(3)
    optimizer = tunebook.Adam([dparam(mesh), plain])
    _raises(TypeError, "mix DTensors and plain tensors", optimizer.step)

    alone = dist.new_group([0])  # rank 1 gets the non-member sentinel
    optimizer = tunebook.Adam([dparam(mesh)], process_group=alone)
    if H.rank() == 0:
        _raises(ValueError, r"process_group spans ranks \[0\] but the params' device mesh "
                            r"spans \[0, 1\]", optimizer.step)
    else:
        _raises(ValueError, "not a member of process_group", optimizer.step)

    optimizer = tunebook.SGD([plain], lr=0.1, process_group="no such group")
    _raises(ValueError, "names no process group", optimizer.step)
    _raises(TypeError, "process_group must be a torch.distributed ProcessGroup",
            lambda: tunebook.SGD([plain], lr=0.1, process_group=3))
    _raises(ValueError, "Partial", lambda: _partial_param_step(mesh))


def _partial_param_step(mesh) -> None:
    import tunebook
    from torch.distributed.tensor import DTensor, Partial

    p = nn.Parameter(DTensor.from_local(torch.randn(2), mesh, [Partial()]))
    p.grad = DTensor.from_local(torch.randn(2), mesh, [Partial()])
    tunebook.SGD([p], lr=0.1).step()


# --------------------------------------------------------------------------- pytest
CHECKS = [name[len("check_"):] for name in list(globals()) if name.startswith("check_")]


@pytest.fixture(scope="module")
def results() -> dict[str, str | None]:
    return H.run_group(__name__, CHECKS, WORLD)


@pytest.mark.parametrize("check", CHECKS)
def test_distributed(check: str, results: dict[str, str | None]) -> None:
    H.report(results, check)


def test_process_group_without_init_process_group_is_a_clear_error() -> None:
    import tunebook

    p = nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    before = p.detach().clone()
    optimizer = tunebook.Adam([p], process_group="default_pg")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        optimizer.step()
    assert torch.equal(p, before) and not optimizer.state


@given(value=st.one_of(
    st.integers(), st.floats(allow_nan=True), st.booleans(), st.binary(max_size=4),
    st.lists(st.integers(), max_size=3), st.text(max_size=8),
))
@settings(max_examples=60, deadline=None)
def test_process_group_of_any_other_type_is_refused_at_construction(value) -> None:
    """Any value but a ProcessGroup, its name or None: a TypeError naming the argument, at
    construction. A name is checked at the first step (here: no process group at all)."""
    import tunebook

    p = nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    if isinstance(value, str):
        optimizer = tunebook.SGD([p], lr=0.1, process_group=value)
        with pytest.raises(RuntimeError, match="process_group is set but torch.distributed"):
            optimizer.step()
        return
    with pytest.raises(TypeError, match="process_group must be a torch.distributed"):
        tunebook.SGD([p], lr=0.1, process_group=value)
