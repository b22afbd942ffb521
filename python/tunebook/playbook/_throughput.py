"""The batch size: a throughput sweep over doubling batch sizes (playbook, "Choosing the
batch size" > "Determining the feasible batch sizes and estimating training throughput")."""

from __future__ import annotations

import gc
import math
import numbers
import resource
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from tunebook.analysis import AnalysisWarning
from tunebook.playbook import _record

_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
             "defaultcpuallocator", "failed to allocate")
_MAX_DOUBLINGS = 40


@_record.recordable
class ThroughputSweep(NamedTuple):
    """What a throughput sweep measured and what it recommends.

    Attributes:
        batch_sizes: the batch sizes that ran (and fit), in order.
        time_per_step: the median seconds per training step of each.
        throughput: examples per second, ``batch_size / time_per_step``.
        step_times: the seconds per step of each timed block, per batch size.
        peak_memory: peak memory of each, in bytes, NaN when unknown. CUDA: the peak
            memory allocated on the device while that size ran; CPU: the process's peak
            resident set while it ran (Linux; elsewhere the process's lifetime peak).
        gains: ``throughput[i] / throughput[i - 1]`` (2.0 is perfect scaling; NaN first).
        efficiency: ``gains / 2``: 1.0 when doubling the batch doubled the throughput.
        recommended: the batch size to use, or None when none fit.
        stop_reason: why the sweep stopped: ``"out_of_memory"``, ``"memory_budget"``,
            ``"max_batch_size"`` or ``"stopped_scaling"``.
        stopped_at: the batch size that ran out of memory, went over the budget, or did
            not raise the throughput enough; None when ``max_batch_size`` ended the sweep.
        failure: the out-of-memory error's message, or "".
        min_gain: the gain a doubling needed to count as still scaling.
        device: where it was timed ("cpu", "cuda:0").
        verdict: one paragraph for a person.
        warnings: ``throughput_bottleneck``, ``max_batch_size_reached``,
            ``noisy_timing``, ``nothing_fits``.
    """

    batch_sizes: np.ndarray
    time_per_step: np.ndarray
    throughput: np.ndarray
    step_times: tuple[np.ndarray, ...]
    peak_memory: np.ndarray
    gains: np.ndarray
    efficiency: np.ndarray
    recommended: int | None
    stop_reason: str
    stopped_at: int | None
    failure: str
    min_gain: float
    device: str
    verdict: str
    warnings: tuple[AnalysisWarning, ...]

    procedure = "throughput_sweep"

    def record(self, study: Any, key: str | None = None) -> str:
        """Stores this result with ``study`` for its report (see :func:`tunebook.playbook.record`)."""
        return _record.record(study, self, key)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that memory ran out: ``torch.OutOfMemoryError`` (CUDA),
    ``MemoryError``, or a ``RuntimeError`` of the CPU allocator."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OOM_TEXT)


class _Device:
    """Synchronisation and peak-memory readings for the device the step runs on."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.auto = device is None
        if device is None:
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device={device!r} is not a torch device: {error}") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device={str(device)!r} but CUDA is not available")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.cuda = device.type == "cuda"

    def follow(self) -> bool:
        """With no device given: switch to CUDA once the step has initialised it (a
        model moved to the GPU inside the step). True when it switched."""
        torch = self.torch
        if self.auto and not self.cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
            self.device, self.cuda = torch.device("cuda", torch.cuda.current_device()), True
            return True
        return False

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "cpu":
            try:  # Linux: "5" resets the process's peak resident set (VmHWM)
                with open("/proc/self/clear_refs", "w") as file:
                    file.write("5")
            except OSError:
                pass

    def peak(self) -> float:
        """Peak memory since :meth:`reset_peak`, in bytes (CPU: the peak resident set,
        VmHWM on Linux, else the process's lifetime peak)."""
        if self.cuda:
            return float(self.torch.cuda.max_memory_allocated(self.device))
        if self.device.type == "cpu":
            try:
                with open("/proc/self/status") as file:
                    for line in file:
                        if line.startswith("VmHWM:"):
                            return float(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                pass
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return float(rss if sys.platform == "darwin" else rss * 1024)
        return math.nan

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return int(value)


def throughput_sweep(
    step: Callable[[int], Any],
    *,
    start: int = 8,
    max_batch_size: int | None = None,
    memory_budget: float | None = None,
    warmup_steps: int = 2,
    timed_steps: int = 10,
    repeats: int = 5,
    confirm: int = 2,
    min_gain: float = 1.2,
    bottleneck_growth: float = 1.15,
    device: Any = None,
    study: Any = None,
) -> ThroughputSweep:
    r"""Time training steps at doubling batch sizes and pick the batch size.

    The playbook ("Choosing the batch size" > "Determining the feasible batch sizes and
    estimating training throughput"): run training at batch sizes increasing in powers
    of 2 until one exceeds the available memory, long enough per size for a reliable
    estimate of the training throughput (examples per second). While the accelerator
    is not saturated, doubling the batch size should (nearly) double the throughput,
    i.e. keep the time per step constant; if it does not, the pipeline has a
    bottleneck (input pipeline, synchronisation) worth fixing first. Use only batch
    sizes up to the largest one whose doubling still raised the throughput, even if
    the hardware fits more. Gradient accumulation simulates a larger batch without any
    throughput benefit, so it is no way around the limit.

    Batch sizes ``start, 2 start, 4 start, ...`` run until one of:

    * an out-of-memory error (``torch.OutOfMemoryError``, ``MemoryError`` or the CPU
      allocator's ``RuntimeError``): caught, its traceback dropped and memory freed
      (``gc.collect``, ``torch.cuda.empty_cache``) before returning;
    * ``max_batch_size`` (the next size would exceed it);
    * ``memory_budget``: the size's peak memory exceeded it (it is then not used);
    * a doubling that raised the throughput by less than ``min_gain`` (throughput has
      stopped scaling: larger sizes are not worth running). Before stopping, both sizes
      are timed ``confirm`` more times, alternately, and judged on all their blocks, so
      that a burst of load from another process does not end the sweep early.

    Each size runs ``warmup_steps`` untimed steps (allocation, autotuning, caches), then
    ``repeats`` blocks of ``timed_steps`` consecutive steps, each block timed as a whole
    (on CUDA the device is synchronised before and after it, so host and device overlap
    within a block as they do in training). The time per step is the median over the
    blocks of the block's time divided by ``timed_steps``: a sustained rate, robust to
    a block disturbed by another process.

    The recommendation is the largest batch size reached by doublings that each
    raised the throughput by at least ``min_gain``:
    :math:`\text{gain}_i = \text{throughput}(2b)/\text{throughput}(b) \ge 1.2` by
    default, a scaling efficiency (gain / 2) of at least 60%. Below that, each doubling
    buys little speed while a larger batch needs its hyperparameters re-tuned and,
    past the perfect-scaling regime, more examples to reach the same result.

    Args:
        step: ``step(batch_size)`` runs one full training step: forward, backward and
            the optimizer update, on a batch of that size.
        start: the first batch size (default 8).
        max_batch_size: the largest batch size to try (e.g. the training set's size).
        memory_budget: stop when a size's peak memory (see ``peak_memory``) exceeds
            this many bytes; on the CPU that counts everything the process holds.
        warmup_steps: untimed steps per size (default 2).
        timed_steps: steps per timed block (default 10).
        repeats: timed blocks per size (default 5).
        confirm: extra alternate timings of the last two sizes before the sweep stops
            for lack of scaling (default 2, so they outvote the first; 0 for none).
        min_gain: the throughput gain a doubling must give to count as scaling, in
            (1, 2] (default 1.2).
        bottleneck_growth: warn of a bottleneck when the time per step grew by more
            than this factor at every doubling (default 1.15).
        device: where ``step`` runs (default: the current CUDA device if CUDA is
            initialised, before the sweep or by the first warmup steps, else the CPU).
        study: a :class:`tunebook.Study` to record the result with, for its report.

    Returns:
        A :class:`ThroughputSweep`.

    Raises:
        ValueError: a bad argument (the message names it).
        Exception: whatever ``step`` raises other than running out of memory.

    Example:
        >>> sweep = throughput_sweep(lambda b: train_one_step(b), max_batch_size=4096)  # doctest: +SKIP
        >>> sweep.recommended, sweep.verdict  # doctest: +SKIP
    """
    if not callable(step):
        raise TypeError(f"step must be a callable step(batch_size), got {type(step).__name__}")
    start = _check_int("start", start, 1)
    if max_batch_size is not None:
        max_batch_size = _check_int("max_batch_size", max_batch_size, 1)
        if max_batch_size < start:
            raise ValueError(f"{max_batch_size=} must be >= {start=}")
    if memory_budget is not None and not (isinstance(memory_budget, numbers.Real) and memory_budget > 0):
        raise ValueError(f"{memory_budget=} must be a positive number of bytes or None")
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    timed_steps = _check_int("timed_steps", timed_steps, 1)
    repeats = _check_int("repeats", repeats, 1)
    confirm = _check_int("confirm", confirm, 0)
    if not (isinstance(min_gain, numbers.Real) and 1 < min_gain <= 2):
        raise ValueError(f"{min_gain=} must be in (1, 2]: a doubling that scales perfectly gains 2")
    if not (isinstance(bottleneck_growth, numbers.Real) and bottleneck_growth > 1):
        raise ValueError(f"{bottleneck_growth=} must be > 1")
    if study is not None:
        _record._check_study(study)
    dev = _Device(device)

    sizes: list[int] = []
    medians: list[float] = []
    all_times: list[np.ndarray] = []
    peaks: list[float] = []
    stop_reason, stopped_at, failure = "max_batch_size", None, ""
    batch_size = start
    for _ in range(_MAX_DOUBLINGS):
        if max_batch_size is not None and batch_size > max_batch_size:
            break
        measured = _measure(step, batch_size, dev, warmup_steps, timed_steps, repeats)
        if isinstance(measured, str):
            stop_reason, stopped_at, failure = "out_of_memory", batch_size, measured
            break
        times, peak = measured
        if memory_budget is not None and peak > memory_budget:
            stop_reason, stopped_at = "memory_budget", batch_size
            failure = f"peak memory {peak / 2**20:.1f} MiB over the budget of {memory_budget / 2**20:.1f} MiB"
            break
        sizes.append(batch_size)
        medians.append(statistics.median(times))
        all_times.append(np.asarray(times, dtype=np.float64))
        peaks.append(peak)
        if len(sizes) >= 2 and _gain(sizes, medians) < min_gain and confirm:
            # Before stopping, time both sizes again, alternately: a burst of load from
            # another process during one of them must not end the sweep.
            for _ in range(confirm):
                for k in (-2, -1):
                    again = _measure(step, sizes[k], dev, 1, timed_steps, repeats)
                    if isinstance(again, str):  # memory is tighter now; keep the first timing
                        continue
                    all_times[k] = np.concatenate([all_times[k], again[0]])
                    medians[k] = float(np.median(all_times[k]))
        if len(sizes) >= 2 and _gain(sizes, medians) < min_gain:
            stop_reason, stopped_at = "stopped_scaling", batch_size
            break
        batch_size *= 2
    result = _analyse(sizes, medians, all_times, peaks, stop_reason, stopped_at, failure, float(min_gain),
                      float(bottleneck_growth), str(dev.device), max_batch_size)
    if study is not None:
        result.record(study)
    return result


_CLOCK_TICK = time.get_clock_info("perf_counter").resolution


def _gain(sizes: list[int], medians: list[float]) -> float:
    return (sizes[-1] / medians[-1]) / (sizes[-2] / medians[-2])


def _measure(step: Callable[[int], Any], batch_size: int, dev: _Device, warmup: int, timed: int,
             repeats: int) -> tuple[list[float], float] | str:
    """Seconds per step of each timed block and the peak memory of one batch size, or
    the out-of-memory message."""
    message = ""
    try:
        dev.reset_peak()
        for _ in range(warmup):
            step(batch_size)
        if dev.follow():
            dev.reset_peak()
        dev.sync()
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            for _ in range(timed):
                step(batch_size)
            dev.sync()
            # A block faster than the clock can tell reads as one tick, not 0 (a 0 made the
            # throughput infinite and the gain a ZeroDivisionError).
            elapsed = max(time.perf_counter() - began, _CLOCK_TICK)
            times.append(elapsed / timed)
        return times, dev.peak()
    except Exception as error:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
        if not is_out_of_memory(error):
            raise
        # The traceback holds the frames of `step`, and with them its tensors: drop it
        # before freeing, or the memory stays allocated for the next size.
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        error.__traceback__ = None
        del error
    dev.free()
    return message or "out of memory"


def _analyse(sizes: list[int], medians: list[float], times: list[np.ndarray], peaks: list[float],
             stop_reason: str, stopped_at: int | None, failure: str, min_gain: float, growth: float,
             device: str, max_batch_size: int | None) -> ThroughputSweep:
    batch_sizes = np.asarray(sizes, dtype=np.int64)
    per_step = np.asarray(medians, dtype=np.float64)
    throughput = batch_sizes / per_step if sizes else np.zeros(0)
    gains = np.full(len(sizes), np.nan)
    if len(sizes) >= 2:
        gains[1:] = throughput[1:] / throughput[:-1]
    # The recommendation: the last size reached by doublings that each scaled.
    recommended = None
    if sizes:
        k = 0
        while k + 1 < len(sizes) and gains[k + 1] >= min_gain:
            k += 1
        recommended = int(sizes[k])
    warnings = []
    if recommended is None:
        warnings.append(AnalysisWarning(
            "nothing_fits",
            f"the first batch size {stopped_at} did not fit ({failure}); start from a smaller batch size.",
            "batch size"))
    growths = per_step[1:] / per_step[:-1] if len(sizes) >= 2 else np.zeros(0)
    if growths.size >= 2 and np.all(growths > growth):
        steps = ", ".join(f"{g:.2f}x" for g in growths)
        warnings.append(AnalysisWarning(
            "throughput_bottleneck",
            f"the time per step grew at every doubling ({steps}) instead of staying flat: throughput never "
            "doubled with the batch size, so the training pipeline has a bottleneck (input pipeline, "
            "host-device copies, synchronisation between workers). Diagnose and fix it before choosing the "
            "batch size.",
            "batch size"))
    if stop_reason == "max_batch_size" and len(sizes) >= 2 and gains[-1] >= min_gain:
        warnings.append(AnalysisWarning(
            "max_batch_size_reached",
            f"throughput was still scaling at max_batch_size={max_batch_size} (the last doubling gained "
            f"{gains[-1]:.2f}x): a larger batch size would likely train faster if memory allows.",
            "batch size"))
    if recommended is not None:
        spread = times[sizes.index(recommended)]
        q25, q75 = np.quantile(spread, [0.25, 0.75])
        if spread.size >= 4 and (q75 - q25) > 0.25 * np.median(spread):
            warnings.append(AnalysisWarning(
                "noisy_timing",
                f"the timed blocks at batch size {recommended} vary widely (interquartile range "
                f"{(q75 - q25) / np.median(spread):.0%} of the median): the machine is busy or the blocks "
                "are too short to time; raise timed_steps and repeats, or measure on a quiet machine.",
                "batch size"))
    verdict = _verdict(batch_sizes, throughput, gains, recommended, stop_reason, stopped_at, failure, min_gain)
    return ThroughputSweep(batch_sizes, per_step, np.asarray(throughput, dtype=np.float64), tuple(times),
                           np.asarray(peaks, dtype=np.float64), gains, gains / 2, recommended, stop_reason,
                           stopped_at, failure, min_gain, device, verdict, tuple(warnings))


def _verdict(sizes: np.ndarray, throughput: np.ndarray, gains: np.ndarray, recommended: int | None,
             stop_reason: str, stopped_at: int | None, failure: str, min_gain: float) -> str:
    if recommended is None:
        return f"No batch size fit: batch size {stopped_at} failed ({failure})."
    why = {
        "out_of_memory": f"batch size {stopped_at} ran out of memory",
        "memory_budget": f"batch size {stopped_at} went over the memory budget ({failure})",
        "max_batch_size": "the next doubling would pass max_batch_size",
        "stopped_scaling": (f"doubling to {stopped_at} raised the throughput only "
                            f"{gains[-1]:.2f}x (less than {min_gain:g}x)"),
    }[stop_reason]
    rate = throughput[list(sizes).index(recommended)]
    return (f"Use batch size {recommended} ({rate:,.0f} examples/s): the largest size reached by doublings "
            f"that each raised the throughput at least {min_gain:g}x; the sweep stopped because {why}.")


class _ThroughputPlotData(NamedTuple):
    """What the throughput plot draws (tested without matplotlib)."""

    x: np.ndarray  # batch sizes (plotted on a log2 axis)
    throughput: np.ndarray
    time_per_step_ms: np.ndarray
    ideal: np.ndarray  # perfect scaling from the first size: throughput doubling with the batch
    recommended: int | None
    stopped_at: int | None
    stop_label: str
    title: str


def _throughput_plot_data(sweep: ThroughputSweep) -> _ThroughputPlotData:
    x = np.asarray(sweep.batch_sizes, dtype=np.float64)
    ideal = sweep.throughput[0] * x / x[0] if x.size else np.zeros(0)
    labels = {"out_of_memory": "out of memory", "memory_budget": "over memory budget",
              "stopped_scaling": "stopped scaling", "max_batch_size": ""}
    title = (f"throughput sweep on {sweep.device}: use batch size {sweep.recommended}"
             if sweep.recommended is not None else f"throughput sweep on {sweep.device}: nothing fit")
    return _ThroughputPlotData(x, np.asarray(sweep.throughput), np.asarray(sweep.time_per_step) * 1e3, ideal,
                               sweep.recommended, sweep.stopped_at, labels.get(sweep.stop_reason, ""), title)
