"""The roles of a round of the incremental tuning loop: its goal, and its scientific,
nuisance and fixed hyperparameters, checked against the search space.

The playbook: each round has a narrow goal; the *scientific* hyperparameters are the
ones whose effect the round measures, the *nuisance* ones are optimised away so that
the comparison is fair, and the *fixed* ones are held at one value (and the conclusion
holds only for that value).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple


class Roles(NamedTuple):
    """A round's declared roles.

    Attributes:
        goal: what the round is to find out ("" when not declared).
        scientific: the hyperparameters whose effect is measured.
        nuisance: the hyperparameters optimised away.
        fixed: the hyperparameters held fixed, with their values.
    """

    goal: str = ""
    scientific: tuple[str, ...] = ()
    nuisance: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = {}

    @property
    def declared(self) -> bool:
        return bool(self.goal or self.scientific or self.nuisance or self.fixed)

    def to_json(self) -> str:
        return json.dumps({"scientific": list(self.scientific), "nuisance": list(self.nuisance),
                           "fixed": dict(self.fixed)}, sort_keys=True)

    @classmethod
    def from_stored(cls, goal: str | None, roles_json: str | None) -> Roles:
        data = json.loads(roles_json) if roles_json else {}
        return cls(goal or "", tuple(data.get("scientific", ())), tuple(data.get("nuisance", ())),
                   dict(data.get("fixed", {})))


def space_hyperparameters(space: Any) -> tuple[dict[str, None], dict[str, Any]]:
    """``(searched, fixed)``: the names the space searches (in order), and the names it
    holds at one value, with that value.

    A :class:`~tunebook.search.SearchSpace` is read from its parameters; any other
    space (``sample``/``to_dict`` only) from the keys of its first 64 points, all
    counted as searched.
    """
    searched: dict[str, None] = {}
    fixed: dict[str, Any] = {}
    parameters = getattr(space, "parameters", None)
    if parameters is not None:
        for p in parameters:
            if getattr(p, "is_random", True):
                searched[p.name] = None
            else:
                fixed[p.name] = p.value if p.kind == "fixed" else (p.choices or [None])[0]
        for name in searched:
            fixed.pop(name, None)
        return searched, fixed
    for point in space.sample(64, seed=0):
        searched.update(dict.fromkeys(point))
    return searched, fixed


def _names(value: Any, argument: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{argument} must be a hyperparameter name or a list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{argument} names a hyperparameter twice: {list(value)}")
    return tuple(value)


def check_roles(
    space: Any,
    goal: str | None,
    scientific: Sequence[str] | str | None,
    nuisance: Sequence[str] | str | None,
    fixed: Mapping[str, Any] | None,
) -> Roles:
    """Checks declared roles against the search space and returns them.

    Rules: every scientific and nuisance hyperparameter is searched by the space; no
    hyperparameter has two roles; every fixed one is absent from the space (or held by
    it at the same value) and carries a value; when ``nuisance`` is given, every
    searched hyperparameter is scientific or nuisance. Without ``nuisance``, the
    searched hyperparameters that are not scientific are the nuisance ones.

    Raises:
        ValueError: naming the argument, the hyperparameter and the fix.
    """
    if goal is not None and not isinstance(goal, str):
        raise ValueError(f"goal must be a string, got {type(goal).__name__}")
    scientific_names = _names(scientific, "scientific")
    nuisance_names = _names(nuisance, "nuisance")
    if fixed is None:
        fixed = {}
    if not isinstance(fixed, Mapping):
        raise ValueError(
            f"fixed must map each fixed hyperparameter to the value it is held at, e.g. "
            f"{{'batch_size': 256}}, got {fixed!r}"
        )
    searched, held = space_hyperparameters(space)
    for argument, names in (("scientific", scientific_names), ("nuisance", nuisance_names)):
        for name in names:
            if name not in searched:
                where = "holds it fixed" if name in held else "does not have it"
                raise ValueError(
                    f"{argument} hyperparameter {name!r} is not searched: the search space {where}. "
                    f"The space searches {list(searched)}"
                )
    both = set(scientific_names) & set(nuisance_names)
    if both:
        raise ValueError(f"{sorted(both)} cannot be both scientific and nuisance: choose one role")
    for name, value in fixed.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"fixed hyperparameter names must be non-empty strings, got {name!r}")
        if name in searched:
            raise ValueError(
                f"fixed hyperparameter {name!r} is searched by the space: remove it from the space, or make it "
                "scientific or nuisance"
            )
        if name in scientific_names or name in nuisance_names:
            raise ValueError(f"{name!r} cannot be fixed and scientific or nuisance: choose one role")
        if value is None:
            raise ValueError(f"fixed hyperparameter {name!r} carries no value: give the value it is held at")
        if name in held and json.dumps(held[name], sort_keys=True) != json.dumps(value, sort_keys=True):
            raise ValueError(
                f"fixed hyperparameter {name!r} is declared {value!r}, but the search space holds it at "
                f"{held[name]!r}: make them agree"
            )
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"fixed hyperparameter {name!r} must have a JSON value, got {value!r}") from None
    if nuisance is None:
        nuisance_names = tuple(n for n in searched if n not in scientific_names) if scientific_names else ()
    else:
        unassigned = [n for n in searched if n not in scientific_names and n not in nuisance_names]
        if unassigned:
            raise ValueError(
                f"the space searches {unassigned}, which are neither scientific nor nuisance: add them to one "
                "role (or leave nuisance out: then every searched non-scientific hyperparameter is nuisance)"
            )
    return Roles(goal or "", scientific_names, nuisance_names, dict(fixed))
