"""Shared cases for the optimizer tests (CPU here; the CUDA tests reuse them with device=).

A "case" is (name, tunebook class, torch class, constructor kwargs). ``run_against_torch``
drives a tunebook optimizer and a torch.optim one (``foreach=False``, the single-tensor
implementation) through the same gradients, with ``clip_grad_norm_`` before torch's step when
clipping is on, and returns both sets of params, states and the grads' norms.
"""

from __future__ import annotations

import math

import torch

import tunebook.optim as tbo

# Random shapes including empty and 1-element tensors; one tensor above the CPU loop's
# parallel grain (32768) so that ranges split inside a tensor.
SHAPES_GROUP_A = [(3, 4), (0,), (1,), (17,), (5, 0, 2), (2, 3, 5)]
SHAPES_GROUP_B = [(40000,), (1, 1), (7, 3)]

CASES = [
    ("sgd", tbo.SGD, torch.optim.SGD, dict(lr=0.1)),
    ("sgd_momentum", tbo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd_nesterov_wd", tbo.SGD, torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd_dampening_max", tbo.SGD, torch.optim.SGD,
     dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True)),
    ("rmsprop", tbo.RMSprop, torch.optim.RMSprop, dict(lr=0.01)),
    ("rmsprop_centered_momentum_wd", tbo.RMSprop, torch.optim.RMSprop,
     dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
    ("rmsprop_centered_max", tbo.RMSprop, torch.optim.RMSprop,
     dict(lr=0.01, alpha=0.9, centered=True, maximize=True)),
    ("rmsprop_momentum", tbo.RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.5)),
    ("adam", tbo.Adam, torch.optim.Adam, dict(lr=0.01)),
    ("adam_amsgrad_wd", tbo.Adam, torch.optim.Adam,
     dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("adam_max_decoupled", tbo.Adam, torch.optim.Adam,
     dict(lr=0.01, betas=(0.8, 0.99), maximize=True, decoupled_weight_decay=True,
          weight_decay=0.1)),
    ("adamw", tbo.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    ("adamw_amsgrad", tbo.AdamW, torch.optim.AdamW, dict(lr=0.01, amsgrad=True, eps=1e-6)),
    ("nadam", tbo.NAdam, torch.optim.NAdam, dict(lr=0.01)),
    ("nadam_decoupled", tbo.NAdam, torch.optim.NAdam,
     dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True, momentum_decay=0.01)),
    ("nadam_wd_max", tbo.NAdam, torch.optim.NAdam,
     dict(lr=0.01, weight_decay=0.01, maximize=True)),
]
CASE_IDS = [c[0] for c in CASES]


def make_params(seed: int, device="cpu", dtype=torch.float32):
    """Two lists of leaf params (group A, group B), deterministic."""
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for shapes in (SHAPES_GROUP_A, SHAPES_GROUP_B):
        groups.append([
            torch.randn(s, generator=gen).to(device=device, dtype=dtype).requires_grad_()
            for s in shapes
        ])
    return groups


def clone_params(groups):
    return [[p.detach().clone().requires_grad_() for p in g] for g in groups]


def param_groups(groups, kwargs):
    """Two groups with different hyperparameters: B gets half the lr."""
    second = dict(params=groups[1], lr=kwargs.get("lr", 1e-3) * 0.5)
    return [dict(params=groups[0]), second]


def grads_for_step(groups, step: int, seed: int, scale: float = 1.0):
    """Random grads (global norm ~100, ~200 or ~300 by step); the 1-element param of
    group A only gets a grad on even steps."""
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    scale = scale * (0.5, 1.0, 1.5)[step % 3]
    out = []
    for gi, group in enumerate(groups):
        row = []
        for pi, p in enumerate(group):
            if gi == 0 and pi == 2 and step % 2 == 1:
                row.append(None)
            else:
                row.append((torch.randn(p.shape, generator=gen) * scale).to(p.device))
        out.append(row)
    return out


def set_grads(groups, grads):
    for group, row in zip(groups, grads):
        for p, g in zip(group, row):
            p.grad = None if g is None else g.to(p.dtype).clone()


def global_norm(grads) -> float:
    flat = [g.double() for row in grads for g in row if g is not None]
    return math.sqrt(sum(float(g.square().sum()) for g in flat))


def run_against_torch(case, *, backend, max_grad_norm=None, steps=20, seed=0, device="cpu",
                      scale=1.0, tb_extra=None):
    """Runs tunebook and torch side by side; returns (tb_groups, torch_groups, tb_opt,
    torch_opt, norms) with norms the independently computed global norm of each step."""
    _, tb_cls, torch_cls, kwargs = case
    groups = make_params(seed, device)
    ref_groups = clone_params(groups)
    tb_opt = tb_cls(param_groups(groups, kwargs), **kwargs, max_grad_norm=max_grad_norm,
                    backend=backend, **(tb_extra or {}))
    torch_opt = torch_cls(param_groups(ref_groups, kwargs), **kwargs, foreach=False)
    norms = []
    for step in range(steps):
        grads = grads_for_step(groups, step, seed, scale)
        norms.append(global_norm(grads))
        set_grads(groups, grads)
        set_grads(ref_groups, grads)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for g in ref_groups for p in g if p.grad is not None], max_grad_norm,
                foreach=False,
            )
        tb_opt.step()
        torch_opt.step()
    return groups, ref_groups, tb_opt, torch_opt, norms


def assert_states_close(tb_opt, torch_opt, tb_groups, torch_groups, **tol):
    for ga, gb in zip(tb_groups, torch_groups):
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a.detach(), b.detach(), **tol)
            sa, sb = tb_opt.state[a], torch_opt.state[b]
            assert set(sa) == set(sb), (set(sa), set(sb))
            for key in sa:
                torch.testing.assert_close(
                    sa[key].detach().cpu().float(), sb[key].detach().cpu().float(), **tol,
                    msg=lambda m, key=key: f"state[{key!r}]: {m}",
                )
