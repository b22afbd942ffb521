"""One hyperparameter: its spec, its map from a Halton coordinate to a value, its checks."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

Kind = Literal["float", "int", "categorical", "fixed"]
Scale = Literal["linear", "log"]

KINDS: tuple[str, ...] = ("float", "int", "categorical", "fixed")
_KIND_ALIASES = {
    "float": "float", "double": "float", "uniform": "float", "continuous": "float", "real": "float",
    "int": "int", "integer": "int",
    "categorical": "categorical", "choice": "categorical", "discrete": "categorical",
    "fixed": "fixed", "constant": "fixed",
}  # fmt: skip
# Each spec key and the other spellings accepted for it (the playbook's reference
# halton.py uses min / max / scaling / feasible_points).
_KEY_ALIASES = {
    "type": "type", "kind": "type",
    "low": "low", "min": "low",
    "high": "high", "max": "high",
    "scale": "scale", "scaling": "scale",
    "choices": "choices", "feasible_points": "choices",
    "value": "value",
    "name": "name",
    "when": "when",
}  # fmt: skip
_INT_LIMIT = 2**53  # every integer up to here is exact in float64


def canonical(value: Any) -> str:
    """The JSON text of ``value`` with sorted keys: equality of JSON values (1 != 1.0 != True)."""
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python ones."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def label(value: Any) -> str:
    """How a condition value is written in a hyperparameter's id."""
    return value if isinstance(value, str) else canonical(value)


@dataclasses.dataclass(frozen=True, eq=True)
class Parameter:
    """One hyperparameter of a :class:`~tunebook.search.SearchSpace`.

    Attributes:
        id: unique path; the plain name at top level, ``"<parent id>=<values>/<name>"``
            for a conditional one (e.g. ``"optimizer=adam/learning_rate"``).
        name: its key in a trial's dict.
        kind: ``"float"``, ``"int"``, ``"categorical"`` or ``"fixed"``.
        low, high: inclusive bounds of a float or int (else None).
        scale: ``"linear"`` or ``"log"`` for a float or int (else None).
        choices: the values of a categorical, as their JSON form (else None).
        value: the value of a fixed hyperparameter (else None).
        parent: id of the hyperparameter this one is conditional on, or None.
        parent_values: the parent's values under which this one is active, or None.
        dimension: the Halton coordinate it reads, or None when it is constant.
    """

    id: str
    name: str
    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    scale: Scale | None = None
    choices: list[Any] | None = None
    value: Any = None
    parent: str | None = None
    parent_values: list[Any] | None = None
    dimension: int | None = None

    def __hash__(self) -> int:  # the list fields are not hashable; the id is unique in a space
        return hash((self.id, self.kind, self.dimension))

    @property
    def is_random(self) -> bool:
        """Whether it takes more than one value, and so needs a Halton dimension."""
        return self.kind in ("float", "int") or (self.kind == "categorical" and len(self.choices or ()) > 1)

    def from_unit(self, u: np.ndarray) -> list[Any]:
        r"""Maps points ``u`` in [0, 1) to values.

        * float, linear: :math:`low + u\,(high - low)` (:math:`(1 - u)\,low + u\,high` when
          the width overflows float64); log: :math:`\exp(\log low + u \log(high/low))`.
        * int, linear: :math:`low + \lfloor u\,(high - low + 1) \rfloor`, so every integer is
          equally likely; log: the log-uniform value on :math:`[low - 1/2, high + 1/2]`
          rounded to the nearest integer, so :math:`P(k) \propto \log\frac{k + 1/2}{k - 1/2}`
          with no half-weight at the ends.
        * categorical: ``choices[floor(u * len(choices))]``, every choice equally likely.

        Float results are clipped to ``[low, high]`` against rounding.
        """
        if self.kind == "fixed":
            return [copy.deepcopy(self.value) for _ in range(len(u))]
        if self.kind == "categorical":
            choices = self.choices or []
            index = np.minimum((u * len(choices)).astype(np.int64), len(choices) - 1)
            scalar = all(not isinstance(c, (list, dict)) for c in choices)
            return [choices[i] if scalar else copy.deepcopy(choices[i]) for i in index.tolist()]
        low, high = self.low, self.high
        if self.kind == "float":
            if self.scale == "log":
                values = np.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            elif math.isfinite(high - low):
                values = low + u * (high - low)
            else:
                # The width overflows (e.g. -1e308 .. 1e308): interpolate without forming it.
                # Both terms are finite and of opposite signs, so the sum is too.
                values = (1.0 - u) * low + u * high
            return np.clip(values, low, high).tolist()
        if self.scale == "log":
            a, b = math.log(low - 0.5), math.log(high + 0.5)
            rounded = np.floor(np.exp(a + u * (b - a)) + 0.5)
        else:
            rounded = low + np.floor(u * (high - low + 1))
        return [int(v) for v in np.clip(rounded, low, high).tolist()]

    def check_value(self, value: Any) -> str | None:
        """Why ``value`` is not a value this hyperparameter can take, or None if it is."""
        value = plain(value)
        if self.kind == "fixed":
            ok = _same(value, self.value)
            return None if ok else f"{self.name}={value!r} must be the fixed value {self.value!r}"
        if self.kind == "categorical":
            keys = {canonical(c) for c in self.choices or ()}
            ok = _is_json(value) and canonical(value) in keys
            return None if ok else f"{self.name}={value!r} is not one of the choices {self.choices!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{self.name}={value!r} must be a number"
        if self.kind == "int" and not isinstance(value, int):
            return f"{self.name}={value!r} must be an int"
        if not self.low <= value <= self.high:
            return f"{self.name}={value!r} must be in [{self.low}, {self.high}]"
        return None

    def to_spec(self, parent_key: str | None, key: str) -> dict[str, Any]:
        """This hyperparameter in tunebook's dict format."""
        spec: dict[str, Any] = {"type": self.kind}
        if self.name != key:
            spec["name"] = self.name
        if self.kind in ("float", "int"):
            spec.update(low=self.low, high=self.high, scale=self.scale)
        elif self.kind == "categorical":
            spec["choices"] = copy.deepcopy(self.choices)
        else:
            spec["value"] = copy.deepcopy(self.value)
        if parent_key is not None:
            spec["when"] = {parent_key: copy.deepcopy(self.parent_values)}
        return spec


def _same(a: Any, b: Any) -> bool:
    return _is_json(a) and _is_json(b) and canonical(a) == canonical(b)


def _is_json(value: Any) -> bool:
    try:
        canonical(value)
    except (TypeError, ValueError):
        return False
    return True


def _json_value(key: str, what: str, value: Any) -> Any:
    """``value`` as its JSON form (tuples become lists), or a ValueError naming ``key``."""
    try:
        return json.loads(canonical(value))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"hyperparameter {key!r}: {what} {value!r} is not JSON-serialisable ({error}); "
            "use strings, numbers, booleans, None, lists or dicts of them"
        ) from None


def _number(key: str, field: str, value: Any, integer: bool) -> float | int:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"hyperparameter {key!r}: {field}={value!r} must be a number")
    if not math.isfinite(value):
        raise ValueError(f"hyperparameter {key!r}: {field}={value!r} must be finite")
    if integer:
        if value != int(value):
            raise ValueError(f"hyperparameter {key!r}: {field}={value!r} must be an integer for type 'int'")
        if abs(value) > _INT_LIMIT:
            raise ValueError(f"hyperparameter {key!r}: {field}={value!r} must be within +-2**53")
        return int(value)
    return float(value)


def parse_spec(key: str, spec: Any) -> tuple[dict[str, Any], tuple[str, list[Any]] | None]:
    """Reads one entry of a search-space dict.

    Args:
        key: the entry's key.
        spec: a dict in tunebook's or the playbook's format, a list (categorical
            choices) or any other JSON value (a fixed value).

    Returns:
        The :class:`Parameter` fields other than id / parent / dimension, and the
        condition ``(parent key, values)`` or None.

    Raises:
        ValueError: naming ``key`` and the fix, for any malformed spec.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"hyperparameter key {key!r} must be a non-empty string")
    if isinstance(spec, (list, tuple)):
        spec = {"choices": list(spec)}
    elif not isinstance(spec, Mapping):
        spec = {"value": spec}
    fields: dict[str, Any] = {}
    for raw_key, raw_value in spec.items():
        canonical_key = _KEY_ALIASES.get(raw_key)
        if canonical_key is None:
            raise ValueError(
                f"hyperparameter {key!r}: unknown key {raw_key!r}; use {sorted(_KEY_ALIASES)}"
            )
        if canonical_key in fields:
            raise ValueError(f"hyperparameter {key!r}: {raw_key!r} repeats another spelling of {canonical_key!r}")
        fields[canonical_key] = raw_value

    name = fields.pop("name", key)
    if not isinstance(name, str) or not name:
        raise ValueError(f"hyperparameter {key!r}: name={name!r} must be a non-empty string")
    condition = _parse_condition(key, fields.pop("when")) if "when" in fields else None

    kind = fields.pop("type", None)
    if kind is None:
        if "choices" in fields:
            kind = "categorical"
        elif "value" in fields:
            kind = "fixed"
        elif "low" in fields or "high" in fields:
            kind = "float"  # the playbook's {"min", "max", "scaling"} is continuous
        else:
            raise ValueError(
                f"hyperparameter {key!r}: cannot tell its type from {sorted(spec)}; give "
                "low/high (or min/max), choices (or feasible_points), value, or type"
            )
    elif _KIND_ALIASES.get(kind) is None:
        raise ValueError(f"hyperparameter {key!r}: unknown type {kind!r}; use one of {list(KINDS)}")
    kind = _KIND_ALIASES[kind]

    allowed = {"float": {"low", "high", "scale"}, "int": {"low", "high", "scale"},
               "categorical": {"choices"}, "fixed": {"value"}}[kind]  # fmt: skip
    extra = sorted(set(fields) - allowed)
    if extra:
        raise ValueError(f"hyperparameter {key!r}: {extra} do not apply to type {kind!r}; remove them")
    out: dict[str, Any] = {"name": name, "kind": kind}
    if kind in ("float", "int"):
        for field in ("low", "high"):
            if field not in fields:
                raise ValueError(f"hyperparameter {key!r}: type {kind!r} needs {field!r} (or 'min'/'max')")
        low = _number(key, "low", fields["low"], kind == "int")
        high = _number(key, "high", fields["high"], kind == "int")
        scale = fields.get("scale", "linear")
        if scale not in ("linear", "log"):
            raise ValueError(f"hyperparameter {key!r}: scale={scale!r} must be 'linear' or 'log'")
        if low >= high:
            raise ValueError(
                f"hyperparameter {key!r}: low={low!r} must be < high={high!r}; swap them, "
                "or use a fixed value if it has only one"
            )
        if scale == "log" and low <= 0:
            raise ValueError(
                f"hyperparameter {key!r}: a log scale needs low > 0 (got low={low!r}); "
                "raise low or use scale 'linear'"
            )
        out.update(low=low, high=high, scale=scale)
    elif kind == "categorical":
        choices = fields.get("choices")
        if not isinstance(choices, (list, tuple)) or len(choices) == 0:
            raise ValueError(f"hyperparameter {key!r}: choices={choices!r} must be a non-empty list")
        choices = [_json_value(key, "choice", c) for c in choices]
        seen: set[str] = set()
        for choice in choices:
            if canonical(choice) in seen:
                raise ValueError(f"hyperparameter {key!r}: choice {choice!r} is repeated; list each once")
            seen.add(canonical(choice))
        out["choices"] = choices
    else:
        out["value"] = _json_value(key, "value", fields.get("value"))
    return out, condition


def _parse_condition(key: str, when: Any) -> tuple[str, list[Any]]:
    if not isinstance(when, Mapping) or len(when) != 1:
        raise ValueError(
            f"hyperparameter {key!r}: when={when!r} must be a dict with one entry, "
            "{parent: [values under which it is active]}"
        )
    ((parent, values),) = when.items()
    if not isinstance(values, (list, tuple)):
        values = [values]
    if len(values) == 0:
        raise ValueError(f"hyperparameter {key!r}: the condition on {parent!r} lists no values; list at least one")
    return parent, [_json_value(key, "condition value", v) for v in values]
