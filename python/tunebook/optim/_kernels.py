"""The compiled ops ``torch.ops.tunebook.*`` as plain functions, the same namespace as
:mod:`tunebook.optim._reference` (contracts: csrc/ops.cpp).

A module of functions rather than an object holding op handles: torch.compile traces calls
through a module (with ``fullgraph=True`` too), and each call costs one attribute lookup.
"""

from __future__ import annotations

import torch

_ops = torch.ops.tunebook


def grad_sq_norm(grads):
    return _ops.grad_sq_norm.default(grads)


def step_control_(sq_norm, grad_scale, found_inf, control, counters, norm_log, max_grad_norm,
                  skip_nonfinite):
    _ops.step_control_.default(sq_norm, grad_scale, found_inf, control, counters, norm_log,
                               max_grad_norm, skip_nonfinite)


def sgd_step_(*args):
    _ops.sgd_step_.default(*args)


def adam_step_(*args):
    _ops.adam_step_.default(*args)


def rmsprop_step_(*args):
    _ops.rmsprop_step_.default(*args)


def nadam_step_(*args):
    _ops.nadam_step_.default(*args)
