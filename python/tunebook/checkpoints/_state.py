"""What goes into a checkpoint: objects with ``state_dict()`` become their state, RNG
states are captured in a form ``torch.load(weights_only=True)`` accepts, and the
background save takes a private snapshot so training can keep mutating its tensors."""

from __future__ import annotations

import copy
import random
from typing import Any


def to_saveable(obj: Any) -> Any:
    """Replaces every object with a ``state_dict()`` method (module, optimizer,
    scheduler, grad scaler) by its state dict, recursing into dicts, lists and tuples."""
    if isinstance(obj, dict):
        return {key: to_saveable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_saveable(value) for value in obj)
    state_dict = getattr(obj, "state_dict", None)
    if callable(state_dict) and not isinstance(obj, type):
        return state_dict()
    return obj


def snapshot(obj: Any) -> Any:
    """A deep copy whose tensors are detached CPU copies, for a background save."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: snapshot(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(snapshot(value) for value in obj)
    return copy.deepcopy(obj)


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU and every CUDA device) RNG states.

    Returns:
        A dict that ``torch.save`` stores and ``torch.load(weights_only=True)`` reads
        back; pass it to :func:`restore_rng_state` when resuming.
    """
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores the RNG states captured by :func:`rng_state`."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
