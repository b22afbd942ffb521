"""Search-space presets by trial budget: the playbook FAQ's rule for Adam (learning rate;
then β1 from 10 trials; ε from 25; β2 from BETA2_FROM = 60) and its Nesterov analogue."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tunebook.playbook import BETA2_FROM, adam_config, adam_space, nesterov_config, nesterov_space


def _searched(space) -> list[str]:
    return [p.name for p in space.parameters if p.is_random]


@pytest.mark.parametrize(("budget", "searched"), [
    (1, ["learning_rate"]),
    (9, ["learning_rate"]),
    (10, ["learning_rate", "one_minus_beta1"]),
    (24, ["learning_rate", "one_minus_beta1"]),
    (25, ["learning_rate", "one_minus_beta1", "epsilon"]),
    (59, ["learning_rate", "one_minus_beta1", "epsilon"]),
    (60, ["learning_rate", "one_minus_beta1", "epsilon", "one_minus_beta2"]),
    (1000, ["learning_rate", "one_minus_beta1", "epsilon", "one_minus_beta2"]),
])
def test_adam_space_follows_the_budget_rule(budget, searched):
    space = adam_space(budget)
    assert _searched(space) == searched
    assert all(p.scale == "log" for p in space.parameters if p.is_random)
    for params in space.sample(64, seed=1):
        assert set(params) == {"learning_rate", "one_minus_beta1", "epsilon", "one_minus_beta2"}
        config = adam_config(params)
        assert 1e-5 <= config["lr"] <= 1e-1 and 1e-10 <= config["eps"] <= 1e-2
        assert 0.5 <= config["betas"][0] <= 0.99 and 0.9 <= config["betas"][1] <= 0.9999
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], **config)  # torch accepts it


def test_unsearched_hyperparameters_hold_their_defaults():
    config = adam_config(adam_space(5).sample(1)[0])
    assert (config["betas"], config["eps"]) == ((0.9, 0.999), 1e-8), "exact decimals, not 1 - 0.0999..."
    config = adam_config(adam_space(5, beta1=0.95, beta2=0.98, eps=1e-6).sample(1)[0])
    assert (config["betas"], config["eps"]) == ((0.95, 0.98), 1e-6)
    assert BETA2_FROM == 60
    assert "one_minus_beta2" in _searched(adam_space(40, beta2_from=40))


def test_ranges_are_overridable_and_log_uniform():
    space = adam_space(30, learning_rate=(1e-4, 1e-2), one_minus_beta1=(0.05, 0.2))
    params = space.sample(512, seed=0)
    lr = np.log10([p["learning_rate"] for p in params])
    assert lr.min() >= -4 and lr.max() <= -2
    # Log scale: each decade holds about half the points.
    assert abs(np.mean(lr < -3) - 0.5) < 0.05
    gap = [p["one_minus_beta1"] for p in params]
    assert min(gap) >= 0.05 and max(gap) <= 0.2


def test_nesterov_space():
    assert _searched(nesterov_space(9)) == ["learning_rate"]
    assert _searched(nesterov_space(10)) == ["learning_rate", "one_minus_momentum"]
    config = nesterov_config(nesterov_space(3, momentum=0.95).sample(1)[0])
    assert config["momentum"] == 0.95 and config["nesterov"]
    for params in nesterov_space(20).sample(32):
        config = nesterov_config(params)
        assert 0.5 <= config["momentum"] <= 0.999
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], **config)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: adam_space(0), "budget must be a positive integer"),
    (lambda: adam_space(2.5), "budget must be"),
    (lambda: adam_space(True), "budget must be"),
    (lambda: adam_space(10, learning_rate=(1e-2, 1e-4)), "learning_rate=.* 0 < low < high"),
    (lambda: adam_space(10, learning_rate=(0.0, 1.0)), "learning_rate"),
    (lambda: adam_space(10, learning_rate=1e-3), "learning_rate must be a \\(low, high\\) pair"),
    (lambda: adam_space(10, one_minus_beta1=(0.1, 1.5)), "one_minus_beta1=.* < 1"),
    (lambda: adam_space(10, beta1=1.0), "beta1=1.0 must lie in"),
    (lambda: adam_space(10, eps=0.0), "eps=0.0 must be > 0"),
    (lambda: adam_space(10, beta2_from=20), "beta2_from=20 must be >= 25"),
    (lambda: nesterov_space(10, momentum=-0.1), "momentum"),
    (lambda: nesterov_space(10, one_minus_momentum=(0.5, 0.1)), "one_minus_momentum"),
])
def test_bad_arguments_name_themselves(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@given(budget=st.integers(1, 500))
def test_more_budget_never_searches_less(budget):
    fewer, more = _searched(adam_space(budget)), _searched(adam_space(budget + 1))
    assert set(fewer) <= set(more) and len(more) - len(fewer) <= 1
    assert len(fewer) == 1 + (budget >= 10) + (budget >= 25) + (budget >= BETA2_FROM)
    assert all(math.isfinite(v) for v in adam_config(adam_space(budget).sample(1)[0])["betas"])
