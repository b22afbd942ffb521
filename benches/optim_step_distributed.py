"""One optimizer step of an FSDP2 model, tunebook against torch, in the same processes.

    tunebook   tunebook.Adam(max_grad_norm=1.0): clip, norm log and skip check fused into
               the step, one all_reduce of the sum of squares for every param
    torch      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) on the DTensor grads
               + torch.optim.Adam(fused=True) (foreach=True where this torch has no fused
               Adam for the device; the table says which)

The model is a stack of square Linears (~50M params by default), each and the root wrapped by
``fully_shard``; every rank holds its shard. Both optimizers step their own copy of the model
with the same gradients; the two are timed alternately in blocks so that load changes hit
both alike. A step is timed on rank 0 from a barrier to its end (CUDA events on nccl);
reported: the median and the fastest step, the torch/tunebook ratio of the medians, and the
collectives each step issues (as the backend records them in the profiler, on rank 0).

    python benches/optim_step_distributed.py [--world 2] [--backend gloo|nccl]
        [--params 50e6] [--width 2560] [--steps 20] [--blocks 4]

The backend is nccl, one GPU per rank, when at least ``--world`` GPUs are visible, else gloo
on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from optim_step import Timer  # benches/ is on sys.path when a bench runs as a script
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

MAX_NORM = 1.0


def count_collectives(fn) -> dict[str, int]:
    """The collectives ``fn`` runs, by name, as the backend records them in the profiler
    (``gloo:all_reduce``, ``nccl:all_reduce``, ...): ``dist.all_reduce`` and DTensor's
    functional collectives alike."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for event in prof.events():
        if event.name.startswith(("gloo:", "nccl:")):
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


def build(width: int, layers: int, device: torch.device) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).to(device)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    return model


def torch_adam(params, device):
    try:
        optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
        return optimizer, "fused"
    except RuntimeError:
        return torch.optim.Adam(params, lr=1e-3, foreach=True), "foreach"


def worker(rank: int, args, store: str, out: str) -> None:
    import tunebook

    nccl = args.backend == "nccl"
    if nccl:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // args.world))
        device = torch.device("cpu")
    dist.init_process_group(args.backend, init_method=f"file://{store}", rank=rank,
                            world_size=args.world, timeout=datetime.timedelta(minutes=10))
    layers = max(1, round(args.params / (args.width * (args.width + 1))))
    ours_model = build(args.width, layers, device)
    theirs_model = build(args.width, layers, device)
    ours = tunebook.Adam(ours_model.parameters(), lr=1e-3, max_grad_norm=MAX_NORM)
    theirs, flavour = torch_adam(theirs_model.parameters(), device)
    generator = torch.Generator(device=device).manual_seed(rank)
    for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
        local = torch.randn(a._local_tensor.shape, generator=generator, device=device)
        a.grad = torch.distributed.tensor.DTensor.from_local(
            local.clone(), a.device_mesh, a.placements, shape=a.shape, stride=a.stride())
        b.grad = torch.distributed.tensor.DTensor.from_local(
            local, b.device_mesh, b.placements, shape=b.shape, stride=b.stride())

    def step_ours():
        ours.step()

    def step_theirs():
        torch.nn.utils.clip_grad_norm_(theirs_model.parameters(), MAX_NORM)
        theirs.step()

    timer = Timer(device)

    def timed(fn) -> float:
        dist.barrier()
        if nccl:
            torch.cuda.synchronize()
        return timer(fn)

    counts = {}
    for name, fn in (("tunebook", step_ours), ("torch", step_theirs)):
        for _ in range(3):  # warm-up: state, plans, kernels
            fn()
        counts[name] = count_collectives(fn)
        if nccl:
            torch.cuda.synchronize()
    times: dict[str, list[float]] = {"tunebook": [], "torch": []}
    per_block = max(1, args.steps // args.blocks)
    for block in range(args.blocks):
        order = (("tunebook", step_ours), ("torch", step_theirs))
        for name, fn in order if block % 2 == 0 else order[::-1]:
            times[name].extend(timed(fn) for _ in range(per_block))
    # Same gradients and the same clipping: the two copies stay close (sanity).
    drift = max(
        (a._local_tensor - b._local_tensor).abs().max().item()
        for a, b in zip(ours_model.parameters(), theirs_model.parameters())
    )
    if rank == 0:
        params = sum(p.numel() for p in ours_model.parameters())
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        lines = [
            f"FSDP2, {args.world} ranks, {args.backend} on {device.type}, {params / 1e6:.1f}M "
            f"params ({layers} x Linear({args.width}, {args.width})), "
            f"{args.blocks} alternating blocks, {per_block * args.blocks} timed steps each, "
            f"load average at the end {load:.2f} on {os.cpu_count()} CPUs",
            f"{'variant':<34} {'median ms':>10} {'min ms':>8} {'ratio':>6}  collectives per step",
        ]
        base = statistics.median(times["tunebook"])
        for name, label in (("tunebook", "tunebook Adam(max_grad_norm)"),
                            ("torch", f"clip_grad_norm_ + Adam({flavour})")):
            median = statistics.median(times[name])
            total = sum(counts[name].values())
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts[name].items())) or "none"
            lines.append(f"{label:<34} {median * 1e3:>10.1f} {min(times[name]) * 1e3:>8.1f} "
                         f"{median / base:>6.2f}  {total} ({detail})")
        lines.append(f"max |param difference| between the copies after all steps: {drift:.2e}")
        Path(out).write_text("\n".join(lines) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--backend", choices=("gloo", "nccl"), default=None)
    parser.add_argument("--params", type=float, default=50e6)
    parser.add_argument("--width", type=int, default=2560)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()
    if args.backend is None:
        several = torch.cuda.is_available() and torch.cuda.device_count() >= args.world
        args.backend = "nccl" if several and args.world > 1 else "gloo"
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "table.txt")
        mp.start_processes(worker, args=(args, os.path.join(directory, "store"), out),
                           nprocs=args.world, start_method="spawn")
        print(Path(out).read_text(), end="")


if __name__ == "__main__":
    main()
