"""Runs many distributed checks in one group of CPU processes (gloo, torch.multiprocessing)
and reports each check's result on every rank, plus what the checks share: the models, the
data, and the step-by-step comparison with torch.

Starting a process costs seconds (importing torch), so a test module starts one group per
world size (:func:`run_group`, from a module-scoped fixture) and runs every check in it; each
check is one pytest test reading its result. The ranks are forked from a parent that has
already imported everything (``TUNEBOOK_DIST_START=spawn`` starts fresh interpreters
instead); each rank runs torch on one thread. The group uses a FileStore in a temporary
directory (no port to collide with other test runs) and a collective timeout, so a check
that leaves the ranks out of step fails instead of hanging; the parent kills a group that
overruns its deadline.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=90)


# --------------------------------------------------------------------------- the group
def run_group(module: str, names: list[str], world_size: int, deadline: float = 400.0
              ) -> dict[str, str | None]:
    """Runs ``module.check_<name>(directory)`` for each name, in order, on ``world_size``
    spawned ranks; returns ``{name: None if it passed on every rank, else the errors}``."""
    method = os.environ.get("TUNEBOOK_DIST_START", "fork")
    if method == "fork":
        _prepare_for_fork(module)
    with tempfile.TemporaryDirectory(prefix="tunebook-dist-") as directory:
        context = mp.start_processes(
            _worker, args=(world_size, module, names, directory), nprocs=world_size,
            join=False, start_method=method,
        )
        end = time.monotonic() + deadline
        crash = None
        try:
            while not context.join(timeout=max(1.0, end - time.monotonic())):
                if time.monotonic() >= end:
                    crash = f"the group overran its {deadline:.0f} s deadline and was killed"
                    break
        except Exception as error:  # a rank died (ProcessExitedException / RaisedException)
            crash = f"a rank failed outside the checks: {error}"
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        durations = Path(directory, "durations0.json")
        if os.environ.get("TUNEBOOK_DIST_DURATIONS") and durations.exists():
            print({k: round(v, 2) for k, v in json.loads(durations.read_text()).items()})
        results: dict[str, list[str]] = {name: [] for name in names}
        for rank in range(world_size):
            path = Path(directory, f"rank{rank}.json")
            done = json.loads(path.read_text()) if path.exists() else {}
            for name in names:
                if name not in done:
                    results[name].append(f"rank {rank}: not run ({crash or 'no result'})")
                elif done[name] is not None:
                    results[name].append(f"rank {rank}:\n{done[name]}")
    return {name: "\n".join(errors) or None for name, errors in results.items()}


def _prepare_for_fork(module: str) -> None:
    """Imports and loads, once in the parent, what every rank needs (torch.distributed's
    modules, the checks, tunebook's compiled kernels), so that forked ranks start in a
    fraction of a second instead of importing torch each (seconds per rank on 2 cores)."""
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.distributed.tensor.parallel  # noqa: F401
    import warnings

    from tunebook.optim._build import library_backends

    with warnings.catch_warnings():  # torch.distributed.optim's jit.script deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.distributed.optim  # noqa: F401
    importlib.import_module(module)
    library_backends()


def _worker(rank: int, world_size: int, module: str, names: list[str], directory: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/store", rank=rank, world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    checks = importlib.import_module(module)
    results: dict[str, str | None] = {}
    durations: dict[str, float] = {}
    out = Path(directory, f"rank{rank}.json")
    for name in names:
        work = Path(directory, name)
        if rank == 0:
            work.mkdir(exist_ok=True)
        dist.barrier()
        start = time.perf_counter()
        try:
            getattr(checks, f"check_{name}")(work)
            results[name] = None
        except BaseException:  # noqa: BLE001 - reported to the parent
            results[name] = traceback.format_exc()
        durations[name] = time.perf_counter() - start
        out.write_text(json.dumps(results))
        Path(directory, f"durations{rank}.json").write_text(json.dumps(durations))
        # Every rank finishes a check before any starts the next one.
        dist.barrier()
    dist.destroy_process_group()


def report(results: dict[str, str | None], name: str) -> None:
    """Fails the calling test with the ranks' errors of check ``name``."""
    error = results[name]
    if error is not None:
        raise AssertionError(f"distributed check {name!r} failed:\n{error}")


# --------------------------------------------------------------------------- helpers
def rank() -> int:
    return dist.get_rank()


def gather(value: Any, group: Any = None) -> list[Any]:
    """``value`` from every rank of ``group`` (a list, in rank order)."""
    values = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    return values


def assert_same_on_all_ranks(value: Any, what: str, group: Any = None) -> None:
    values = gather(value, group)
    assert all(v == values[0] for v in values), f"{what} differs between ranks: {values}"


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: ``full_tensor()`` of a DTensor, the tensor itself otherwise."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach()


def batch(step: int, rows: int, shape: tuple[int, ...], out: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same data on every rank for ``step``: inputs ``(rows, *shape)``, targets
    ``(rows, ..., out)``."""
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(rows, *shape, generator=generator)
    y = torch.randn(rows, *shape[:-1], out, generator=generator)
    return x, y


@contextlib.contextmanager
def counting_collectives(refuse_host_reads: bool = True):
    """Counts the collectives issued inside the block (every c10d entry point the step could
    use), and fails on a host read of a tensor (``item``, ``tolist``, ``bool``, ...)."""
    counts: dict[str, int] = {}
    names = [
        "all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
        "reduce_scatter_tensor", "broadcast", "all_to_all", "all_to_all_single", "barrier",
        "all_gather_object", "broadcast_object_list", "reduce", "gather", "scatter",
    ]
    saved = {}
    for name in names:
        original = getattr(dist, name)
        saved[name] = original

        def counted(*args, _name=name, _original=original, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)
    syncs = ["item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"]
    saved_syncs = {name: getattr(torch.Tensor, name) for name in syncs}

    def refuse(self, *args, **kwargs):
        raise AssertionError("the step read a tensor on the host (a host sync)")

    try:
        for name in syncs if refuse_host_reads else ():
            setattr(torch.Tensor, name, refuse)
        yield counts
    finally:
        for name, original in saved_syncs.items():
            setattr(torch.Tensor, name, original)
        for name, original in saved.items():
            setattr(dist, name, original)


# --------------------------------------------------------------------------- comparison
# tunebook class name -> (constructor kwargs, the torch class's kwargs); both get lr.
CLASSES: dict[str, dict[str, Any]] = {
    "SGD": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "SGD_plain": {},
    "Adam": {"weight_decay": 0.01},
    "AdamW": {"weight_decay": 0.1, "amsgrad": True},
    "RMSprop": {"momentum": 0.5, "centered": True},
    "NAdam": {"weight_decay": 0.01},
}
LR = {"SGD": 0.05, "SGD_plain": 0.05, "Adam": 0.01, "AdamW": 0.01, "RMSprop": 0.005, "NAdam": 0.01}


def make_optimizers(kind: str, params, reference_params, max_grad_norm: float | None = 0.5,
                    **extra):
    """``(tunebook optimizer, torch.optim optimizer with foreach=False)`` of class ``kind``."""
    import tunebook

    cls_name = kind.split("_")[0]
    kwargs = dict(CLASSES[kind], lr=LR[kind])
    ours = getattr(tunebook, cls_name)(params, max_grad_norm=max_grad_norm, **kwargs, **extra)
    theirs = getattr(torch.optim, cls_name)(reference_params, foreach=False, **kwargs)
    return ours, theirs


def compare_training(
    model: torch.nn.Module, reference: torch.nn.Module, optimizer, reference_optimizer, *,
    steps: int, rows: int, shape: tuple[int, ...], out: int,
    local_rows: Callable[[torch.Tensor], torch.Tensor], max_grad_norm: float | None = 0.5,
    backward: Callable | None = None,
) -> list[float]:
    """Trains ``model`` with ``optimizer`` and ``reference`` (a plain copy) with
    ``clip_grad_norm_`` + ``reference_optimizer`` on the same data, step by step, and checks
    on this rank that the logged norm equals torch's and the full params agree; returns
    torch's norms."""
    norms = []
    start = optimizer.grad_norms()
    for step in range(steps):
        x, y = batch(step, rows, shape, out)
        if backward is None:
            loss = torch.nn.functional.mse_loss(model(local_rows(x)), local_rows(y))
            loss.backward()
        else:
            backward(model, x, y)
        optimizer.step()
        optimizer.zero_grad()
        reference_loss = torch.nn.functional.mse_loss(reference(x), y)
        reference_loss.backward()
        if max_grad_norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()])
        else:
            norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_grad_norm)
        reference_optimizer.step()
        reference_optimizer.zero_grad()
        norms.append(float(norm))
    log = optimizer.grad_norms()
    assert log.steps == start.steps + steps and log.skipped == start.skipped, (start, log)
    torch.testing.assert_close(log.norms[-steps:], torch.tensor(norms), rtol=2e-6, atol=0)
    if max_grad_norm is not None:
        clipped = sum(n > max_grad_norm for n in norms)
        assert log.clipped == start.clipped + clipped, (start, log, norms)
    assert_params_close(model, reference)
    return norms


def assert_params_close(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(full(p), q.detach(), rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def assert_state_sharded_like_params(optimizer) -> None:
    """Every per-element state tensor is a DTensor with its param's mesh and placements."""
    from torch.distributed.tensor import DTensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state[p].items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    assert isinstance(value, DTensor), (key, type(value))
                    assert value.device_mesh == p.device_mesh, key
                    assert value.placements == p.placements, (key, value.placements, p.placements)
                    assert value._local_tensor.shape == p._local_tensor.shape, key
