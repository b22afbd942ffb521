"""CheckpointKeeper: keep the N best checkpoints of a run, plus the latest one.

Directory layout::

    index.json            the committed record (the only source of truth)
    ckpt-000000001200.pt  one file per kept checkpoint (the top-k and the latest)
    .lock                 advisory lock: one keeper per directory at a time

A save is committed when the new ``index.json`` has been renamed into place. Every
file the index names was made durable before it; files it no longer names are
deleted only after it. Reopening a directory therefore restores exactly the record of
the committed saves, and deletes what an interrupted save or eviction left behind:
``ckpt-*.pt`` files the index does not name and ``.tunebook-tmp-*`` files. Other
files are never touched, and a directory holding checkpoint files but no index (or
an index of another run, when ``run`` is given) is refused rather than cleaned; so is a
corrupt index, with a message naming it. A directory that cannot be written opens
read-only: no lock, no clean-up, ``load_best`` works and ``save`` raises.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebook import _rust
from tunebook._checks import STEP_LIMIT, as_integer, as_step
from tunebook.checkpoints._atomic import TMP_PREFIX, atomic_write, atomic_write_json, fsync_directory
from tunebook.checkpoints._state import snapshot, to_saveable

INDEX_NAME = "index.json"
LOCK_NAME = ".lock"
INDEX_FORMAT = "tunebook.checkpoints"
INDEX_VERSION = 1
# Every name checkpoint_name() writes: 12 digits, zero-padded, up to step 10**12 - 1, then
# the plain number (13 to 19 digits: steps are below 2**63).
_CHECKPOINT_RE = re.compile(r"^ckpt-(\d{12}|[1-9]\d{12,18})\.pt$")

#: Fault-injection hook for tests: called with the name of each phase of a save
#: ("start", "written", "renamed", "committed", "evicting", "done").
_fault: Callable[[str], None] | None = None


def _phase(name: str) -> None:
    if _fault is not None:
        _fault(name)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:012d}.pt"


class CorruptIndexError(ValueError):
    """A directory's ``index.json`` cannot be read as a keeper's record."""


def _corrupt(path: Path, problem: str) -> CorruptIndexError:
    return CorruptIndexError(
        f"{path} is corrupt: {problem}. Nothing was deleted. Restore {path.name} from a backup, or move "
        f"{path.parent} aside and start the run in a new directory (its checkpoint files still load "
        "with torch.load)."
    )


def _check_entry(path: Path, where: str, item: Any, metric: str) -> None:
    if not isinstance(item, dict):
        raise _corrupt(path, f"{where} is a {type(item).__name__}, not an object")
    for key in ("step", "file", "metrics"):
        if key not in item:
            raise _corrupt(path, f"{where} has no {key!r}")
    step = item["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < STEP_LIMIT:
        raise _corrupt(path, f"{where} has step {step!r}, not an integer in [0, 2**63)")
    if item["file"] != checkpoint_name(step):
        raise _corrupt(path, f"{where} names the file {item['file']!r}; step {step} is {checkpoint_name(step)!r}")
    metrics = item["metrics"]
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise _corrupt(path, f"{where} has metrics {metrics!r}, not an object of numbers")
    if metric not in metrics:
        raise _corrupt(path, f"{where} lacks the ranking metric {metric!r}")


def read_index(path: Path) -> dict[str, Any]:
    """A keeper's ``index.json``, checked entry by entry.

    Raises:
        CorruptIndexError: naming the file, what is wrong, and what can be done.
    """
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise _corrupt(path, f"it is not readable JSON ({error})") from error
    if not isinstance(record, dict):
        raise _corrupt(path, f"it holds a JSON {type(record).__name__}, not the keeper's record (an object)")
    if record.get("format") != INDEX_FORMAT:
        raise CorruptIndexError(f"{path} is not a tunebook checkpoint index; nothing was deleted")
    version = record.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _corrupt(path, f"its version is {version!r}, not an integer")
    if version > INDEX_VERSION:
        return record  # the caller explains that it is newer
    for key, allowed in (("run", None), ("metric", None), ("mode", ("min", "max")), ("tie", ("earlier", "later"))):
        value = record.get(key)
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise _corrupt(path, f"its {key!r} is {value!r}" + (f", not one of {allowed}" if allowed else ""))
    checkpoints = record.get("checkpoints")
    if not isinstance(checkpoints, list):
        raise _corrupt(path, f"its 'checkpoints' is {type(checkpoints).__name__}, not a list")
    for i, item in enumerate(checkpoints):
        _check_entry(path, f"checkpoints[{i}]", item, record["metric"])
    steps = [item["step"] for item in checkpoints]
    if len(set(steps)) != len(steps):
        raise _corrupt(path, "a step appears twice in 'checkpoints'")
    if record.get("latest") is not None:
        _check_entry(path, "latest", record["latest"], record["metric"])
    return record


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint.

    Attributes:
        step: the training step it was saved at.
        path: its file.
        metrics: every metric recorded with it (the ranking metric and any other, such
            as a test-set metric, which stays with its checkpoint).
        value: the ranking metric's value.
    """

    step: int
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    value: float = math.nan


@dataclass(frozen=True)
class SaveResult:
    """What a save did, once committed.

    Attributes:
        step: the saved step.
        admitted: whether it entered the top-k.
        evicted: steps that left the top-k (their files are deleted unless latest).
        deleted: checkpoint files deleted after the commit.
    """

    step: int
    admitted: bool
    evicted: tuple[int, ...]
    deleted: tuple[Path, ...]


def _metrics(metrics: Mapping[str, Any], metric: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name to number, got {type(metrics).__name__}")
    out = {}
    for name, value in metrics.items():
        try:
            if hasattr(value, "item"):
                value = value.item()
            out[str(name)] = float(value)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise ValueError(f"metric {name!r} must be a number, got {value!r}") from None
    if metric not in out:
        raise ValueError(f"metrics must contain the ranking metric {metric!r}, got {sorted(out)}")
    return out


class CheckpointKeeper:
    """Keeps the ``keep`` best checkpoints of a run by one metric, and the latest one.

    Ranking (done by the Rust core, ``tunebook._rust.TopK``): a save enters the top-k
    when its metric beats the worst kept value; NaN and ±inf never enter (the save is
    still recorded as the latest, its metrics stored and reported); on a tie the
    earlier step is kept (``tie="later"`` keeps the later one). The latest checkpoint
    is kept separately, whatever its rank, for resuming after preemption.

    Args:
        directory: where checkpoints go; created if missing.
        keep: how many best checkpoints to keep (>= 1).
        metric: the metric name to rank by; every save must report it.
        mode: "min" (e.g. a loss) or "max" (e.g. an accuracy).
        tie: "earlier" or "later": which step wins a tie.
        run: an identifier stored in the index. When given, reopening a directory of
            another run raises instead of adopting (and cleaning) it. None adopts the
            directory's record (resume) or, for a new directory, picks a random id.
        keep_latest: also keep the latest checkpoint. With False, a save that does not
            enter the top-k is not written at all.
        async_save: save in a background thread: ``save`` snapshots the state (CPU
            copies of the tensors) and returns a ``Future[SaveResult]``; the commit
            order and crash guarantees are the same. ``flush()`` waits.
        max_pending: background saves allowed in flight before ``save`` blocks.
        fsync: make each save durable (disable only for throw-away runs).
        read_only: True opens an existing directory to read only: no lock, no clean-up,
            no writes, and ``save`` raises. None (the default) does that when the
            directory holds an index but cannot be written; False always opens it to write.

    Reopening an existing directory restores its committed record. ``metric``, ``mode``
    and ``tie`` must match the record (ValueError otherwise: a record ranked by another
    rule cannot be re-ranked exactly, since evicted saves are gone). A different
    ``keep`` is allowed: a smaller one evicts the worst at once, a larger one keeps
    everything and admits more from then on.

    Example:
        >>> keeper = CheckpointKeeper("runs/a", keep=3, metric="valid_loss")
        >>> keeper.save(step, {"model": model, "optimizer": opt}, {"valid_loss": 0.31})
        >>> state = keeper.load_best()
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        keep: int = 3,
        metric: str = "valid_loss",
        mode: str = "min",
        *,
        tie: str = "earlier",
        run: str | None = None,
        keep_latest: bool = True,
        async_save: bool = False,
        max_pending: int = 2,
        fsync: bool = True,
        read_only: bool | None = None,
    ) -> None:
        keep = as_integer("keep", keep)
        if keep < 1:
            raise ValueError(f"{keep=} must be an integer >= 1")
        if not (isinstance(mode, str) and mode in ("min", "max")):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not (isinstance(tie, str) and tie in ("earlier", "later")):
            raise ValueError(f"tie must be 'earlier' or 'later', got {tie!r}")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric must be a non-empty string, got {metric!r}")
        if as_integer("max_pending", max_pending) < 1:
            raise ValueError(f"{max_pending=} must be an integer >= 1")
        if read_only is not None and not isinstance(read_only, bool):
            raise ValueError(f"read_only must be None (decide from write access), True or False, got {read_only!r}")
        # Until the directory is locked and read, this keeper holds nothing to release.
        self._closed = True
        self._lock_file: Any = None
        self.directory = Path(directory)
        self.keep, self.metric, self.mode, self.tie = keep, metric, mode, tie
        self.keep_latest, self.async_save, self.fsync = keep_latest, async_save, fsync
        self._state_lock = threading.RLock()
        self._commit_lock = threading.Lock()  # one commit at a time, whichever thread saves
        self._entries: dict[int, CheckpointInfo] = {}
        self._latest: CheckpointInfo | None = None
        self._pending_steps: set[int] = set()
        self._error: BaseException | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(max_pending)
        self.read_only = bool(read_only)
        self._read_only_reason = "it was opened with read_only=True"
        if not self.read_only:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._lock_file = open(self.directory / LOCK_NAME, "a+b")  # noqa: SIM115 (held open)
            except OSError as error:
                # Reading needs no write access: a run directory that cannot be written
                # (another user's, a read-only mount) still opens to load its checkpoints.
                if read_only is False or not (self.directory / INDEX_NAME).is_file():
                    raise OSError(
                        error.errno, f"cannot open the checkpoint directory for writing: {error.strerror}",
                        str(self.directory),
                    ) from error
                self.read_only = True
                self._read_only_reason = f"{self.directory} is not writable ({error.strerror})"
        if not self.read_only:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                self._lock_file = None
                raise RuntimeError(
                    f"{self.directory} is in use by another CheckpointKeeper (its {LOCK_NAME} is locked); "
                    "use one keeper per directory"
                ) from None
        self._closed = False
        try:
            self._open(run)
        except BaseException:
            self._closed = True
            self._release_lock()
            raise

    # ----------------------------------------------------------------- opening
    def _open(self, run: str | None) -> None:
        index_path = self.directory / INDEX_NAME
        if self.read_only and not index_path.is_file():
            raise FileNotFoundError(
                f"{index_path} does not exist: a read-only keeper opens a directory a keeper has written"
            )
        if not index_path.exists():
            foreign = sorted(p.name for p in self.directory.iterdir() if _CHECKPOINT_RE.match(p.name))
            if foreign:
                raise ValueError(
                    f"{self.directory} holds checkpoint files ({foreign[0]}, ...) but no {INDEX_NAME}: "
                    "it was not written by a CheckpointKeeper (or its index was removed); "
                    "nothing was deleted. Use an empty directory."
                )
            self.run = run if run is not None else uuid.uuid4().hex
            self._topk = _rust.TopK(self.keep, self.mode, self.tie)
            self._write_index()
            return
        record = read_index(index_path)
        if record["version"] > INDEX_VERSION:
            raise ValueError(
                f"{index_path} has index version {record.get('version')}, newer than this tunebook "
                f"understands ({INDEX_VERSION}); upgrade tunebook"
            )
        if run is not None and record["run"] != run:
            raise ValueError(
                f"{self.directory} belongs to run {record['run']!r}, not {run!r}; nothing was deleted. "
                "Pass run=None to resume it or use another directory."
            )
        for name in ("metric", "mode", "tie"):
            if record[name] != getattr(self, name):
                raise ValueError(
                    f"{self.directory} ranks checkpoints by {name}={record[name]!r}, but {name}="
                    f"{getattr(self, name)!r} was given; its evicted checkpoints are gone, so it cannot be "
                    f"re-ranked. Pass {name}={record[name]!r} or use another directory."
                )
        self.run = record["run"]
        self._topk = _rust.TopK(max(self.keep, len(record["checkpoints"])), self.mode, self.tie)
        for item in record["checkpoints"]:
            info = self._info(item)
            self._entries[info.step] = info
            self._topk.offer(info.step, info.value)
        if record.get("latest") is not None:
            self._latest = self._info(record["latest"])
        evicted = self._topk.resize(self.keep)
        for step in evicted:
            del self._entries[step]
        if self.read_only:
            self._check_referenced()
            return
        if evicted:
            self._write_index()
        self._remove_leftovers()

    def _info(self, item: Mapping[str, Any]) -> CheckpointInfo:
        metrics = {k: float(v) for k, v in item["metrics"].items()}
        return CheckpointInfo(
            step=int(item["step"]),
            path=self.directory / item["file"],
            metrics=metrics,
            value=metrics[self.metric],
        )

    def _referenced(self) -> set[str]:
        names = {info.path.name for info in self._entries.values()}
        if self._latest is not None:
            names.add(self._latest.path.name)
        return names

    def _remove_leftovers(self) -> None:
        keep = self._referenced()
        removed = False
        for path in self.directory.iterdir():
            if path.name.startswith(TMP_PREFIX) or (_CHECKPOINT_RE.match(path.name) and path.name not in keep):
                path.unlink(missing_ok=True)
                removed = True
        self._check_referenced()
        if removed and self.fsync:
            fsync_directory(self.directory)

    def _check_referenced(self) -> None:
        missing = [name for name in self._referenced() if not (self.directory / name).exists()]
        if missing:
            raise RuntimeError(
                f"{self.directory}/{INDEX_NAME} names checkpoint files that are missing: {sorted(missing)}"
            )

    def _write_index(self) -> None:
        def entry(info: CheckpointInfo) -> dict[str, Any]:
            return {"step": info.step, "file": info.path.name, "metrics": info.metrics}

        ranked = [self._entries[step] for step, _ in self._topk.entries()]
        document = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "run": self.run,
            "metric": self.metric,
            "mode": self.mode,
            "tie": self.tie,
            "keep": self.keep,
            "checkpoints": [entry(info) for info in ranked],
            "latest": entry(self._latest) if self._latest is not None else None,
        }
        atomic_write_json(self.directory / INDEX_NAME, document, fsync=self.fsync)

    # ------------------------------------------------------------------ saving
    def save(self, step: int, state: Any, metrics: Mapping[str, Any]) -> SaveResult | Future[SaveResult]:
        """Saves ``state`` for ``step`` with its ``metrics``, atomically.

        Args:
            step: the training step, an integer in [0, 2**63) (int, NumPy or torch) not saved before.
            state: anything ``torch.save`` takes; objects with a ``state_dict()``
                (modules, optimizers, schedulers) are replaced by their state dict.
            metrics: numbers by name; must contain the ranking metric. All are stored
                in the index with the checkpoint.

        Returns:
            A :class:`SaveResult` once committed, or with ``async_save`` a
            ``Future[SaveResult]`` (errors are also re-raised by the next ``save``,
            ``flush`` or ``close``).

        Raises:
            ValueError: a bad step, a step already saved, or metrics without the
                ranking metric.
        """
        self._check_usable()
        if self.read_only:
            raise RuntimeError(f"cannot save to {self.directory}: this keeper is read-only ({self._read_only_reason})")
        step = as_step(step)
        values = _metrics(metrics, self.metric)
        with self._state_lock:
            if step in self._entries or step in self._pending_steps or (
                self._latest is not None and self._latest.step == step
            ):
                raise ValueError(f"step {step} was already saved in {self.directory}; steps must be unique")
            self._pending_steps.add(step)
        try:
            payload = to_saveable(state)
            if not self.async_save:
                return self._commit(step, payload, values)
            payload = snapshot(payload)
            self._slots.acquire()
        except BaseException:
            with self._state_lock:
                self._pending_steps.discard(step)
            raise
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunebook-checkpoint")
        future = self._executor.submit(self._commit, step, payload, values)
        future.add_done_callback(self._on_done)
        return future

    def _on_done(self, future: Future[SaveResult]) -> None:
        self._slots.release()
        error = future.exception()
        if error is not None and self._error is None:
            self._error = error

    def _commit(self, step: int, payload: Any, metrics: dict[str, float]) -> SaveResult:
        import torch

        with self._commit_lock:
            return self._commit_locked(step, payload, metrics, torch)

    def _commit_locked(self, step: int, payload: Any, metrics: dict[str, float], torch: Any) -> SaveResult:
        try:
            _phase("start")
            value = metrics[self.metric]
            admitted, evicted = self._topk.preview(step, value)
            info = CheckpointInfo(step, self.directory / checkpoint_name(step), metrics, value)
            write = self.keep_latest or admitted
            if write:
                atomic_write(
                    info.path,
                    lambda file: torch.save(payload, file),
                    fsync=self.fsync,
                    before_rename=lambda: _phase("written"),
                )
                _phase("renamed")
            with self._state_lock:
                previous_latest = self._latest
                old_entries = dict(self._entries)
                if admitted:
                    self._entries[step] = info
                    for gone in evicted:
                        del self._entries[gone]
                    self._topk.offer(step, value)
                if self.keep_latest:
                    self._latest = info
                try:
                    self._write_index()
                except BaseException:
                    # Not committed: restore the in-memory record to the committed one.
                    self._entries, self._latest = old_entries, previous_latest
                    self._topk = _rust.TopK(self.keep, self.mode, self.tie)
                    for entry in old_entries.values():
                        self._topk.offer(entry.step, entry.value)
                    if write:
                        info.path.unlink(missing_ok=True)
                    raise
                _phase("committed")
                referenced = self._referenced()
                doomed = [old_entries[s].path for s in evicted]
                if previous_latest is not None:
                    doomed.append(previous_latest.path)
                deleted = []
                for path in dict.fromkeys(doomed):
                    if path.name not in referenced:
                        _phase("evicting")
                        path.unlink(missing_ok=True)
                        deleted.append(path)
            _phase("done")
            return SaveResult(step, bool(admitted), tuple(evicted), tuple(deleted))
        finally:
            with self._state_lock:
                self._pending_steps.discard(step)

    def flush(self) -> None:
        """Waits for every background save; re-raises the first error one hit."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()
        self._raise_error()

    def close(self) -> None:
        """Flushes, stops the background thread and releases the directory."""
        if self._closed:
            return
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._raise_error()
        finally:
            self._closed = True
            self._release_lock()

    def _release_lock(self) -> None:
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is None:
            return
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
        finally:
            lock_file.close()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"a background checkpoint save failed: {error!r}") from error

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("this CheckpointKeeper is closed")
        self._raise_error()

    def __enter__(self) -> CheckpointKeeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_executor", None) is None:
            self._release_lock()

    # ----------------------------------------------------------------- reading
    def checkpoints(self) -> list[CheckpointInfo]:
        """The committed top-k, best first."""
        with self._state_lock:
            return [self._entries[step] for step, _ in self._topk.entries()]

    def best(self) -> CheckpointInfo | None:
        """The best committed checkpoint, or None when no save had a finite metric."""
        ranked = self.checkpoints()
        return ranked[0] if ranked else None

    def latest(self) -> CheckpointInfo | None:
        """The most recently committed save (None without ``keep_latest``)."""
        with self._state_lock:
            return self._latest

    def load(self, step: int, *, map_location: Any = None, weights_only: bool | None = None) -> Any:
        """Loads the committed checkpoint of ``step`` (one of the top-k or the latest).

        Args:
            step: the step.
            map_location, weights_only: passed to ``torch.load``.

        Raises:
            KeyError: no committed checkpoint for that step.
        """
        import torch

        step = as_step(step)
        with self._state_lock:
            info = self._entries.get(step)
            if info is None and self._latest is not None and self._latest.step == step:
                info = self._latest
        if info is None:
            raise KeyError(f"no kept checkpoint for step {step} in {self.directory}; kept: {self.steps()}")
        kwargs = {} if weights_only is None else {"weights_only": weights_only}
        return torch.load(info.path, map_location=map_location, **kwargs)

    def load_best(self, **kwargs: Any) -> Any:
        """Loads the best checkpoint; raises LookupError when there is none."""
        best = self.best()
        if best is None:
            raise LookupError(f"no checkpoint with a finite {self.metric!r} in {self.directory}")
        return self.load(best.step, **kwargs)

    def load_latest(self, **kwargs: Any) -> Any:
        """Loads the latest checkpoint (to resume); raises LookupError when there is none."""
        latest = self.latest()
        if latest is None:
            raise LookupError(f"no latest checkpoint in {self.directory}")
        return self.load(latest.step, **kwargs)

    def steps(self) -> list[int]:
        """Steps with a kept file: the top-k, best first, then the latest if separate."""
        steps = [info.step for info in self.checkpoints()]
        latest = self.latest()
        if latest is not None and latest.step not in steps:
            steps.append(latest.step)
        return steps

    def __repr__(self) -> str:
        return (
            f"CheckpointKeeper({str(self.directory)!r}, keep={self.keep}, metric={self.metric!r}, "
            f"mode={self.mode!r}, kept={self.steps()})"
        )
