"""Step time of tunebook's fused optimizers against torch.optim, in one process.

Each row is one full optimizer step *with global-norm clipping* (max_norm=1.0):
    tunebook        tunebook.optim.X(max_grad_norm=1.0)      (clip + norm log + skip check fused)
    torch fused     clip_grad_norm_(foreach=True) + torch.optim.X(fused=True)  (Adam, AdamW, SGD)
    torch foreach   clip_grad_norm_(foreach=True) + torch.optim.X(foreach=True)
Cases: (a) "large", a few large float32 tensors totalling ~64M params (``--quick``: ~8M), and
(b) "small", ~2000 small tensors. Reported: the median (and the fastest) step time over
``--steps`` timed steps (CUDA events on cuda), the competitor/tunebook ratio of the medians,
the achieved bandwidth counting only
the bytes that must move (the norm pass reads every grad once; the update reads and writes
params and states once), and that floor's share of the copy bandwidth measured here.

    python benches/optim_step.py --device cpu [--quick] [--optimizers adam,sgd]
        [--variants tunebook] [--cases large,small,strided,complex]

Two more cases show what the layouts off tunebook's contiguous fast path cost: "strided",
the small case's tensors as non-dense views (``torch.randn(n, 2)[:, 0]``, stepped through a
contiguous working copy), and "complex", the small case as complex64 (stepped as real
views); torch.optim handles both natively.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import tunebook.optim as tbo  # noqa: E402

MAX_NORM = 1.0
# Bytes per param that any clipped step must move (float32): 4 to read the grad for the
# norm, then the update's reads and writes of param, grad and states.
FLOOR_BYTES = {"adam": 4 + 28, "adamw": 4 + 28, "nadam": 4 + 28, "sgd": 4 + 20, "rmsprop": 4 + 20}
TORCH_FUSED = {"adam", "adamw", "sgd"}


def make_kwargs(name):
    return {
        "adam": (tbo.Adam, torch.optim.Adam, dict(lr=1e-3)),
        "adamw": (tbo.AdamW, torch.optim.AdamW, dict(lr=1e-3)),
        "nadam": (tbo.NAdam, torch.optim.NAdam, dict(lr=1e-3)),
        "sgd": (tbo.SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True)),
        "rmsprop": (tbo.RMSprop, torch.optim.RMSprop, dict(lr=1e-3)),
    }[name]


def case_sizes(case, quick):
    """Elements per tensor (complex: float32 elements, two per complex value); "strided" and
    "complex" use the small case's sizes."""
    if case == "large":
        unit = (1 << 20) if quick else (1 << 23)  # 8M or 64M params in 5 tensors
        return [2 * unit, 2 * unit, 2 * unit, unit, unit]
    gen = torch.Generator().manual_seed(0)  # ~2000 tensors, log-uniform 16..16K elements
    n = 2000
    return (2 ** (4 + 10 * torch.rand(n, generator=gen))).long().tolist()


class Timer:
    def __init__(self, device):
        self.device = device

    def __call__(self, fn):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def copy_bandwidth(device, timer, nbytes=1 << 28):
    """Read+write bytes per second of a large tensor copy (the machine's copy bandwidth)."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = [timer(lambda: dst.copy_(src)) for _ in range(15)]
    return 2 * nbytes / statistics.median(times)


def make_tensor(case, n, gen, device):
    if case == "strided":  # a non-dense view: every other element of an (n, 2) tensor
        return torch.randn(n, 2, generator=gen).to(device)[:, 0]
    if case == "complex":
        return torch.randn(max(n // 2, 1), dtype=torch.complex64, generator=gen).to(device)
    return torch.randn(n, generator=gen).to(device)


def bench_variant(variant, name, case, sizes, device, steps, timer):
    tb_cls, torch_cls, kwargs = make_kwargs(name)
    gen = torch.Generator().manual_seed(1)
    params = [make_tensor(case, n, gen, device).requires_grad_() for n in sizes]
    saved = [torch.randn(p.shape, dtype=p.dtype, generator=gen).to(device) for p in params]
    for p, g in zip(params, saved):
        p.grad = g.clone()
    if variant == "tunebook":
        opt = tb_cls(params, **kwargs, max_grad_norm=MAX_NORM)
        step = opt.step
    else:
        flag = {"torch fused": dict(fused=True), "torch foreach": dict(foreach=True)}[variant]
        opt = torch_cls(params, **kwargs, **flag)

        def step():
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)
            opt.step()

    times = []
    for i in range(steps + 3):
        # clip_grad_norm_ scales the grads in place: restore them (untimed) so that every
        # step sees the same, non-denormal values.
        for p, g in zip(params, saved):
            p.grad.copy_(g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = timer(step)
        if i >= 3:
            times.append(t)
    if variant == "tunebook":
        assert opt.grad_norms().clipped == steps + 3
    del opt, params, saved
    return statistics.median(times), min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="8M params instead of 64M")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--optimizers", default="adam,sgd,rmsprop,nadam")
    parser.add_argument("--cases", default="large,small")
    parser.add_argument("--variants", default="tunebook,torch fused,torch foreach",
                        help="comma-separated subset of: tunebook, torch fused, torch foreach")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    timer = Timer(device)
    steps = args.steps or (10 if device.type == "cpu" else 100)

    bandwidth = copy_bandwidth(device, timer)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"load average {load:.2f}, copy bandwidth {bandwidth / 1e9:.2f} GB/s (read+write), "
          f"median of {steps} steps, max_grad_norm={MAX_NORM}")
    header = (f"{'optimizer':<8} {'case':<7} {'params':>7} {'variant':<14} {'ms':>9} "
              f"{'min ms':>8} {'vs tunebook':>11} {'GB/s':>7} {'floor %':>8}")
    print(header)
    print("-" * len(header))
    for name in args.optimizers.split(","):
        for case in args.cases.split(","):
            sizes = case_sizes(case, args.quick)
            n = sum(sizes)
            floor_bytes = FLOOR_BYTES[name] * n
            floor_seconds = floor_bytes / bandwidth
            wanted = args.variants.split(",")
            variants = [v for v in ("tunebook", "torch fused", "torch foreach") if v in wanted
                        and (v != "torch fused" or name in TORCH_FUSED)]
            base = None
            for variant in variants:
                seconds, fastest = bench_variant(variant, name, case, sizes, device, steps, timer)
                base = base or seconds
                print(f"{name:<8} {case:<7} {n / 1e6:>6.1f}M {variant:<14} "
                      f"{seconds * 1e3:>9.2f} {fastest * 1e3:>8.2f} {seconds / base:>10.2f}x "
                      f"{floor_bytes / seconds / 1e9:>7.2f} {100 * floor_seconds / seconds:>7.0f}%",
                      flush=True)


if __name__ == "__main__":
    main()
