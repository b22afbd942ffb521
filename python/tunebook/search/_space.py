"""Search spaces: named hyperparameters, conditions between them, and quasi-random trials."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from tunebook.search._halton import MAX_DIMENSION, halton
from tunebook.search._parameters import Parameter, canonical, label, parse_spec


class SearchSpace:
    """A set of hyperparameters, some conditional on others, sampled by a Halton sequence.

    Build one from a dict (or JSON / YAML text) in either format:

    * the playbook reference's (MLCommons algoperf ``halton.py``), unchanged::

        {"lr": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
         "opt": {"feasible_points": ["a", "b"]}}

      ``{"min", "max"}`` gives a float ("scaling" defaults to "linear"),
      ``{"feasible_points"}`` a categorical;

    * tunebook's own, which adds integers, fixed values and conditions::

        {"optimizer": {"type": "categorical", "choices": ["adam", "nesterov"]},
         "batch_size": {"type": "int", "low": 16, "high": 512, "scale": "log"},
         "warmup_steps": 1000,                                  # fixed
         "adam_lr": {"name": "learning_rate", "low": 1e-4, "high": 1e-2,
                     "scale": "log", "when": {"optimizer": ["adam"]}},
         "nesterov_lr": {"name": "learning_rate", "low": 1e-3, "high": 1.0,
                         "scale": "log", "when": {"optimizer": ["nesterov"]}},
         "momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer": "nesterov"}}}

      Per entry: ``type`` (float, int, categorical, fixed), ``low``/``high``,
      ``scale`` (linear, log), ``choices`` (any JSON values; a bare list is shorthand),
      ``value`` (a bare non-dict value is shorthand), ``name`` (the trial key, default
      the entry's key) and ``when`` ({parent key: values}).

    A conditional hyperparameter is active only when its parent is active and takes one
    of the listed values; inactive ones are absent from a trial. Children that share a
    name under different parents or values are different hyperparameters with their own
    Halton dimensions (the playbook: Adam's learning rate is not Nesterov's); they must
    never be active together. Each hyperparameter that takes more than one value reads
    its own Halton coordinate, in the order of the spec, so trial ``i`` is the same
    whatever ``n`` is asked for.

    :meth:`to_dict` writes entries keyed by :attr:`Parameter.id`; the space round-trips
    through :meth:`to_dict`, :meth:`to_json` and :meth:`to_yaml`.

    Raises:
        ValueError: naming the hyperparameter and the fix, for min >= max, a log scale
            with min <= 0, empty or repeated choices, an unknown type or key, a
            condition on a hyperparameter that does not exist or is a float, a condition
            value the parent cannot take, a cycle of conditions, or two hyperparameters
            with the same name that can be active together.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if not isinstance(spec, Mapping):
            raise ValueError(f"a search space must be a dict of hyperparameters, got {type(spec).__name__}")
        parsed = {key: parse_spec(key, entry) for key, entry in spec.items()}
        order = _topological_order({key: cond[0] if cond else None for key, (_, cond) in parsed.items()})

        by_key: dict[str, Parameter] = {}
        for key in order:
            fields, condition = parsed[key]
            if condition is None:
                by_key[key] = Parameter(id=fields["name"], **fields)
                continue
            parent_key, values = condition
            parent = by_key[parent_key]
            _check_condition_values(key, parent, values)
            ident = f"{parent.id}={','.join(label(v) for v in values)}/{fields['name']}"
            by_key[key] = Parameter(id=ident, parent=parent.id, parent_values=values, **fields)

        parents = {key: cond[0] if cond else None for key, (_, cond) in parsed.items()}
        _check_names(by_key, parents)
        dimension = 0
        parameters = []
        for key in parsed:  # spec order
            parameter = by_key[key]
            if parameter.is_random:
                parameter = _replace(parameter, dimension=dimension)
                dimension += 1
            parameters.append(parameter)
        if dimension > MAX_DIMENSION:
            raise ValueError(f"the space needs {dimension} Halton dimensions, more than {MAX_DIMENSION}")
        self._parameters: list[Parameter] = parameters
        self._by_id: dict[str, Parameter] = {}
        for parameter in parameters:
            if parameter.id in self._by_id:
                raise ValueError(f"two hyperparameters have the id {parameter.id!r}: rename one")
            self._by_id[parameter.id] = parameter
        self._order = [self._by_id[by_key[key].id] for key in order]
        self._dimension = dimension

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SearchSpace:
        """The space described by ``spec`` (the playbook's format or tunebook's)."""
        return cls(spec)

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        """The space described by JSON text."""
        return cls(json.loads(text))

    @classmethod
    def from_yaml(cls, text: str) -> SearchSpace:
        """The space described by YAML text (``1e-4`` reads as a float, as in YAML 1.2)."""
        import yaml

        return cls(yaml.load(text, Loader=_yaml_class("SafeLoader")))  # noqa: S506 (a SafeLoader)

    def to_dict(self) -> dict[str, Any]:
        """The space in tunebook's format, keyed by id; ``from_dict`` reads it back."""
        return {p.id: p.to_spec(p.parent, p.id) for p in self._parameters}

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML text."""
        import yaml

        # The dumper knows the loader's extra float rule, so it quotes strings like "1e5".
        return yaml.dump(self.to_dict(), Dumper=_yaml_class("SafeDumper"), sort_keys=False, default_flow_style=None)

    # ---------------------------------------------------------------- queries

    @property
    def parameters(self) -> list[Parameter]:
        """Every hyperparameter, in the order of the spec."""
        return list(self._parameters)

    @property
    def dimension(self) -> int:
        """Number of Halton dimensions used: one per hyperparameter with several values."""
        return self._dimension

    def parameter(self, ident: str) -> Parameter:
        """The hyperparameter with id ``ident``."""
        try:
            return self._by_id[ident]
        except KeyError:
            raise ValueError(f"no hyperparameter has id {ident!r}; ids are {list(self._by_id)}") from None

    def is_active(self, parameter: Parameter | str, config: Mapping[str, Any]) -> bool:
        """Whether ``parameter`` (or its id) is active in the trial ``config``.

        It is active when every condition up its chain of parents holds in ``config``
        (a dict of names to values, as :meth:`sample` returns).
        """
        p = self.parameter(parameter if isinstance(parameter, str) else parameter.id)
        while p.parent is not None:
            parent = self._by_id[p.parent]
            if parent.name not in config or not _member(config[parent.name], p.parent_values):
                return False
            p = parent
        return True

    def check(self, config: Mapping[str, Any]) -> None:
        """Raises ValueError unless ``config`` is a trial this space can produce.

        Every active hyperparameter must be present with a value it can take, and
        nothing else may be.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"a trial must be a dict, got {type(config).__name__}")
        active = {p.name: p for p in self._order if self.is_active(p, config)}
        missing = [name for name in active if name not in config]
        if missing:
            raise ValueError(f"the trial lacks active hyperparameters {missing}")
        extra = [name for name in config if name not in active]
        if extra:
            raise ValueError(f"the trial has {extra}, which are inactive or not in the space")
        for name, parameter in active.items():
            problem = parameter.check_value(config[name])
            if problem is not None:
                raise ValueError(problem)

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` is a trial this space can produce (see :meth:`check`)."""
        try:
            self.check(config)
        except ValueError:
            return False
        return True

    # ---------------------------------------------------------------- sampling

    def sample(self, n: int, seed: int = 0, start: int = 0) -> list[dict[str, Any]]:
        """Trials ``start .. start + n - 1``: Halton points mapped to configurations.

        Trial ``i`` depends only on ``(space, seed, i)``: ``sample(10, seed, start=5)``
        equals ``sample(15, seed)[5:]``, so a study can be extended or split.

        Args:
            n: number of trials, ``>= 0``.
            seed: seed of the Halton sequence, in ``[0, 2**64)``.
            start: index of the first trial, ``>= 0``.

        Returns:
            One dict per trial, ``{name: value}`` for each active hyperparameter, in the
            order of the spec; floats as ``float``, ints as ``int``.
        """
        if self._dimension:
            points = halton(n, self._dimension, seed, start)
        else:
            points = halton(n, 1, seed, start)[:, :0]  # validates the arguments alike
        n = points.shape[0]
        values: dict[str, list[Any]] = {}
        active: dict[str, list[bool]] = {}
        for p in self._order:
            column = points[:, p.dimension] if p.dimension is not None else np.zeros(n)
            values[p.id] = p.from_unit(column)
            if p.parent is None:
                active[p.id] = [True] * n
            else:
                keys = {canonical(v) for v in p.parent_values or ()}
                parent_values, parent_active = values[p.parent], active[p.parent]
                active[p.id] = [a and canonical(v) in keys for v, a in zip(parent_values, parent_active)]
        return [
            {p.name: values[p.id][i] for p in self._parameters if active[p.id][i]}
            for i in range(n)
        ]

    # ---------------------------------------------------------------- internals

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(canonical(self.to_dict()))

    def __repr__(self) -> str:
        return f"SearchSpace({self.to_dict()!r})"


def _check_names(by_key: dict[str, Parameter], parents: dict[str, str | None]) -> None:
    """Two hyperparameters may share a name only if they are never active together:
    some common ancestor must take disjoint values for each."""

    def conditions(key: str) -> dict[str, set[str]]:
        chain = {}
        while parents[key] is not None:
            chain[parents[key]] = {canonical(v) for v in by_key[key].parent_values or ()}
            key = parents[key]
        return chain

    by_name: dict[str, list[str]] = {}
    for key, parameter in by_key.items():
        by_name.setdefault(parameter.name, []).append(key)
    for name, keys in by_name.items():
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                chain_a, chain_b = conditions(a), conditions(b)
                if not any(chain_a[k].isdisjoint(chain_b[k]) for k in chain_a.keys() & chain_b.keys()):
                    raise ValueError(
                        f"hyperparameters {a!r} and {b!r} are both named {name!r} and can be active "
                        "in the same trial; give one another 'name', or make their conditions exclusive"
                    )


def _replace(parameter: Parameter, **changes: Any) -> Parameter:
    import dataclasses

    return dataclasses.replace(parameter, **changes)


def _member(value: Any, allowed: list[Any] | None) -> bool:
    try:
        return canonical(value) in {canonical(v) for v in allowed or ()}
    except (TypeError, ValueError):
        return False


def _topological_order(parents: dict[str, str | None]) -> list[str]:
    """Keys with every parent before its children, in spec order where free to choose."""
    for key, parent in parents.items():
        if parent is not None and parent not in parents:
            raise ValueError(
                f"hyperparameter {key!r} has a condition on {parent!r}, which is not in the space; "
                f"condition on one of {[k for k in parents if k != key]}, or add {parent!r}"
            )
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = placed
    for root in parents:
        path = []
        key: str | None = root
        while key is not None and state.get(key) != 2:
            if state.get(key) == 1:
                cycle = path[path.index(key) :] + [key]
                raise ValueError(
                    f"the conditions form a cycle: {' -> '.join(cycle)} (each is conditional on the "
                    "next); remove one of these conditions"
                )
            state[key] = 1
            path.append(key)
            key = parents[key]
        for placed in reversed(path):
            state[placed] = 2
            order.append(placed)
    return order


def _check_condition_values(key: str, parent: Parameter, values: list[Any]) -> None:
    if parent.kind == "float":
        raise ValueError(
            f"hyperparameter {key!r} has a condition on the float {parent.id!r}; condition on a "
            "categorical, int or fixed hyperparameter"
        )
    for value in values:
        if parent.check_value(value) is not None:
            raise ValueError(
                f"hyperparameter {key!r}: its condition value {value!r} is never taken by "
                f"{parent.id!r} ({parent.check_value(value)}); list values the parent can take"
            )


_YAML_FLOAT = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |\.(?:inf|Inf|INF))$
    |^\.(?:nan|NaN|NAN)$""",
    re.X,
)


def _yaml_class(base: str) -> type:
    """PyYAML's SafeLoader or SafeDumper, reading ``1e-4`` as a float (YAML 1.1 wants a dot)."""
    import yaml

    cls = type(f"Tunebook{base}", (getattr(yaml, base),), {})
    cls.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+0123456789."))
    return cls
