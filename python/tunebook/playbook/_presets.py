"""Search-space presets: which optimizer hyperparameters a trial budget can afford.

The playbook's FAQ ("How should Adam's hyperparameters be tuned?"): not all of Adam's
hyperparameters are equally important, so tune

* under 10 trials: only the (base) learning rate;
* 10 to 25 trials: the learning rate and β1;
* 25 trials or more: the learning rate, β1 and ε;
* substantially more than 25 trials: β2 as well.

The playbook gives no number for "substantially more". Its own steps grow the budget
×2.5 per added hyperparameter (10 → 25); one more such step from 25 is 62.5, which
:data:`BETA2_FROM` rounds to **60**: β2 joins at 60 trials (override with
``beta2_from=``). In a quasi-random search every added dimension thins the coverage of
the others, which is why the threshold is well above 25 and not just above it.

β1, β2 and the momentum are searched as ``1 - β`` on a log scale: the interesting
values crowd towards 1 (0.9, 0.99, 0.999), and ``1 - β`` spreads them evenly. A
hyperparameter the budget does not reach stays in the space as a fixed value, so every
trial's params hold all of them; :func:`adam_config` and :func:`nesterov_config` turn
params into ``torch.optim`` (or ``tunebook.optim``) keyword arguments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tunebook.search import SearchSpace

#: The budget from which :func:`adam_space` tunes β2 ("substantially more than 25").
BETA2_FROM = 60
#: The budget from which β1 (or the momentum) is tuned.
BETA1_FROM = 10
#: The budget from which ε is tuned.
EPSILON_FROM = 25


def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer (the number of trials), got {budget!r}")
    return budget


def _check_range(name: str, value: Any, *, below_one: bool = False) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    if not (0 < low < high and math.isfinite(high)) or (below_one and high >= 1):
        bound = "0 < low < high < 1" if below_one else "0 < low < high"
        raise ValueError(f"{name}={value!r} must satisfy {bound} (it is searched on a log scale)")
    return low, high


def _check_value(name: str, value: Any, *, unit: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if unit and not 0 <= value < 1:
        raise ValueError(f"{name}={value!r} must lie in [0, 1)")
    if not unit and value <= 0:
        raise ValueError(f"{name}={value!r} must be > 0")
    return float(value)


def _log(low: float, high: float) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high, "scale": "log"}


def _one_minus(beta: float) -> float:
    # 1 - 0.9 is 0.09999999999999998 in binary; store the decimal the user meant.
    return float(f"{1.0 - beta:.12g}")


def adam_space(
    budget: int,
    *,
    learning_rate: tuple[float, float] = (1e-5, 1e-1),
    one_minus_beta1: tuple[float, float] = (1e-2, 0.5),
    epsilon: tuple[float, float] = (1e-10, 1e-2),
    one_minus_beta2: tuple[float, float] = (1e-4, 1e-1),
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    beta2_from: int = BETA2_FROM,
) -> SearchSpace:
    """Adam's search space for a trial budget, by the playbook's FAQ.

    Hyperparameters (trial params): ``learning_rate``, ``one_minus_beta1``,
    ``epsilon``, ``one_minus_beta2``; the ones the budget does not reach are fixed at
    ``beta1``, ``beta2`` and ``eps``.

    ==================  =======================================================
    budget              searched (log scale)
    ==================  =======================================================
    < 10                learning_rate
    10 to 24            learning_rate, 1 - β1
    25 to beta2_from-1  learning_rate, 1 - β1, ε
    >= beta2_from (60)  learning_rate, 1 - β1, ε, 1 - β2
    ==================  =======================================================

    Args:
        budget: the number of trials the study will run.
        learning_rate: its range (default 1e-5 to 1e-1).
        one_minus_beta1: the range of 1 - β1 (default 0.01 to 0.5: β1 from 0.5 to 0.99).
        epsilon: the range of ε (default 1e-10 to 1e-2: the playbook notes that ε can
            matter far above its customary 1e-8).
        one_minus_beta2: the range of 1 - β2 (default 1e-4 to 0.1: β2 from 0.9 to 0.9999).
        beta1, beta2, eps: the values held when not searched (torch's defaults).
        beta2_from: the budget from which β2 is searched (see :data:`BETA2_FROM`).

    Returns:
        A :class:`~tunebook.search.SearchSpace`.

    Raises:
        ValueError: naming the argument: a budget below 1, a range that is not
            ``0 < low < high`` (``< 1`` for the ``1 - β`` ones), or a bad fixed value.

    Example:
        >>> space = adam_space(30)
        >>> sorted(p.name for p in space.parameters if p.is_random)
        ['epsilon', 'learning_rate', 'one_minus_beta1']
        >>> adam_config(space.sample(1)[0])["betas"][1]
        0.999
    """
    budget = _check_budget(budget)
    beta2_from = _check_budget(beta2_from)
    if beta2_from < EPSILON_FROM:
        raise ValueError(f"{beta2_from=} must be >= {EPSILON_FROM}: the playbook adds β2 after ε")
    spec: dict[str, Any] = {"learning_rate": _log(*_check_range("learning_rate", learning_rate))}
    ranges = {
        "one_minus_beta1": (_check_range("one_minus_beta1", one_minus_beta1, below_one=True), BETA1_FROM,
                            _one_minus(_check_value("beta1", beta1, unit=True))),
        "epsilon": (_check_range("epsilon", epsilon), EPSILON_FROM, _check_value("eps", eps)),
        "one_minus_beta2": (_check_range("one_minus_beta2", one_minus_beta2, below_one=True), beta2_from,
                            _one_minus(_check_value("beta2", beta2, unit=True))),
    }
    for name, ((low, high), threshold, held) in ranges.items():
        spec[name] = _log(low, high) if budget >= threshold else {"type": "fixed", "value": held}
    return SearchSpace.from_dict(spec)


def nesterov_space(
    budget: int,
    *,
    learning_rate: tuple[float, float] = (1e-3, 3.0),
    one_minus_momentum: tuple[float, float] = (1e-3, 0.5),
    momentum: float = 0.9,
    momentum_from: int = BETA1_FROM,
) -> SearchSpace:
    """Nesterov momentum's search space for a trial budget (the analogue of
    :func:`adam_space`): under ``momentum_from`` (10) trials only the learning rate,
    from then on the learning rate and ``1 - momentum``, both on a log scale.

    Hyperparameters (trial params): ``learning_rate`` and ``one_minus_momentum``
    (fixed at ``1 - momentum`` below the threshold).

    Args:
        budget: the number of trials the study will run.
        learning_rate: its range (default 1e-3 to 3).
        one_minus_momentum: the range of 1 - momentum (default 1e-3 to 0.5: momentum
            from 0.5 to 0.999).
        momentum: the value held when not searched.
        momentum_from: the budget from which the momentum is searched.

    Raises:
        ValueError: naming the argument, as :func:`adam_space`.
    """
    budget = _check_budget(budget)
    momentum_from = _check_budget(momentum_from)
    held = _one_minus(_check_value("momentum", momentum, unit=True))
    spread = _check_range("one_minus_momentum", one_minus_momentum, below_one=True)
    return SearchSpace.from_dict({
        "learning_rate": _log(*_check_range("learning_rate", learning_rate)),
        "one_minus_momentum": _log(*spread) if budget >= momentum_from else {"type": "fixed", "value": held},
    })


def adam_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"lr", "betas", "eps"}`` for ``torch.optim.Adam`` from a trial of :func:`adam_space`."""
    return {
        "lr": float(params["learning_rate"]),
        "betas": (1.0 - float(params["one_minus_beta1"]), 1.0 - float(params["one_minus_beta2"])),
        "eps": float(params["epsilon"]),
    }


def nesterov_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"lr", "momentum", "nesterov": True}`` for ``torch.optim.SGD`` from a trial of
    :func:`nesterov_space`."""
    return {"lr": float(params["learning_rate"]), "momentum": 1.0 - float(params["one_minus_momentum"]),
            "nesterov": True}
