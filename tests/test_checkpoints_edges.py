"""CheckpointKeeper at its edges: steps of every size and integer type, corrupted
indexes, directories it may not write, and a keeper that fails to open."""

from __future__ import annotations

import gc
import json
import os
import sys

import numpy as np
import pytest
import torch

from tunebook.checkpoints import CheckpointKeeper
from tunebook.checkpoints import _keeper


def _save_some(directory, steps, keep=2):
    with CheckpointKeeper(directory, keep=keep, fsync=False) as keeper:
        for step in steps:
            keeper.save(step, {"w": torch.full((2,), float(step % 97))}, {"valid_loss": float(step % 7)})


@pytest.mark.parametrize("step", [10**12 - 1, 10**12, 10**15 + 3, 2**63 - 1])
def test_large_steps_are_named_and_orphans_cleaned(tmp_path, step):
    _save_some(tmp_path, [step])
    name = _keeper.checkpoint_name(step)
    assert (tmp_path / name).exists()
    assert _keeper._CHECKPOINT_RE.match(name)
    # An interrupted save of a step as large leaves an orphan; reopening removes it.
    orphan = tmp_path / _keeper.checkpoint_name(step - 1)
    orphan.write_bytes(b"half-written")
    with CheckpointKeeper(tmp_path, keep=2) as keeper:
        assert keeper.steps() == [step]
        assert keeper.load(step)["w"].shape == (2,)
    assert not orphan.exists()


def test_the_orphan_pattern_matches_every_name_it_writes_and_nothing_else():
    for step in [0, 1, 999_999_999_999, 10**12, 10**18, 2**63 - 1]:
        assert _keeper._CHECKPOINT_RE.match(_keeper.checkpoint_name(step))
    for name in ["ckpt-0000000000001.pt", "ckpt-1.pt", "ckpt-00000000001.pt", "ckpt-12345678901234567890.pt",
                 "ckpt-000000000001.pt.bak", "xckpt-000000000001.pt"]:
        assert not _keeper._CHECKPOINT_RE.match(name), name


@pytest.mark.parametrize("step", [np.int64(7), np.uint16(7), torch.tensor(7), torch.tensor([7])])
def test_numpy_and_torch_integer_steps(tmp_path, step):
    with CheckpointKeeper(tmp_path, keep=1) as keeper:
        keeper.save(step, {"a": 1}, {"valid_loss": np.float32(0.5)})
        assert keeper.steps() == [7] and type(keeper.steps()[0]) is int
        assert keeper.load(np.int32(7)) == {"a": 1}


@pytest.mark.parametrize("step, message", [
    (2**63, r"below 2\*\*63"), (-1, "non-negative"), (True, "not a bool"), (np.bool_(True), "not a bool"),
    (3.0, "must be an integer"), ("3", "must be an integer"), (torch.tensor(3.0), "must be an integer"),
    (torch.tensor([1, 2]), "integer"),
])
def test_bad_steps_are_refused_and_leave_the_keeper_usable(tmp_path, step, message):
    with CheckpointKeeper(tmp_path, keep=1) as keeper:
        with pytest.raises(ValueError, match=message):
            keeper.save(step, {}, {"valid_loss": 1.0})
        keeper.save(1, {}, {"valid_loss": 1.0})
        assert keeper.steps() == [1]


@pytest.mark.parametrize("metric_value", [torch.ones(3), np.ones(2), 1j, None, "x", 10**400])
def test_bad_metric_values_are_value_errors(tmp_path, metric_value):
    with CheckpointKeeper(tmp_path, keep=1) as keeper:
        with pytest.raises(ValueError, match="valid_loss"):
            keeper.save(1, {}, {"valid_loss": metric_value})
        keeper.save(1, {}, {"valid_loss": 1.0})


# --------------------------------------------------------------------- corrupt index

def _corrupt(record):
    return [
        ("a list", [record]),
        ("no tie", {k: v for k, v in record.items() if k != "tie"}),
        ("no metric in an entry", {**record, "checkpoints": [{**record["checkpoints"][0], "metrics": {}}]}),
        ("an entry without a step", {**record, "checkpoints": [{"file": "x", "metrics": {"valid_loss": 1}}]}),
        ("a file outside the directory", {**record, "checkpoints": [{**record["checkpoints"][0], "file": "../x.pt"}]}),
        ("a negative step", {**record, "checkpoints": [{**record["checkpoints"][0], "step": -3}]}),
        ("checkpoints not a list", {**record, "checkpoints": {"0": 1}}),
        ("a bad latest", {**record, "latest": 5}),
        ("a bad mode", {**record, "mode": "lowest"}),
        ("metrics not numbers", {**record, "checkpoints": [{**record["checkpoints"][0],
                                                           "metrics": {"valid_loss": "low"}}]}),
    ]


def test_corrupt_index_names_the_file_and_deletes_nothing(tmp_path):
    _save_some(tmp_path / "good", [1, 2, 3])
    record = json.loads((tmp_path / "good" / "index.json").read_text())
    cases = _corrupt(record) + [("not JSON", None)]
    for i, (what, document) in enumerate(cases):
        directory = tmp_path / f"case{i}"
        _save_some(directory, [1, 2, 3])
        index = directory / "index.json"
        if document is None:
            index.write_text("{not json")
        else:
            index.write_text(json.dumps(document))
        before = sorted(p.name for p in directory.iterdir())
        with pytest.raises(ValueError) as error:
            CheckpointKeeper(directory, keep=2)
        message = str(error.value)
        assert str(index) in message and "Nothing was deleted" in message, (what, message)
        assert "start the run in a new directory" in message, (what, message)
        assert sorted(p.name for p in directory.iterdir()) == before, what
        CheckpointKeeper(tmp_path / "good", keep=2).close()  # the lock of a failed open was released
        # ... and its own lock too:
        (directory / "index.json").unlink()
        for p in directory.glob("ckpt-*.pt"):
            p.unlink()
        CheckpointKeeper(directory, keep=2).close()


# ------------------------------------------------------------- read-only directories

@pytest.fixture
def unwritable(tmp_path, monkeypatch):
    """A run directory this process cannot write: chmod when not root, else the lock
    file's open fails as it would on a read-only mount."""
    directory = tmp_path / "run"
    _save_some(directory, [10, 20, 30])
    (directory / ".lock").unlink()
    (directory / (_keeper.TMP_PREFIX + "leftover.pt")).write_bytes(b"x")
    (directory / _keeper.checkpoint_name(40)).write_bytes(b"orphan")
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if str(path).startswith(str(directory)) and any(m in (args[0] if args else kwargs.get("mode", "r"))
                                                        for m in "wax+"):
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(_keeper, "open", refusing_open, raising=False)
    yield directory


def test_load_best_from_a_directory_it_cannot_write(unwritable):
    before = sorted(p.name for p in unwritable.iterdir())
    keeper = CheckpointKeeper(unwritable, keep=2)
    assert keeper.read_only
    best = keeper.best()
    assert best.step in (10, 20, 30)
    assert keeper.load_best()["w"][0] == float(best.step % 97)
    with pytest.raises(RuntimeError, match="read-only .*not writable"):
        keeper.save(50, {}, {"valid_loss": 0.0})
    keeper.close()
    # Nothing was cleaned up, locked or rewritten.
    assert sorted(p.name for p in unwritable.iterdir()) == before


def test_read_only_explicitly(tmp_path):
    _save_some(tmp_path, [1, 2, 3])
    (tmp_path / "index.json").chmod(0o444)
    index = (tmp_path / "index.json").read_bytes()
    with CheckpointKeeper(tmp_path, keep=1, read_only=True) as reader, CheckpointKeeper(tmp_path, keep=2) as writer:
        # A reader takes no lock, so a writer can work beside it; a smaller keep only narrows the view.
        assert len(reader.checkpoints()) == 1 and len(writer.checkpoints()) == 2
        assert torch.equal(reader.load_best()["w"], writer.load_best()["w"])
    assert (tmp_path / "index.json").read_bytes() == index
    with pytest.raises(FileNotFoundError, match="index.json"):
        CheckpointKeeper(tmp_path / "empty", read_only=True)
    assert not (tmp_path / "empty").exists()
    with pytest.raises(ValueError, match="read_only"):
        CheckpointKeeper(tmp_path, read_only="yes")


def test_a_keeper_that_cannot_create_its_directory_raises_once_and_quietly(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(OSError, match="cannot open the checkpoint directory"):
        CheckpointKeeper(blocker / "run")
    gc.collect()
    assert unraisable == []
