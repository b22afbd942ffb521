"""The ops themselves: torch.library.opcheck, and the playbook rules against float64
implementations of the Tuning Playbook FAQ's formulas."""

from __future__ import annotations

import math

import pytest
import torch

import tunebook.optim as tbo

pytestmark = pytest.mark.skipif("cpu" not in tbo.library_backends(),
                                reason="the C++ kernels did not build")


def _lists(n_states, dtype=torch.float32, shapes=((3, 4), (0,), (1,), (33,))):
    gen = torch.Generator().manual_seed(0)
    make = lambda: [torch.randn(s, generator=gen).to(dtype) for s in shapes]  # noqa: E731
    params, grads = make(), make()
    states = [[t.abs() for t in make()] for _ in range(n_states)]
    steps = [torch.tensor(3.0) for _ in shapes]
    return params, grads, states, steps


def _control(mult=0.5, skip=0.0):
    return torch.tensor([mult, skip])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_every_op(dtype):
    ops = torch.ops.tunebook
    params, grads, _, _ = _lists(0, dtype)
    torch.library.opcheck(ops.grad_sq_norm.default, (grads,))
    torch.library.opcheck(
        ops.step_control_.default,
        (torch.tensor(4.0), torch.tensor(2.0), torch.tensor(0.0), torch.zeros(2),
         torch.zeros(3, dtype=torch.int64), torch.zeros(5), 1.0, True),
    )
    params, grads, (buf,), _ = _lists(1, dtype)
    torch.library.opcheck(
        ops.sgd_step_.default,
        (params, grads, buf, _control(), None, 0.1, 0.9, 0.1, 0.01, False, False, False))
    params, grads, (m, v, vmax), steps = _lists(3, dtype)
    torch.library.opcheck(
        ops.adam_step_.default,
        (params, grads, m, v, vmax, steps, _control(), torch.tensor(0.01), 0.0, 0.9, 0.999,
         1e-8, 0.01, True, False, True, 0))
    params, grads, (sq, ga, buf), steps = _lists(3, dtype)
    torch.library.opcheck(
        ops.rmsprop_step_.default,
        (params, grads, sq, ga, buf, steps, _control(), None, 0.01, 0.99, 1e-8, 0.0, 0.9,
         True, True, 1))
    params, grads, (m, v), steps = _lists(2, dtype)
    mu = [torch.tensor(0.9) for _ in params]
    torch.library.opcheck(
        ops.nadam_step_.default,
        (params, grads, m, v, mu, steps, _control(), None, 0.01, 0.9, 0.999, 1e-8, 0.0,
         0.004, False, False, 0))


def test_grad_sq_norm_mixed_dtypes_and_determinism():
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(n, generator=gen) for n in (0, 1, 70000, 131072 + 5)]
    grads.append(torch.randn(1000, generator=gen).bfloat16())
    expected = sum(float(g.double().square().sum()) for g in grads)
    out = torch.ops.tunebook.grad_sq_norm(grads)
    assert out.dtype == torch.float32 and out.dim() == 0
    assert float(out) == pytest.approx(expected, rel=1e-6)
    torch.set_num_threads(1)
    try:
        single = torch.ops.tunebook.grad_sq_norm(grads)
    finally:
        torch.set_num_threads(2)
    assert torch.equal(out, single)  # fixed blocks: independent of the thread count


def test_step_control_contract():
    control, counters, log = torch.zeros(2), torch.zeros(3, dtype=torch.int64), torch.zeros(2)
    op = torch.ops.tunebook.step_control_
    op(torch.tensor(16.0), torch.tensor(2.0), None, control, counters, log, 1.0, True)
    # norm = sqrt(16) / 2 = 2 -> coef = 1 / (2 + 1e-6); multiplier = coef / scale
    assert float(control[0]) == pytest.approx(1 / (2 + 1e-6) / 2) and control[1] == 0
    op(torch.tensor(math.inf), None, None, control, counters, log, None, True)
    assert control[1] == 1 and float(control[0]) == 1.0
    op(torch.tensor(1.0), None, torch.tensor(1.0), control, counters, log, None, True)
    assert control[1] == 1  # GradScaler found inf
    assert counters.tolist() == [3, 1, 2]
    assert log[0] == 1.0 and log[1] == math.inf  # ring of 2: step 3 overwrote slot 0 (2.0)


# ----------------------------------------------------------------- playbook, float64
def _playbook_rmsprop(p, grads, lr, rho, eps, momentum):
    v, m = torch.ones_like(p), torch.zeros_like(p)
    for g in grads:
        v = rho * v + (1 - rho) * g * g
        m = momentum * m + lr / torch.sqrt(v + eps) * g
        p = p - m
    return p


def _playbook_adam(p, grads, lr, b1, b2, eps):
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        b = math.sqrt(1 - b2**t) / (1 - b1**t)
        p = p - lr * m / (torch.sqrt(v) + eps) * b
    return p


def _playbook_nadam(p, grads, lr, b1, b2, eps):
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        b = math.sqrt(1 - b2**t) / (1 - b1**t)
        p = p - lr * (b1 * m + (1 - b1) * g) / (torch.sqrt(v) + eps) * b
    return p


PLAYBOOK = [
    ("rmsprop", lambda ps, be: tbo.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-3, momentum=0.9,
                                           rule="playbook", backend=be),
     lambda p, gs: _playbook_rmsprop(p, gs, 0.01, 0.9, 1e-3, 0.9)),
    ("rmsprop_nomomentum", lambda ps, be: tbo.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-3,
                                                      rule="playbook", backend=be),
     lambda p, gs: _playbook_rmsprop(p, gs, 0.01, 0.9, 1e-3, 0.0)),
    ("adam", lambda ps, be: tbo.Adam(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-3,
                                     rule="playbook", backend=be),
     lambda p, gs: _playbook_adam(p, gs, 0.01, 0.9, 0.99, 1e-3)),
    ("nadam", lambda ps, be: tbo.NAdam(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-3,
                                       rule="playbook", backend=be),
     lambda p, gs: _playbook_nadam(p, gs, 0.01, 0.9, 0.99, 1e-3)),
]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name,make,formula", PLAYBOOK, ids=[c[0] for c in PLAYBOOK])
def test_playbook_rules_match_float64_formulas(name, make, formula, backend):
    gen = torch.Generator().manual_seed(2)
    start = torch.randn(1000, generator=gen, dtype=torch.float64)
    grads = [torch.randn(1000, generator=gen, dtype=torch.float64) for _ in range(25)]
    p = start.float().requires_grad_()
    opt = make([p], backend)
    for g in grads:
        p.grad = g.float()
        opt.step()
    expected = formula(start, grads)
    torch.testing.assert_close(p.detach().double(), expected, rtol=2e-5, atol=2e-6)
    # and it is not torch's rule: the two differ by far more than the tolerance
    q = start.float().requires_grad_()
    torch_rule = make([q], backend)
    torch_rule.rule = "torch"
    for g in grads:
        q.grad = g.float()
        torch_rule.step()
    assert (q.detach().double() - expected).abs().max() > 1e-3


def test_cached_library_loads_despite_a_leftover_build_lock():
    """A process killed while loading leaves cpp_extension's `lock` file behind; the next
    process must still load the cached kernels instead of waiting on it forever."""
    import subprocess
    import sys

    library = tbo.build_library()
    lock = library.parent / "lock"
    lock.touch()
    try:
        script = "import tunebook.optim as o; print(o.library_backends())"
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, check=False)
    finally:
        lock.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cpu" in proc.stdout
