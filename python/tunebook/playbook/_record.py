"""How a study records a procedure's result, so that ``tunebook report`` can show it later.

A result is stored as one JSON study attribute (:meth:`tunebook.Study.set_attr`) under
``playbook.<procedure>`` (or a key of the caller's choosing that starts with
``playbook.``)::

    {"procedure": "throughput_sweep", "format": 1, "recorded_at": 1712345678.9,
     "result": {"__tuple__": "ThroughputSweep", "fields": {...}}}

Named tuples keep their class name and fields; numpy arrays their dtype and shape;
plain tuples stay tuples; NaN and infinities survive (Python's JSON tokens). Only the
classes registered here are ever rebuilt, so reading a record runs no code from the
database. A field missing from an old record takes its default; a field unknown to
this version is ignored; a record that still cannot be read is skipped with a reason.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple, TypeVar

import numpy as np

from tunebook.analysis import AnalysisWarning, BestStepData

PREFIX = "playbook."
FORMAT = 1

T = TypeVar("T")
_REGISTRY: dict[str, type] = {"AnalysisWarning": AnalysisWarning, "BestStepData": BestStepData}


def recordable(cls: type[T]) -> type[T]:
    """Registers a named tuple class so that records holding it can be read back."""
    _REGISTRY[cls.__name__] = cls
    return cls


def encode(value: Any) -> Any:
    """``value`` as plain JSON data (see the module docstring). Callables become None."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        name = type(value).__name__
        if _REGISTRY.get(name) is not type(value):
            raise TypeError(f"{name} is not a recordable class")
        return {"__tuple__": name, "fields": {f: encode(getattr(value, f)) for f in value._fields}}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"cannot record an array of dtype {value.dtype}")
        return {"__array__": value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__seq__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only dicts with string keys can be recorded")
        if "__tuple__" in value or "__array__" in value or "__seq__" in value:
            raise TypeError("a recorded dict must not use the keys __tuple__, __array__ or __seq__")
        return {k: encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if callable(value):
        return None  # a schedule or a step function: not data
    raise TypeError(f"cannot record a {type(value).__name__}")


def decode(data: Any) -> Any:
    """The inverse of :func:`encode` (callables come back as None)."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tuple__" in data:
        cls = _REGISTRY.get(data["__tuple__"])
        if cls is None:
            raise ValueError(f"unknown recorded class {data['__tuple__']!r}")
        stored = data.get("fields", {})
        defaults = getattr(cls, "_field_defaults", {})
        missing = [f for f in cls._fields if f not in stored and f not in defaults]
        if missing:
            raise ValueError(f"the record of {cls.__name__} lacks the fields {missing}")
        return cls(**{f: decode(stored[f]) for f in cls._fields if f in stored})
    if "__array__" in data:
        array = np.asarray(data["data"], dtype=np.dtype(data["__array__"]))
        return array.reshape(data["shape"])
    if "__seq__" in data:
        return tuple(decode(v) for v in data["__seq__"])
    return {k: decode(v) for k, v in data.items()}


class Record(NamedTuple):
    """One recorded result, as read back from a study.

    Attributes:
        key: the study attribute it is stored under.
        procedure: the procedure's name (``"throughput_sweep"``, ...).
        recorded_at: seconds since the epoch.
        result: the result object, or None when it could not be read.
        error: why it could not be read, or "".
    """

    key: str
    procedure: str
    recorded_at: float
    result: Any
    error: str = ""


def _check_study(study: Any) -> None:
    if not (hasattr(study, "set_attr") and hasattr(study, "attrs")):
        raise TypeError(f"study must be a tunebook.Study (with set_attr and attrs), got {type(study).__name__}")


def record(study: Any, result: Any, key: str | None = None) -> str:
    """Stores a procedure's result with a study; the study report then shows it.

    Args:
        study: a :class:`tunebook.Study`.
        result: a result of a :mod:`tunebook.playbook` procedure.
        key: the attribute key (default ``playbook.<procedure>``; a later record under
            the same key replaces the earlier one). It must start with ``playbook.``.

    Returns:
        The key it was stored under.
    """
    _check_study(study)
    procedure = getattr(result, "procedure", None)
    if not isinstance(procedure, str):
        raise TypeError(f"result must be the result of a tunebook.playbook procedure, got {type(result).__name__}")
    key = key if key is not None else PREFIX + procedure
    if not isinstance(key, str) or not key.startswith(PREFIX) or len(key) == len(PREFIX):
        raise ValueError(f"key={key!r} must start with {PREFIX!r} and name the record")
    study.set_attr(key, {"procedure": procedure, "format": FORMAT, "recorded_at": time.time(),
                         "result": encode(result)})
    return key


def recorded(study: Any, procedure: str | None = None) -> list[Record]:
    """The results recorded with a study, oldest first.

    Args:
        study: a :class:`tunebook.Study`.
        procedure: only this procedure's records (default: all).

    Returns:
        :class:`Record` s; one that cannot be read has ``result=None`` and an ``error``.
    """
    _check_study(study)
    records = []
    for key, value in study.attrs.items():
        if not key.startswith(PREFIX) or not isinstance(value, dict):
            continue
        name = str(value.get("procedure", ""))
        if procedure is not None and name != procedure:
            continue
        at = value.get("recorded_at")
        at = float(at) if isinstance(at, (int, float)) and math.isfinite(at) else 0.0
        try:
            if value.get("format") != FORMAT:
                raise ValueError(f"record format {value.get('format')!r}, this tunebook reads {FORMAT}")
            result = decode(value["result"])
            records.append(Record(key, name, at, result))
        except (KeyError, TypeError, ValueError) as error:
            records.append(Record(key, name, at, None, f"{type(error).__name__}: {error}"))
    return sorted(records, key=lambda r: (r.recorded_at, r.key))
