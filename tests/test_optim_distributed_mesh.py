"""tunebook's optimizers on 4 CPU ranks (gloo): 2-D meshes (HSDP: replicate x shard, and
FSDP x TP, whose params live on the 2-D mesh and on its data-parallel submesh), FSDP2 with
uneven and empty shards on 4 ranks and on a 3-rank submesh, ZeroRedundancyOptimizer on
subgroups, a NaN on a rank whose replica is not counted, one collective per step, and a
process group that disagrees with the mesh.

One group of 4 spawned processes runs every check (see ``distributed_harness``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

import distributed_harness as H  # noqa: E402

WORLD = 4
KINDS = ["SGD", "Adam", "AdamW", "RMSprop", "NAdam"]


def mlp(widths: tuple[int, ...], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        if i:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def fsdp(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for module in model:
        if isinstance(module, nn.Linear):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def rows_of(index: int, count: int):
    def local(t: torch.Tensor) -> torch.Tensor:
        rows = t.shape[0] // count
        return t[index * rows:(index + 1) * rows]
    return local


def _compare(kind: str, model, reference, *, rows, shape, out, local_rows, steps=3) -> None:
    optimizer, reference_optimizer = H.make_optimizers(
        kind, model.parameters(), reference.parameters()
    )
    norms = H.compare_training(
        model, reference, optimizer, reference_optimizer, steps=steps, rows=rows, shape=shape,
        out=out, local_rows=local_rows,
    )
    assert any(n > 0.5 for n in norms), norms
    H.assert_state_sharded_like_params(optimizer)
    log = optimizer.grad_norms()
    H.assert_same_on_all_ranks((log.steps, log.clipped, log.skipped, log.norms.tolist()), "log")


# --------------------------------------------------------------------------- FSDP2, 4 and 3 ranks
def _fsdp4(kind: str) -> None:
    """Rows 6, 3 and 1 over 4 ranks: shards of 2/2/2/0, 1/1/1/0 and 1/0/0/0 rows."""
    from torch.distributed.device_mesh import init_device_mesh

    reference = mlp((8, 6, 3, 1))
    model = fsdp(copy.deepcopy(reference), init_device_mesh("cpu", (WORLD,)))
    _compare(kind, model, reference, rows=4 * WORLD, shape=(8,), out=1,
             local_rows=rows_of(H.rank(), WORLD))


def check_fsdp2_4_ranks_uneven_Adam(work: Path) -> None:
    _fsdp4("Adam")


def check_fsdp2_4_ranks_uneven_SGD(work: Path) -> None:
    _fsdp4("SGD")


def _fsdp3(kind: str) -> None:
    """FSDP2 on a 3-rank submesh of the 4 ranks (rank 3 stays out): rows 5, 2 and 1 give
    shards of 2/2/1, 1/1/0 and 1/0/0 rows; the norm is summed over the mesh's group."""
    from torch.distributed.device_mesh import DeviceMesh

    mesh = DeviceMesh("cpu", [0, 1, 2])
    if H.rank() == 3:
        return
    reference = mlp((8, 5, 2, 1))
    model = fsdp(copy.deepcopy(reference), mesh)
    _compare_3(kind, model, reference, mesh)


def _compare_3(kind, model, reference, mesh) -> None:
    optimizer, reference_optimizer = H.make_optimizers(
        kind, model.parameters(), reference.parameters()
    )
    H.compare_training(
        model, reference, optimizer, reference_optimizer, steps=3, rows=12, shape=(8,), out=1,
        local_rows=rows_of(H.rank(), 3),
    )
    H.assert_state_sharded_like_params(optimizer)
    log = optimizer.grad_norms()
    H.assert_same_on_all_ranks((log.steps, log.clipped, log.norms.tolist()), "log",
                               group=mesh.get_group())


def check_fsdp2_3_ranks_uneven_SGD(work: Path) -> None:
    _fsdp3("SGD")


def check_fsdp2_3_ranks_uneven_Adam(work: Path) -> None:
    _fsdp3("Adam")


def check_fsdp2_3_ranks_uneven_AdamW(work: Path) -> None:
    _fsdp3("AdamW")


def check_fsdp2_3_ranks_uneven_RMSprop(work: Path) -> None:
    _fsdp3("RMSprop")


def check_fsdp2_3_ranks_uneven_NAdam(work: Path) -> None:
    _fsdp3("NAdam")


# --------------------------------------------------------------------------- HSDP
def hsdp_model(seed: int = 0):
    """HSDP: params Replicate() over 2 replicas x Shard(0) over 2 ranks in each."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    reference = mlp((8, 16, 5, 1), seed)
    return fsdp(copy.deepcopy(reference), mesh), reference, mesh


def _hsdp(kind: str) -> None:
    model, reference, _ = hsdp_model()
    assert [p.placements for p in model.parameters()][0][0].is_replicate()
    _compare(kind, model, reference, rows=4 * WORLD, shape=(8,), out=1,
             local_rows=rows_of(H.rank(), WORLD))


def check_hsdp_SGD(work: Path) -> None:
    _hsdp("SGD")


def check_hsdp_Adam(work: Path) -> None:
    _hsdp("Adam")


def check_hsdp_AdamW(work: Path) -> None:
    _hsdp("AdamW")


def check_hsdp_RMSprop(work: Path) -> None:
    _hsdp("RMSprop")


def check_hsdp_NAdam(work: Path) -> None:
    _hsdp("NAdam")


# --------------------------------------------------------------------------- FSDP x TP
def fsdp_tp_model(seed: int = 0):
    """FSDP over "dp" x tensor parallelism over "tp": the parallel Linears' params become
    (Shard(0), Shard(k)/Replicate()) DTensors on the 2-D mesh, the LayerNorm's (not
    tensor-parallel) Shard(0) DTensors on the "dp" submesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (
        ColwiseParallel, RowwiseParallel, parallelize_module,
    )

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    torch.manual_seed(seed)
    reference = nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 6), nn.LayerNorm(6), nn.Linear(6, 3)
    )
    model = copy.deepcopy(reference)
    parallelize_module(model, mesh["tp"], {
        "0": ColwiseParallel(), "2": RowwiseParallel(), "4": ColwiseParallel(
            output_layouts=Replicate()
        ),
    })
    from torch.distributed.fsdp import fully_shard

    for module in model:
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            fully_shard(module, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model, reference, mesh


def _fsdp_tp(kind: str) -> None:
    model, reference, mesh = fsdp_tp_model()
    meshes = {p.device_mesh.ndim for p in model.parameters()}
    assert meshes == {1, 2}, meshes
    dp = mesh["dp"].get_local_rank()
    _compare(kind, model, reference, rows=4, shape=(4, 8), out=3, local_rows=rows_of(dp, 2))


def check_fsdp_tp_SGD(work: Path) -> None:
    _fsdp_tp("SGD")


def check_fsdp_tp_Adam(work: Path) -> None:
    _fsdp_tp("Adam")


def check_fsdp_tp_AdamW(work: Path) -> None:
    _fsdp_tp("AdamW")


def check_fsdp_tp_RMSprop(work: Path) -> None:
    _fsdp_tp("RMSprop")


def check_fsdp_tp_NAdam(work: Path) -> None:
    _fsdp_tp("NAdam")


# --------------------------------------------------------------------------- ZeRO on subgroups
def check_zero_on_two_subgroups(work: Path) -> None:
    """Two independent pairs, [0, 1] and [2, 3], each DDP + ZeroRedundancyOptimizer on its
    own group: the norm is summed over the pair only (over all 4 ranks it would be sqrt(2)
    times too large)."""
    import tunebook
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    pair = pairs[H.rank() // 2]
    reference = mlp((8, 16, 5, 1))
    model = DistributedDataParallel(copy.deepcopy(reference), process_group=pair)
    zero = ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=tunebook.Adam, process_group=pair,
        max_grad_norm=0.5, lr=0.01,
    )
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, foreach=False)
    zero.grad_norms = zero.optim.grad_norms
    local = rows_of(H.rank() % 2, 2)
    H.compare_training(
        model.module, reference, zero, reference_optimizer, steps=3, rows=8, shape=(8,), out=1,
        local_rows=local,
        backward=lambda m, x, y: nn.functional.mse_loss(model(local(x)), local(y)).backward(),
    )


# --------------------------------------------------------------------------- NaN, collectives
def check_nan_on_one_rank_of_a_2d_mesh_skips_every_rank(work: Path) -> None:
    """HSDP: a NaN in rank 3's shard (a replica whose sum of squares is not counted) and
    then in rank 0's skip the step on all 4 ranks; each step costs one all_reduce."""
    import tunebook

    model, _, _ = hsdp_model()
    optimizer = tunebook.RMSprop(model.parameters(), lr=0.005, max_grad_norm=0.5)
    local = rows_of(H.rank(), WORLD)
    for step, poisoned in enumerate([None, 3, None, 0]):
        x, y = H.batch(step, 4 * WORLD, (8,), 1)
        nn.functional.mse_loss(model(local(x)), local(y)).backward()
        if poisoned == H.rank():
            grad = model[2].weight.grad._local_tensor
            grad.view(-1)[0] = float("nan")
        before = [p._local_tensor.clone() for p in model.parameters()]
        with H.counting_collectives(refuse_host_reads=step > 0) as counts:
            optimizer.step()
        assert counts == {"all_reduce": 1}, (step, counts)
        optimizer.zero_grad()
        changed = [not torch.equal(b, p._local_tensor) for b, p in zip(before, model.parameters())]
        if poisoned is None:
            assert any(changed)
        else:
            assert not any(changed), (step, changed)
    log = optimizer.grad_norms()
    assert (log.steps, log.skipped) == (4, 2), log
    H.assert_same_on_all_ranks((log.steps, log.clipped, log.skipped, str(log.norms.tolist())),
                               "counters")
    for p in model.parameters():
        values = H.gather(H.full(p).tolist())
        assert all(v == values[0] for v in values)


def check_one_collective_per_step_under_fsdp_tp(work: Path) -> None:
    import tunebook

    model, _, mesh = fsdp_tp_model()
    optimizer = tunebook.AdamW(model.parameters(), lr=0.01, max_grad_norm=0.5)
    local = rows_of(mesh["dp"].get_local_rank(), 2)
    for step in range(3):
        x, y = H.batch(step, 4, (4, 8), 3)
        nn.functional.mse_loss(model(local(x)), local(y)).backward()
        with H.counting_collectives(refuse_host_reads=step > 0) as counts:
            optimizer.step()
        assert counts == {"all_reduce": 1}, (step, counts)
        optimizer.zero_grad()


# --------------------------------------------------------------------------- errors
def check_process_group_disagreeing_with_the_mesh_is_a_clear_error(work: Path) -> None:
    import tunebook
    import torch.distributed as dist

    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    model, _, _ = hsdp_model()
    x, y = H.batch(0, 4 * WORLD, (8,), 1)
    nn.functional.mse_loss(model(x), y).backward()
    optimizer = tunebook.Adam(model.parameters(), process_group=pairs[H.rank() // 2])
    with pytest.raises(ValueError, match=r"process_group spans ranks \[\d, \d\] but the params' "
                                         r"device mesh spans \[0, 1, 2, 3\]"):
        optimizer.step()
    assert not optimizer.state
    # The mesh's own group is accepted.
    optimizer = tunebook.Adam(model.parameters(), process_group=dist.group.WORLD)
    optimizer.step()


def check_params_of_unrelated_meshes_are_a_clear_error(work: Path) -> None:
    """A param on a 4-rank mesh and one on a separate 2-D mesh of the same ranks."""
    import tunebook
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    flat = init_device_mesh("cpu", (WORLD,))
    square = init_device_mesh("cpu", (2, 2))
    params = []
    for mesh, placements in ((flat, [Shard(0)]), (square, [Shard(0), Shard(1)])):
        p = nn.Parameter(distribute_tensor(torch.randn(4, 4), mesh, placements))
        p.grad = distribute_tensor(torch.randn(4, 4), mesh, placements)
        params.append(p)
    optimizer = tunebook.SGD(params, lr=0.1, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="unrelated device meshes.*one optimizer per mesh"):
        optimizer.step()


# --------------------------------------------------------------------------- pytest
CHECKS = [name[len("check_"):] for name in list(globals()) if name.startswith("check_")]


@pytest.fixture(scope="module")
def results() -> dict[str, str | None]:
    return H.run_group(__name__, CHECKS, WORLD)


@pytest.mark.parametrize("check", CHECKS)
def test_distributed_mesh(check: str, results: dict[str, str | None]) -> None:
    H.report(results, check)
