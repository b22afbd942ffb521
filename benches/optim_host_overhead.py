"""Host time of tunebook's eager ``step()``: the Python around the fused ops, with the ops
replaced by no-ops, for two source trees run in alternating processes.

The host-bound extreme: 2000 params of 16 float32 elements, max_grad_norm=1.0, the cached
(eager) step path. Two grad patterns:
    retained   the same grad tensors every step (``zero_grad(set_to_none=False)``, or
               gradient accumulation)
    new        new grad tensors every step (the default ``zero_grad()``: torch sets them to
               None and backward allocates new ones); taken from two alternating pools, so
               the pool's allocation is not timed
Reported per optimizer and pattern: the 10th percentile and the median of ``--steps`` timed
steps, each tree's best round, then the median over rounds of the per-round p10/median.
Then, in the same processes and with the real ops, the whole step of tunebook's Adam and of
``torch.optim.Adam(foreach=True)`` (its default) on the same params and grads: at 16
elements per tensor both are host-bound, so their ratio is the ratio of host costs.

    python benches/optim_host_overhead.py [--trees OLD_TREE,NEW_TREE] [--rounds 4]

A tree is a checkout's root (its ``python/`` is imported); the default is this checkout
alone. To compare with an older commit: ``git worktree add --detach /tmp/old <commit>``,
copy ``python/tunebook/_rust.abi3.so`` into it, then ``--trees /tmp/old,.``. Both trees'
compiled kernels are built (or found in the cache) before timing, since the backend is
chosen with them; the ops themselves never run while timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

OPTIMIZERS = ("adam", "sgd", "rmsprop", "nadam")
PATTERNS = ("retained", "new")


def _noop(*args, **kwargs):
    return None


def worker(tree: str, optimizers: list[str], steps: int, n: int, size: int) -> dict:
    """One process: times every optimizer and grad pattern of ``tree`` (host time only)."""
    sys.path.insert(0, str(Path(tree).resolve() / "python"))
    import torch

    import tunebook.optim as tbo
    import tunebook.optim._functional as functional

    torch.set_num_threads(1)
    classes = {
        "adam": (tbo.Adam, dict(lr=1e-3)),
        "sgd": (tbo.SGD, dict(lr=1e-2, momentum=0.9)),
        "rmsprop": (tbo.RMSprop, dict(lr=1e-3)),
        "nadam": (tbo.NAdam, dict(lr=1e-3)),
    }
    real_ops_for = functional.ops_for
    noop_ops = SimpleNamespace(**{
        name: _noop for name in (
            "grad_sq_norm", "step_control_", "sgd_step_", "adam_step_", "rmsprop_step_",
            "nadam_step_",
        )
    })
    results = {}
    for name in optimizers:
        cls, kwargs = classes[name]
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(size, generator=gen)) for _ in range(n)]
        pools = [[torch.randn(size, generator=gen) for _ in params] for _ in range(2)]
        for p, g in zip(params, pools[0]):
            p.grad = g
        opt = cls(params, max_grad_norm=1.0, **kwargs)
        opt.step()  # real ops: state and plans built, kernels loaded
        functional.ops_for = lambda backend: noop_ops
        if hasattr(opt, "_ops"):  # trees before issue 9 cache the ops on the instance
            opt._ops = noop_ops
        try:
            for pattern in PATTERNS:
                times = []
                for i in range(steps + 10):
                    if pattern == "new":
                        for p, g in zip(params, pools[i % 2]):
                            p.grad = g
                    t0 = time.perf_counter()
                    opt.step()
                    elapsed = time.perf_counter() - t0
                    if i >= 10:
                        times.append(elapsed)
                times.sort()
                results[f"{name}/{pattern}"] = (
                    times[len(times) // 10] * 1e3, statistics.median(times) * 1e3,
                )
        finally:
            functional.ops_for = real_ops_for
            if hasattr(opt, "_ops"):
                opt._ops = functional.ops_for(opt.backend)
    # The whole step with the real ops, tunebook's Adam against torch's default (foreach).
    if "adam" in optimizers:
        gen = torch.Generator().manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(size, generator=gen)) for _ in range(n)]
        pools = [[torch.randn(size, generator=gen) for _ in params] for _ in range(2)]
        runs = {
            "tunebook": tbo.Adam(params, lr=1e-3, max_grad_norm=1.0),
            "torch_foreach": torch.optim.Adam(params, lr=1e-3, foreach=True),
        }
        for pattern in PATTERNS:
            times = {name: [] for name in runs}
            for i in range(steps + 10):
                for name, opt in runs.items():  # interleaved: the same load for both
                    if pattern == "new" or i == 0:
                        for p, g in zip(params, pools[i % 2]):
                            p.grad = g
                    t0 = time.perf_counter()
                    opt.step()
                    if i >= 10:
                        times[name].append(time.perf_counter() - t0)
            for name, values in times.items():
                values.sort()
                results[f"{name}_adam_real/{pattern}"] = (
                    values[len(values) // 10] * 1e3, statistics.median(values) * 1e3,
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=str(Path(__file__).resolve().parents[1]),
                        help="comma-separated checkout roots, run alternately")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per pattern")
    parser.add_argument("--optimizers", default="adam,sgd")
    parser.add_argument("--tensors", type=int, default=2000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    optimizers = args.optimizers.split(",")
    if args.worker:
        result = worker(args.worker, optimizers, args.steps, args.tensors, args.size)
        print(json.dumps(result))
        return
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    rounds: dict[str, list[dict]] = {tree: [] for tree in trees}
    env = {**os.environ, "PYTHONPATH": ""}
    for _ in range(args.rounds):
        for tree in trees:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", tree, "--steps", str(args.steps),
                 "--optimizers", args.optimizers, "--tensors", str(args.tensors),
                 "--size", str(args.size)],
                check=True, capture_output=True, text=True, env=env,
            ).stdout
            rounds[tree].append(json.loads(out.strip().splitlines()[-1]))
    print(f"host time of step(), ops replaced by no-ops: {args.tensors} params x {args.size} "
          f"float32, max_grad_norm=1.0, {args.steps} steps x {args.rounds} alternating rounds, "
          f"load average {os.getloadavg()[0]:.1f}; ms")
    header = f"{'optimizer/grads':18s}" + "".join(
        f"{Path(t).name[:14]:>16s} p10{'':>5s}median" for t in trees
    )
    print(header)
    print(f"{'':18s}" + "".join(f"{'best':>10s} {'med':>5s} {'best':>7s} {'med':>5s}"
                                  for _ in trees))
    for key in rounds[trees[0]][0]:
        if key.startswith("torch_foreach"):
            continue
        line = f"{key:18s}"
        for tree in trees:
            p10s = [r[key][0] for r in rounds[tree]]
            meds = [r[key][1] for r in rounds[tree]]
            line += (f"{min(p10s):10.3f} {statistics.median(p10s):5.2f} "
                     f"{min(meds):7.3f} {statistics.median(meds):5.2f}")
        print(line)
    print("\nthe whole step with the real ops, Adam, same processes: median ms "
          "(tunebook / torch foreach = ratio)")
    for pattern in PATTERNS:
        line = f"{pattern:18s}"
        for tree in trees:
            ours = statistics.median(r[f"tunebook_adam_real/{pattern}"][1] for r in rounds[tree])
            theirs = statistics.median(
                r[f"torch_foreach_adam_real/{pattern}"][1] for r in rounds[tree])
            line += f"{ours:9.3f} / {theirs:7.3f} = {ours / theirs:4.2f}  "
        print(line)


if __name__ == "__main__":
    main()
