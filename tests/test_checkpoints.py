"""CheckpointKeeper: ranking rules, atomic commits, reopening, and kill -9 fault injection.

The expected top-k is always computed here by sorting every committed save in Python,
independently of the Rust ranking core the keeper uses.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from tunebook.checkpoints import CheckpointKeeper, restore_rng_state, rng_state
from tunebook.checkpoints import _keeper

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fault injection forks a child process")


def reference_top_k(values: dict[int, float], keep: int, mode: str = "min", tie: str = "earlier") -> list[int]:
    sign = 1.0 if mode == "min" else -1.0
    step_sign = 1 if tie == "earlier" else -1
    finite = [(s, v) for s, v in values.items() if math.isfinite(v)]
    return [s for s, _ in sorted(finite, key=lambda e: (sign * e[1], step_sign * e[0]))[:keep]]


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def expected_files(keeper: CheckpointKeeper) -> set[str]:
    return {"index.json", ".lock"} | {f"ckpt-{s:012d}.pt" for s in keeper.steps()}


def state_for(step: int) -> dict:
    return {"step": step, "w": torch.full((16,), float(step))}


def loss(step: int) -> float:
    """Deterministic, with many ties and some non-finite values."""
    if step % 11 == 5:
        return math.nan
    if step % 17 == 3:
        return math.inf
    return (step * 7919 % 13) / 13.0


def test_keeps_the_best_and_the_latest(tmp_path):
    keeper = CheckpointKeeper(tmp_path, keep=3, metric="valid_loss")
    seen = {}
    for step in range(40):
        keeper.save(step, state_for(step), {"valid_loss": loss(step), "test_acc": step / 100})
        seen[step] = loss(step)
        ranked = [info.step for info in keeper.checkpoints()]
        assert ranked == reference_top_k(seen, 3)
        assert keeper.latest().step == step
        assert files(tmp_path) == expected_files(keeper)
    best = keeper.best()
    assert best.step == reference_top_k(seen, 1)[0]
    # Every metric recorded with a checkpoint stays with it.
    assert best.metrics == {"valid_loss": loss(best.step), "test_acc": best.step / 100}
    assert keeper.load_best()["step"] == best.step
    torch.testing.assert_close(keeper.load(best.step)["w"], torch.full((16,), float(best.step)))
    assert keeper.load_latest()["step"] == 39
    missing = next(s for s in range(40) if s not in keeper.steps())
    with pytest.raises(KeyError, match=f"no kept checkpoint for step {missing}"):
        keeper.load(missing)
    keeper.close()


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("tie", ["earlier", "later"])
def test_modes_and_ties(tmp_path, mode, tie):
    values = [1.0, 2.0, 2.0, math.nan, 1.0, math.inf, -math.inf, 2.0, 0.5]
    with CheckpointKeeper(tmp_path, keep=2, metric="m", mode=mode, tie=tie) as keeper:
        results = [keeper.save(s, {"s": s}, {"m": v}) for s, v in enumerate(values)]
        expected = reference_top_k(dict(enumerate(values)), 2, mode, tie)
        assert [info.step for info in keeper.checkpoints()] == expected
        for result, value in zip(results, values):
            if not math.isfinite(value):
                assert not result.admitted
        assert files(tmp_path) == expected_files(keeper)


def test_non_finite_never_best_but_reported(tmp_path):
    with CheckpointKeeper(tmp_path, keep=1) as keeper:
        result = keeper.save(0, {"x": 1}, {"valid_loss": math.nan})
        assert not result.admitted and keeper.best() is None
        assert math.isnan(keeper.latest().metrics["valid_loss"])
        with pytest.raises(LookupError, match="no checkpoint with a finite"):
            keeper.load_best()
        keeper.save(1, {"x": 2}, {"valid_loss": 3.0})
        keeper.save(2, {"x": 3}, {"valid_loss": -math.inf})
        assert keeper.best().step == 1
        assert files(tmp_path) == {"index.json", ".lock", "ckpt-000000000001.pt", "ckpt-000000000002.pt"}
    index = json.loads((tmp_path / "index.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == [1] and index["latest"]["step"] == 2


def test_keep_one_and_keep_more_than_saves(tmp_path):
    with CheckpointKeeper(tmp_path / "one", keep=1) as keeper:
        for step, value in enumerate([3.0, 1.0, 2.0]):
            keeper.save(step, {}, {"valid_loss": value})
        assert keeper.steps() == [1, 2]
    with CheckpointKeeper(tmp_path / "many", keep=10) as keeper:
        for step, value in enumerate([3.0, 1.0, 2.0]):
            keeper.save(step, {}, {"valid_loss": value})
        assert [i.step for i in keeper.checkpoints()] == [1, 2, 0]
        assert files(tmp_path / "many") == expected_files(keeper)


def test_keep_latest_false_writes_only_the_top_k(tmp_path):
    with CheckpointKeeper(tmp_path, keep=1, keep_latest=False) as keeper:
        keeper.save(0, {"a": 0}, {"valid_loss": 1.0})
        keeper.save(1, {"a": 1}, {"valid_loss": 2.0})
        assert keeper.latest() is None and keeper.steps() == [0]
        assert files(tmp_path) == {"index.json", ".lock", "ckpt-000000000000.pt"}


def test_reopen_restores_the_record_and_checks_the_rule(tmp_path):
    with CheckpointKeeper(tmp_path, keep=3, metric="loss") as keeper:
        for step in range(10):
            keeper.save(step, state_for(step), {"loss": loss(step)})
        record = keeper.checkpoints()
        run = keeper.run
    with CheckpointKeeper(tmp_path, keep=3, metric="loss") as keeper:
        assert keeper.checkpoints() == record and keeper.latest().step == 9 and keeper.run == run
    before = files(tmp_path)
    for kwargs, name in [({"metric": "acc"}, "metric"), ({"metric": "loss", "mode": "max"}, "mode"),
                         ({"metric": "loss", "tie": "later"}, "tie")]:
        with pytest.raises(ValueError, match=f"ranks checkpoints by {name}="):
            CheckpointKeeper(tmp_path, keep=3, **kwargs)
    with pytest.raises(ValueError, match="belongs to run"):
        CheckpointKeeper(tmp_path, keep=3, metric="loss", run="someone-else")
    assert files(tmp_path) == before, "a refused reopen deletes nothing"
    # A larger keep keeps everything and admits more; a smaller one evicts at once.
    with CheckpointKeeper(tmp_path, keep=5, metric="loss") as keeper:
        assert keeper.checkpoints() == record
        for step in range(10, 20):
            keeper.save(step, state_for(step), {"loss": loss(step)})
        assert [i.step for i in keeper.checkpoints()] == reference_top_k({s: loss(s) for s in range(20)}, 5)
    with CheckpointKeeper(tmp_path, keep=1, metric="loss") as keeper:
        assert [i.step for i in keeper.checkpoints()] == reference_top_k({s: loss(s) for s in range(20)}, 1)
        assert files(tmp_path) == expected_files(keeper)


def test_never_deletes_from_a_foreign_directory(tmp_path):
    (tmp_path / "ckpt-000000000007.pt").write_bytes(b"someone else's")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not written by a CheckpointKeeper"):
        CheckpointKeeper(tmp_path)
    assert files(tmp_path) == {"ckpt-000000000007.pt", "notes.txt", ".lock"}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with CheckpointKeeper(other, keep=1) as keeper:
        keeper.save(0, {}, {"valid_loss": 1.0})
        keeper.save(1, {}, {"valid_loss": 0.5})
    assert (other / "notes.txt").read_text() == "keep me"


def test_one_keeper_per_directory_and_argument_errors(tmp_path):
    keeper = CheckpointKeeper(tmp_path)
    with pytest.raises(RuntimeError, match="in use by another CheckpointKeeper"):
        CheckpointKeeper(tmp_path)
    keeper.save(0, {}, {"valid_loss": 1.0})
    with pytest.raises(ValueError, match="already saved"):
        keeper.save(0, {}, {"valid_loss": 1.0})
    with pytest.raises(ValueError, match="must contain the ranking metric 'valid_loss'"):
        keeper.save(1, {}, {"loss": 1.0})
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        keeper.save(-1, {}, {"valid_loss": 1.0})
    with pytest.raises(ValueError, match="must be a number"):
        keeper.save(1, {}, {"valid_loss": "low"})
    keeper.close()
    with pytest.raises(RuntimeError, match="closed"):
        keeper.save(1, {}, {"valid_loss": 1.0})
    CheckpointKeeper(tmp_path).close()  # the lock was released
    with pytest.raises(ValueError, match="keep"):
        CheckpointKeeper(tmp_path / "x", keep=0)
    with pytest.raises(ValueError, match="mode"):
        CheckpointKeeper(tmp_path / "x", mode="lowest")


def test_saves_modules_optimizers_schedulers_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    with CheckpointKeeper(tmp_path, keep=1) as keeper:
        keeper.save(1, {"model": model, "optimizer": optimizer, "scheduler": scheduler, "rng": rng_state()},
                    {"valid_loss": 0.1})
        expected_draws = (random.random(), torch.rand(3))
        state = keeper.load_best()  # torch's default weights_only=True load
    clone = torch.nn.Linear(3, 2)
    clone.load_state_dict(state["model"])
    for a, b in zip(clone.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)
    other_optimizer = torch.optim.AdamW(clone.parameters(), lr=0.1)
    other_optimizer.load_state_dict(state["optimizer"])
    torch.testing.assert_close(other_optimizer.state_dict()["state"][0]["exp_avg"],
                               optimizer.state_dict()["state"][0]["exp_avg"])
    assert state["scheduler"]["last_epoch"] == 1
    restore_rng_state(state["rng"])
    assert random.random() == expected_draws[0]
    torch.testing.assert_close(torch.rand(3), expected_draws[1])


def test_async_save_matches_sync_and_snapshots(tmp_path):
    values = [loss(s) for s in range(30)]
    with CheckpointKeeper(tmp_path / "sync", keep=4, metric="loss") as sync:
        for step, value in enumerate(values):
            sync.save(step, state_for(step), {"loss": value})
        expected = sync.checkpoints()
    with CheckpointKeeper(tmp_path / "async", keep=4, metric="loss", async_save=True) as keeper:
        futures = []
        for step, value in enumerate(values):
            state = state_for(step)
            futures.append(keeper.save(step, state, {"loss": value}))
            state["w"].fill_(-1.0)  # training goes on mutating its tensors
        keeper.flush()
        assert [f.result().step for f in futures] == list(range(30))
        assert [(i.step, i.metrics) for i in keeper.checkpoints()] == [(i.step, i.metrics) for i in expected]
        for step in keeper.steps():
            torch.testing.assert_close(keeper.load(step)["w"], torch.full((16,), float(step)))
        assert files(tmp_path / "async") == expected_files(keeper)


def test_async_errors_surface(tmp_path, monkeypatch):
    keeper = CheckpointKeeper(tmp_path, keep=2, async_save=True)

    def fail(phase):
        if phase == "written":
            raise OSError("disk full")

    monkeypatch.setattr(_keeper, "_fault", fail)
    future = keeper.save(0, {"a": 1}, {"valid_loss": 1.0})
    with pytest.raises(OSError, match="disk full"):
        future.result()
    with pytest.raises(RuntimeError, match="background checkpoint save failed"):
        keeper.flush()
    monkeypatch.setattr(_keeper, "_fault", None)
    keeper.save(1, {"a": 2}, {"valid_loss": 2.0}).result()
    keeper.close()
    assert files(tmp_path) == {"index.json", ".lock", "ckpt-000000000001.pt"}


def _fork(child) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            child()
        finally:
            os._exit(0)
    return pid


PHASES = ["start", "written", "renamed", "committed", "evicting", "done"]


@pytest.mark.parametrize("phase", PHASES)
def test_kill_at_each_phase_of_a_save(tmp_path, phase):
    values = {0: 5.0, 1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0}
    with CheckpointKeeper(tmp_path, keep=2, metric="loss") as keeper:
        for step, value in values.items():
            keeper.save(step, state_for(step), {"loss": value})

    def child():
        _keeper._fault = lambda p: os.kill(os.getpid(), signal.SIGKILL) if p == phase else None
        keeper = CheckpointKeeper(tmp_path, keep=2, metric="loss")
        keeper.save(5, state_for(5), {"loss": 0.0})  # admitted, evicts step 3

    pid = _fork(child)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    committed = PHASES.index(phase) >= PHASES.index("committed")
    if committed:
        values[5] = 0.0
    with CheckpointKeeper(tmp_path, keep=2, metric="loss") as keeper:
        assert [i.step for i in keeper.checkpoints()] == reference_top_k(values, 2)
        assert keeper.latest().step == (5 if committed else 4)
        assert files(tmp_path) == expected_files(keeper)


def _save_forever(directory: Path, keep: int, write_fd: int, async_save: bool) -> None:  # pragma: no cover
    keeper = CheckpointKeeper(directory, keep=keep, metric="loss", async_save=async_save, max_pending=2)
    latest = keeper.latest()
    step = 0 if latest is None else latest.step + 1
    while True:
        result = keeper.save(step, state_for(step), {"loss": loss(step), "test": float(step)})
        if async_save:
            result.add_done_callback(lambda f, s=step: f.exception() or os.write(write_fd, f"{s}\n".encode()))
        else:
            os.write(write_fd, f"{step}\n".encode())
        step += 1


@pytest.mark.slow
def test_kill_9_at_random_points(tmp_path):
    """60 SIGKILLs at random moments of a save loop that resumes each time.

    After each kill the directory is reopened: the record must be exactly the top-k of
    every committed save (steps 0..latest), every kept file must load with the right
    content, and nothing but the index, the lock and the kept files may remain.
    """
    rng = random.Random(1234)
    keep = 3
    confirmed = -1
    cleaned = 0
    for kill in range(60):
        async_save = kill % 3 == 2
        read_fd, write_fd = os.pipe()
        pid = _fork(lambda: _save_forever(tmp_path, keep, write_fd, async_save))
        os.close(write_fd)
        time.sleep(rng.uniform(0.005, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(read_fd) as pipe:
            reported = [int(line) for line in pipe.read().split()]
        if reported:
            confirmed = max(confirmed, reported[-1])
        left = files(tmp_path) - {"index.json", ".lock"}
        with CheckpointKeeper(tmp_path, keep=keep, metric="loss") as keeper:
            latest = keeper.latest()
            last = -1 if latest is None else latest.step
            # Every confirmed save is committed; at most the in-flight ones beyond it.
            assert confirmed <= last <= confirmed + (3 if async_save else 1)
            committed = {s: loss(s) for s in range(last + 1)}
            assert [i.step for i in keeper.checkpoints()] == reference_top_k(committed, keep)
            for info in keeper.checkpoints():
                assert info.metrics == {"loss": loss(info.step), "test": float(info.step)}
            for step in keeper.steps():
                state = keeper.load(step)
                assert state["step"] == step
                torch.testing.assert_close(state["w"], torch.full((16,), float(step)))
            assert files(tmp_path) == expected_files(keeper)
            cleaned += bool(left - {f"ckpt-{s:012d}.pt" for s in keeper.steps()})
        confirmed = last
    print(f"kill -9: {confirmed + 1} committed saves, {cleaned} kills left leftovers")
    assert confirmed > 10, "the save loop made progress across kills"
    assert cleaned > 0, "some kills interrupted a save and left something to clean up"
