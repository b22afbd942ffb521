"""The eager step's cached plan (optim/_base.py, _StepPlan) and its per-step layout check
(csrc/param_layouts.h, or its Python twin without the compiled library).

Each case changes, between two steps, something the plan was built from but that object
identity does not show: the metadata behind the same param and grad objects. Each must be
seen (tunebook then equals torch.optim's for-loop), and ``test_each_case_needs_the_check``
shows that each is caught by the layout check alone: with the check made to always pass,
every case goes wrong (a wrong result or an error).
"""

from __future__ import annotations

import pytest
import torch

import tunebook.optim as tbo
import tunebook.optim._base as base

TOL = dict(rtol=1e-5, atol=1e-6)
CHANNELS_LAST = torch.channels_last


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, 3, 4, 5), (3, 2, 2, 3), (6, 4), (5,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _grad(p, step, i, fmt=torch.contiguous_format):
    gen = torch.Generator().manual_seed(100 * step + i)
    g = torch.randn(p.shape, generator=gen)
    return g.contiguous(memory_format=fmt) if g.dim() == 4 else g


def _relayout_data(t):
    t.data = t.data.contiguous(memory_format=CHANNELS_LAST)


def _mutate(case, params, keep):
    """The change made between steps 2 and 3, to both runs."""
    four_d = [p for p in params if p.dim() == 4]
    if case == "param_and_grad_data_swapped":
        # module.to(memory_format=torch.channels_last): `.data` of params and retained grads.
        for p in four_d:
            _relayout_data(p)
            _relayout_data(p.grad)
    elif case == "grad_data_swapped":
        for p in four_d:
            _relayout_data(p.grad)
    elif case == "param_data_swapped":
        for p in four_d:
            _relayout_data(p)
    elif case == "param_swapped_old_tensor_alive":
        # module.to() under set_swap_module_params_on_conversion(True), with the old tensor
        # kept alive elsewhere (here `keep`; in training, e.g. the last loss's graph).
        for p in four_d:
            grad = p.grad
            p.grad = None
            new = torch.nn.Parameter(p.detach().contiguous(memory_format=CHANNELS_LAST))
            torch.utils.swap_tensors(p, new)
            p.grad = grad.contiguous(memory_format=CHANNELS_LAST)
            keep.append(new)
    elif case == "grad_lost":
        params[1].grad = None
    elif case == "grad_gained":
        pass  # params[3] has had no grad until now (see _run)
    elif case == "grad_dtype_changed":
        params[2].grad = params[2].grad.double()
    else:
        raise AssertionError(case)


CASES = [
    "param_and_grad_data_swapped", "grad_data_swapped", "param_data_swapped",
    "param_swapped_old_tensor_alive", "grad_lost", "grad_gained",
]


def _run(opt_cls, params, case, fresh_grads, steps=5):
    opt = opt_cls(params)
    keep = []
    for step in range(steps):
        if step == 2:
            _mutate(case, params, keep)
        for i, p in enumerate(params):
            if case == "grad_gained" and i == 3 and step < 3:
                continue
            if case == "grad_lost" and i == 1 and step >= 2:
                continue
            fmt = (
                CHANNELS_LAST if step >= 2 and case in ("grad_data_swapped",
                                                        "param_and_grad_data_swapped",
                                                        "param_swapped_old_tensor_alive")
                else torch.contiguous_format
            )
            g = _grad(p, step, i, fmt)
            if fresh_grads or p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)  # zero_grad(set_to_none=False), then backward
        opt.step()
    return opt


def _assert_like_torch(case, fresh_grads):
    ours, theirs = _params(), _params()
    tb = _run(lambda ps: tbo.Adam(ps, lr=0.05, weight_decay=0.1), ours, case, fresh_grads)
    th = _run(lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.1, foreach=False),
              theirs, case, fresh_grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL)
        for key in ("exp_avg", "exp_avg_sq"):
            if key in th.state[b]:
                torch.testing.assert_close(tb.state[a][key], th.state[b][key], **TOL)


@pytest.fixture(params=["compiled", "python"])
def layouts(request, monkeypatch):
    """The check in C++ (csrc/param_layouts.h) and its Python twin (no compiled library)."""
    if request.param == "compiled":
        if not base._compiled_layouts():
            tbo.Adam([torch.zeros(1, requires_grad=True)])  # noqa: B018
            if "cpu" not in base.library_backends():
                pytest.skip("the compiled library is not available")
    else:
        monkeypatch.setattr(base, "_compiled_layouts", lambda: False)
    return request.param


@pytest.mark.parametrize("fresh_grads", [False, True], ids=["retained_grads", "new_grads"])
@pytest.mark.parametrize("case", CASES)
def test_layout_changes_behind_the_same_objects_are_seen(case, fresh_grads, layouts):
    if case == "grad_data_swapped" and fresh_grads:
        pytest.skip("covered by new grads arriving channels_last (the same case)")
    _assert_like_torch(case, fresh_grads)


@pytest.mark.parametrize("case", CASES)
def test_each_case_needs_the_check(case, monkeypatch):
    """With the layout check made to pass always, each case goes wrong: the cases test it."""

    class Lax:
        def __init__(self, params):
            pass

        def unchanged(self):
            return True

    monkeypatch.setattr(base, "_param_layouts", Lax)
    with pytest.raises((AssertionError, RuntimeError, TypeError, ValueError)):
        _assert_like_torch(case, fresh_grads=case != "param_data_swapped")


def test_the_plan_is_reused_while_nothing_changes(monkeypatch):
    """New grads each step (the default zero_grad) and retained ones keep the plan."""
    params = _params()
    opt = tbo.Adam(params, lr=0.01)
    builds = []
    original = opt._build_plan
    monkeypatch.setattr(opt, "_build_plan", lambda *a: builds.append(1) or original(*a))
    for step in range(6):
        for i, p in enumerate(params):
            if step % 2:
                p.grad = _grad(p, step, i)
            else:
                p.grad = p.grad if p.grad is not None else _grad(p, step, i)
        opt.step()
    assert len(builds) == 1


def test_compiled_check_reports_each_change():
    """tunebook::ParamLayouts directly: every field it compares."""
    if "cpu" not in base.library_backends():
        pytest.skip("the compiled library is not available")
    p = torch.nn.Parameter(torch.zeros(2, 3, 4, 5))
    q = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.zeros(2, 3, 4, 5)
    layouts = torch.classes.tunebook.ParamLayouts([p, q])
    assert layouts.unchanged() and len(layouts) == 2
    p.grad = torch.ones(2, 3, 4, 5)  # a new grad in the same layout
    assert layouts.unchanged()
    changes = [
        lambda: setattr(q, "grad", torch.zeros(3)),
        lambda: setattr(p, "grad", None),
        lambda: _relayout_data(p.grad),
        lambda: _relayout_data(p),
        lambda: setattr(p, "data", torch.zeros(2, 3, 4, 5, dtype=torch.float64)),
        lambda: setattr(p, "data", torch.zeros(2, 3, 4, 6)),
        lambda: setattr(p, "grad", torch.zeros(2, 3, 4, 5).to_sparse()),
    ]
    for change in changes:
        p.data = torch.zeros(2, 3, 4, 5)
        p.grad, q.grad = torch.zeros(2, 3, 4, 5), None
        assert layouts.unchanged()
        change()
        assert not layouts.unchanged()
    # A swapped-in tensor (swap_tensors) while the old one lives on elsewhere: the one the
    # param object wraps now is compared, and no reference is held that would stop a swap.
    p.data = torch.zeros(2, 3, 4, 5)
    p.grad = None
    layouts = torch.classes.tunebook.ParamLayouts([p])
    same = torch.nn.Parameter(torch.ones(2, 3, 4, 5))
    torch.utils.swap_tensors(p, same)
    assert layouts.unchanged() and bool((p == 1).all())
    other = torch.nn.Parameter(torch.zeros(2, 3, 4, 5).contiguous(memory_format=CHANNELS_LAST))
    torch.utils.swap_tensors(p, other)
    assert not layouts.unchanged()
    torch.utils.swap_tensors(p, other)  # swapped back
    assert layouts.unchanged()
