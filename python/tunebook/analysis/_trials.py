"""Normalise a study's trials (TrialRecords, or plain dicts) and its hyperparameters.

Every analysis function accepts either ``study.trials()`` (objects with ``index``,
``params``, ``state``, ``best_value``, ``best_step`` and ``history(metric)``) or plain
dicts with the same keys, where ``history`` is a ``{metric: (steps, values)}`` mapping.
That keeps the numbers testable without a database.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

FEASIBLE = "complete"
INFEASIBLE = "infeasible"


class TrialView(NamedTuple):
    """One trial, as the analysis sees it."""

    index: int
    params: Mapping[str, Any]
    state: str
    value: float  # the best value of the study's metric; NaN when there is none
    step: int  # the step of that value; -1 when there is none
    source: Any  # the original record, for its histories
    kind: str = "quasirandom"  # "quasirandom", "replicate" or "exploit" (see tunebook.Study)

    @property
    def feasible(self) -> bool:
        return self.state == FEASIBLE and math.isfinite(self.value)

    @property
    def infeasible(self) -> bool:
        """The playbook's red x: diverged, NaN, or completed with no finite value."""
        return self.state == INFEASIBLE or (self.state == FEASIBLE and not math.isfinite(self.value))

    def history(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one metric, empty arrays when it was never reported."""
        source = self.source
        if isinstance(source, Mapping):
            histories = source.get("history") or {}
            pair = histories.get(metric)
        else:
            try:
                pair = source.history(metric)
            except (KeyError, ValueError):
                pair = None
        if pair is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        steps, values = pair
        return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)

    def metric_names(self) -> tuple[str, ...]:
        if isinstance(self.source, Mapping):
            return tuple((self.source.get("history") or {}).keys())
        return tuple(getattr(self.source, "metric_names", ()) or ())


def _get(record: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(record, Mapping):
            if name in record:
                return record[name]
        elif hasattr(record, name):
            return getattr(record, name)
    return default


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def trial_views(trials: Iterable[Any]) -> list[TrialView]:
    """Normalise TrialRecords or dicts into :class:`TrialView` s (sorted by index)."""
    views = []
    for position, record in enumerate(trials):
        if isinstance(record, TrialView):
            views.append(record)
            continue
        state = _get(record, "state", default=FEASIBLE)
        state = getattr(state, "value", state)  # an Enum state reads as its value
        step = _get(record, "best_step", "step", default=-1)
        views.append(
            TrialView(
                index=int(_get(record, "index", default=position)),
                params=dict(_get(record, "params", default={}) or {}),
                state=str(state).lower(),
                value=_float(_get(record, "best_value", "value")),
                step=-1 if step is None else int(step),
                source=record,
                kind=str(_get(record, "kind", default="quasirandom") or "quasirandom"),
            )
        )
    return sorted(views, key=lambda view: view.index)


def oriented(values: np.ndarray | float, mode: str) -> np.ndarray | float:
    """Values turned so that smaller is better (negated for mode="max")."""
    check_mode(mode)
    return values if mode == "min" else -values


def check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"{mode=} must be 'min' or 'max'")


# ------------------------------------------------------------------ hyperparameters


class Hyperparameter(NamedTuple):
    """A hyperparameter of a study, with what the analysis needs to plot it.

    Conditional children with the same name under different parents are different
    hyperparameters (the playbook's point about ``learning_rate`` for two optimizers);
    ``label`` tells them apart, ``active`` says which trials each one belongs to.
    """

    key: str  # a unique id
    name: str  # the key in a trial's params
    label: str  # for titles: "learning_rate | optimizer=adam"
    kind: str  # "float" | "int" | "categorical" | "fixed"
    scale: str  # "linear" | "log"
    low: float | None
    high: float | None
    choices: tuple[Any, ...]
    conditions: tuple[tuple[str, tuple[Any, ...]], ...]  # (parent name, its values) from the root down

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    def active(self, params: Mapping[str, Any]) -> bool:
        if self.name not in params:
            return False
        return all(params.get(parent) in values for parent, values in self.conditions)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def hyperparameters(space: Any = None, trials: Sequence[TrialView] = ()) -> list[Hyperparameter]:
    """The hyperparameters of a :class:`tunebook.search.SearchSpace`, plus any trial
    params it does not describe (or all of them without a space), inferred from the
    values: numeric or categorical, log scale for positive values spread over decades,
    bounds from the data."""
    result = _from_space(space) if space is not None else []
    known = {hp.name for hp in result}
    names: dict[str, list[Any]] = {}
    for trial in trials:
        for name, value in trial.params.items():
            if name not in known:  # params the space does not describe are inferred
                names.setdefault(name, []).append(value)
    for name, values in names.items():
        numeric = all(_is_number(v) for v in values)
        if numeric:
            array = np.asarray(values, dtype=np.float64)
            integer = all(isinstance(v, numbers.Integral) for v in values)
            positive = bool(np.all(array > 0))
            # Spanning decades with most values near the bottom: log-uniform, a log axis.
            wide = positive and array.max() / array.min() > 100 and np.median(array) < 0.1 * array.max()
            result.append(Hyperparameter(name, name, name, "int" if integer else "float",
                                         "log" if wide else "linear", float(array.min()),
                                         float(array.max()), (), ()))
        else:
            choices = tuple(dict.fromkeys(_hashable(v) for v in values))
            result.append(Hyperparameter(name, name, name, "categorical", "linear", None, None, choices, ()))
    return result


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _from_space(space: Any) -> list[Hyperparameter]:
    parameters = getattr(space, "parameters", None)
    if parameters is None:
        try:
            parameters = iter(space)
        except TypeError:
            # A space of its own (Study takes any object with sample/to_dict/from_dict)
            # that does not list its parameters: they are inferred from the trials.
            return []
    parameters = list(parameters)
    by_id = {str(getattr(p, "id", getattr(p, "name", ""))): p for p in parameters}

    def parent_of(p: Any) -> Any:
        parent = getattr(p, "parent", None)
        if parent is None:
            return None
        if isinstance(parent, str):
            return by_id.get(parent) or next((q for q in parameters if q.name == parent), None)
        return parent

    result = []
    for p in parameters:
        conditions = []
        node = p
        while (parent := parent_of(node)) is not None:
            values = tuple(getattr(node, "parent_values", ()) or ())
            conditions.insert(0, (parent.name, values))
            node = parent
        kind = str(getattr(p, "kind", "float"))
        scale = str(getattr(p, "scale", "linear") or "linear")
        low, high = getattr(p, "low", None), getattr(p, "high", None)
        choices = tuple(_hashable(c) for c in (getattr(p, "choices", None) or ()))
        if kind == "fixed":
            value = getattr(p, "value", None)
            choices = choices or (_hashable(value),)
        label = p.name + "".join(
            f" | {parent}={values[0] if len(values) == 1 else '/'.join(map(str, values))}"
            for parent, values in conditions
        )
        result.append(Hyperparameter(
            key=str(getattr(p, "id", p.name)), name=p.name, label=label, kind=kind, scale=scale,
            low=None if low is None else float(low), high=None if high is None else float(high),
            choices=choices, conditions=tuple(conditions),
        ))
    return result
