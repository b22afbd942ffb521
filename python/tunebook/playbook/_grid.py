"""A grid as a study's search space: trial ``i`` is point ``i`` of a fixed list, once each.

Some of the playbook's procedures are grid searches, not quasi-random ones: the
constant learning-rate sweep that picks ``max_train_steps`` and the warmup sweep.
:class:`GridSpace` lets a :class:`tunebook.Study` run them, with everything a study
gives (workers claiming trials atomically, resuming, the report): create the study
with ``max_trials=space.size`` and every point is visited exactly once.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from tunebook.search import Parameter


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()  # a numpy scalar
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class GridSpace:
    """A search space that lists its trials: trial ``i`` has the parameters ``points[i]``.

    It has the interface :class:`tunebook.Study` needs (``sample``, ``to_dict``,
    ``from_dict``) and the one the analysis plots read (``parameters``, with bounds and
    scales), so axis plots, the report and ``Study.trials()`` work as for a
    :class:`~tunebook.search.SearchSpace`. A grid has no randomness: the study's seed is
    accepted and ignored.

    Args:
        points: the trials' parameters, in the order they are run: a non-empty list of
            dicts with the same string keys and JSON values.
        scales: ``{name: "log" | "linear"}`` for the plots of numeric parameters
            (default: "log" for positive values spanning at least a factor of 10).
        procedure: the playbook procedure this grid belongs to (``"constant_lr_sweep"``,
            ``"warmup_sweep"``), or "".
        info: JSON facts about the sweep that its analysis needs later (for a warmup
            sweep: ``max_train_steps``, the base learning rate), stored with the study.

    Raises:
        ValueError: an empty list, points with different keys, non-JSON values, or a
            bad scale.

    Example:
        >>> space = GridSpace.product({"learning_rate": [0.01, 0.1, 1.0]}, fixed={"momentum": 0.9})
        >>> space.size, space.sample(2, start=1)
        (3, [{'learning_rate': 0.1, 'momentum': 0.9}, {'learning_rate': 1.0, 'momentum': 0.9}])
    """

    def __init__(
        self,
        points: Sequence[Mapping[str, Any]],
        *,
        scales: Mapping[str, str] | None = None,
        procedure: str = "",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(points, (str, bytes, Mapping)) or not isinstance(points, Sequence) or not points:
            raise ValueError("points must be a non-empty list of dicts (one per trial)")
        rows = []
        for i, point in enumerate(points):
            if not isinstance(point, Mapping) or not all(isinstance(k, str) for k in point):
                raise ValueError(f"points[{i}] must be a dict with string keys, got {point!r}")
            row = {k: _plain(v) for k, v in point.items()}
            try:
                json.dumps(row, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise ValueError(f"points[{i}] must hold finite JSON values: {error}") from None
            rows.append(row)
        names = list(rows[0])
        for i, row in enumerate(rows):
            if set(row) != set(names):
                raise ValueError(f"points[{i}] has the keys {sorted(row)}; every point must have {sorted(names)}")
        scales = dict(scales or {})
        for name, scale in scales.items():
            if name not in names:
                raise ValueError(f"scales names {name!r}, which is not a parameter of the grid {names}")
            if scale not in ("log", "linear"):
                raise ValueError(f"scales[{name!r}]={scale!r} must be 'log' or 'linear'")
        if not isinstance(procedure, str):
            raise ValueError(f"procedure must be a string, got {procedure!r}")
        info = dict(info or {})
        try:
            json.dumps(info, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"info must hold finite JSON values: {error}") from None
        self._points = rows
        self._names = names
        self.procedure = procedure
        self.info = info
        self._parameters = [self._parameter(name, scales.get(name)) for name in names]
        self._scales = {p.name: p.scale for p in self._parameters if p.scale is not None}

    def _parameter(self, name: str, scale: str | None) -> Parameter:
        values = [row[name] for row in self._points]
        distinct = list({json.dumps(v, sort_keys=True): v for v in values}.values())
        if len(distinct) == 1:
            return Parameter(id=name, name=name, kind="fixed", value=copy.deepcopy(distinct[0]))
        if all(_is_number(v) for v in values):
            low, high = min(values), max(values)
            if scale is None:
                scale = "log" if low > 0 and high / low >= 10 else "linear"
            if scale == "log" and low <= 0:
                raise ValueError(f"scales[{name!r}]='log' needs positive values, the grid has {low}")
            kind = "int" if all(isinstance(v, numbers.Integral) for v in values) else "float"
            return Parameter(id=name, name=name, kind=kind, low=low, high=high, scale=scale)
        if scale is not None:
            raise ValueError(f"scales[{name!r}] is given, but {name!r} is not numeric")
        return Parameter(id=name, name=name, kind="categorical", choices=copy.deepcopy(distinct))

    @classmethod
    def product(
        cls,
        axes: Mapping[str, Sequence[Any]],
        *,
        fixed: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GridSpace:
        """The Cartesian product of ``axes`` (the last axis varies fastest), each point
        with the ``fixed`` values added. ``options`` go to the constructor."""
        if not isinstance(axes, Mapping) or not axes:
            raise ValueError("axes must be a non-empty dict {name: values}")
        for name, values in axes.items():
            if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"axes[{name!r}] must be a non-empty list of values")
        fixed = dict(fixed or {})
        clash = set(fixed) & set(axes)
        if clash:
            raise ValueError(f"{sorted(clash)} are both fixed and varied")
        points = [{**dict(zip(axes, combo)), **fixed} for combo in itertools.product(*axes.values())]
        return cls(points, **options)

    # ------------------------------------------------------------- the Study interface

    @property
    def size(self) -> int:
        """The number of points: the study's ``max_trials``."""
        return len(self._points)

    def __len__(self) -> int:
        return len(self._points)

    @property
    def points(self) -> list[dict[str, Any]]:
        """Every point, in trial order (copies)."""
        return copy.deepcopy(self._points)

    @property
    def parameters(self) -> list[Parameter]:
        """One :class:`~tunebook.search.Parameter` per key: "fixed" when every point has
        the same value, numeric ones with the grid's bounds and scale, else categorical."""
        return list(self._parameters)

    def sample(self, n: int, seed: int = 0, start: int = 0) -> list[dict[str, Any]]:
        """Trials ``start .. start + n - 1``: the grid points in order.

        Raises:
            ValueError: asking for a trial past the end of the grid (create the study
                with ``max_trials=space.size``).
        """
        for name, value, low in (("n", n, 0), ("seed", seed, 0), ("start", start, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if start + n > self.size:
            raise ValueError(
                f"trial {start + n - 1} is past the end of this grid of {self.size} points: create the study "
                f"with max_trials={self.size} (space.size) so that each point is run once"
            )
        return copy.deepcopy(self._points[start:start + n])

    def to_dict(self) -> dict[str, Any]:
        """The grid as JSON data; :meth:`from_dict` reads it back."""
        return {"grid": copy.deepcopy(self._points), "scales": dict(self._scales),
                "procedure": self.procedure, "info": copy.deepcopy(self.info)}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> GridSpace:
        """The grid written by :meth:`to_dict`."""
        if not isinstance(spec, Mapping) or "grid" not in spec:
            raise ValueError("a grid space spec is a dict with a 'grid' list")
        return cls(spec["grid"], scales=spec.get("scales"), procedure=spec.get("procedure", ""),
                   info=spec.get("info"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GridSpace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        what = f", procedure={self.procedure!r}" if self.procedure else ""
        return f"GridSpace({self.size} points of {self._names}{what})"


def log_grid(low: float, high: float, n: int, *, name: str = "low/high") -> list[float]:
    """``n`` values from ``low`` to ``high``, evenly spaced in log scale (ends included)."""
    if not (_is_number(low) and _is_number(high) and math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} must be finite numbers, got low={low!r}, high={high!r}")
    if not 0 < low < high:
        raise ValueError(f"low={low!r} and high={high!r} must satisfy 0 < low < high")
    if n == 1:
        return [float(low)]
    ratio = math.log(high / low) / (n - 1)
    values = [float(low * math.exp(ratio * i)) for i in range(n)]
    values[-1] = float(high)
    return values
