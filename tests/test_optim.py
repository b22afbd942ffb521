"""tunebook.optim against torch.optim: every optimizer, option set, dtype and backend, on
every device (the ``device`` fixture of conftest.py: the CPU, and CUDA where a GPU is).

The oracle is torch.optim's single-tensor implementation (``foreach=False``), preceded by
``clip_grad_norm_`` when clipping is on; low-precision params are checked against the
reference path (float32 math, rounded once per step, as the kernels) and, loosely, against
torch in float32.
"""

from __future__ import annotations

import pytest
import torch

import tunebook.optim as tbo
from optim_cases import (
    CASE_IDS, CASES, assert_states_close, clone_params, grads_for_step, make_params,
    param_groups, run_against_torch, set_grads,
)

BACKENDS = ["cpu", "reference"]
# "compiled": the device's kernels (the cpu or cuda backend); "reference": pure torch.
IMPLEMENTATIONS = ["compiled", "reference"]
FLOAT32_TOL = dict(rtol=1e-5, atol=1e-5)


def test_cpu_backend_is_built():
    assert "cpu" in tbo.library_backends(), "the C++ kernels must build on CI machines"


def _backend(implementation, device):
    return device if implementation == "compiled" else "reference"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("max_grad_norm", [None, 250.0], ids=["noclip", "clip"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_torch_float32(case, max_grad_norm, implementation, device):
    backend = _backend(implementation, device)
    tb_groups, torch_groups, tb_opt, torch_opt, norms = run_against_torch(
        case, backend=backend, max_grad_norm=max_grad_norm, device=device)
    assert tb_opt.backend == backend
    assert_states_close(tb_opt, torch_opt, tb_groups, torch_groups, **FLOAT32_TOL)
    log = tb_opt.grad_norms()
    assert log.steps == len(norms) and log.skipped == 0
    torch.testing.assert_close(log.norms.double(), torch.tensor(norms, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    expected_clipped = 0 if max_grad_norm is None else sum(n > max_grad_norm for n in norms)
    assert log.clipped == expected_clipped
    assert 0 < expected_clipped < len(norms) or max_grad_norm is None  # both branches hit


def _assert_nearly_identical(a, b):
    """Almost every element bit-identical; the rest one or two roundings apart (a float32
    result on the edge of a low-precision rounding, then carried by the state)."""
    eps = torch.finfo(a.dtype).eps if a.dtype != torch.float32 else 1e-6
    if a.numel() == 0:
        return
    differing = int((a != b).sum())
    assert differing <= 1 + a.numel() // 200, f"{differing} of {a.numel()} elements differ"
    torch.testing.assert_close(a.float(), b.float(), rtol=4 * eps, atol=4 * eps)


def _run(case, dtype, backend, steps=20, seed=3, max_grad_norm=None, device="cpu"):
    _, tb_cls, _, kwargs = case
    groups = make_params(seed, device, dtype=dtype)
    opt = tb_cls(param_groups(groups, kwargs), **kwargs, backend=backend,
                 max_grad_norm=max_grad_norm)
    for step in range(steps):
        set_grads(groups, grads_for_step(groups, step, seed))
        opt.step()
    return groups, opt


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_matches_reference(case, dtype, device):
    """Same float32 math, one rounding per step: the kernels and the reference agree to
    within one rounding of the param dtype, and both track torch run in float32."""
    tb_groups, tb_opt = _run(case, dtype, device, max_grad_norm=250.0, device=device)
    ref_groups, ref_opt = _run(case, dtype, "reference", max_grad_norm=250.0, device=device)
    for ga, gb in zip(tb_groups, ref_groups):
        for a, b in zip(ga, gb):
            assert a.dtype == dtype and a.device.type == device
            _assert_nearly_identical(a.detach(), b.detach())
            for key in tb_opt.state[a]:
                sa, sb = tb_opt.state[a][key], ref_opt.state[b][key]
                assert sa.dtype == sb.dtype
                _assert_nearly_identical(sa, sb)
    # Against torch.optim in float32 (upcast copies): the drift is bounded by the per-step
    # rounding of the params, far below the size of the updates themselves.
    _, _, torch_cls, kwargs = case
    f32 = [[p.detach().float().requires_grad_() for p in g]
           for g in make_params(3, device, dtype=dtype)]
    torch_opt = torch_cls(param_groups(f32, kwargs), **kwargs, foreach=False)
    for step in range(20):
        set_grads(f32, grads_for_step(f32, step, 3))
        torch.nn.utils.clip_grad_norm_([p for g in f32 for p in g if p.grad is not None], 250.0)
        torch_opt.step()
    for ga, gb in zip(tb_groups, f32):
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a.detach().float(), b.detach(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_matches_reference_many_small_tensors(case):
    """300 tensors of random sizes: the parallel ranges cross many tensor boundaries."""
    _, tb_cls, _, kwargs = case
    gen = torch.Generator().manual_seed(7)
    sizes = torch.randint(0, 400, (300,), generator=gen).tolist()
    base = [torch.randn(n, generator=gen) for n in sizes]
    runs = {}
    for backend in BACKENDS:
        params = [b.clone().requires_grad_() for b in base]
        opt = tb_cls(params, **kwargs, backend=backend, max_grad_norm=10.0)
        g = torch.Generator().manual_seed(11)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        runs[backend] = (params, opt)
    # The kernels round op by op like torch but without FMAs, while torch's vectorised
    # `add(alpha=)` fuses; where g*coef and wd*p nearly cancel (an ill-conditioned element,
    # 1 in ~60000 here) that one rounding is amplified. Allow 1 + n/1000 such outliers.
    a = torch.cat([p.detach() for p in runs["cpu"][0]])
    b = torch.cat([p.detach() for p in runs["reference"][0]])
    far = ~torch.isclose(a, b, **FLOAT32_TOL)
    assert int(far.sum()) <= 1 + a.numel() // 1000, (int(far.sum()), a.numel())
    torch.testing.assert_close(a[~far], b[~far], **FLOAT32_TOL)


def test_zero_grad_set_to_none_false_matches_torch(device):
    case = CASES[CASE_IDS.index("adam_amsgrad_wd")]
    groups = make_params(1, device)
    ref = clone_params(groups)
    kwargs = case[3]
    opt = tbo.Adam(param_groups(groups, kwargs), **kwargs)
    topt = torch.optim.Adam(param_groups(ref, kwargs), **kwargs, foreach=False)
    for step in range(6):
        for o in (opt, topt):
            o.zero_grad(set_to_none=(step % 2 == 0))
        if step % 3 != 2:  # every third step: zero (not None) grads or no grads at all
            grads = grads_for_step(groups, step, 1)
            set_grads(groups, grads)
            set_grads(ref, grads)
        opt.step()
        topt.step()
    assert_states_close(opt, topt, groups, ref, **FLOAT32_TOL)


@pytest.mark.parametrize("lr_device", ["cpu", "params"], ids=["cpu_lr", "lr_on_params_device"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tensor_lr_is_read_every_step(implementation, lr_device, device):
    params = make_params(2, device)
    ref = clone_params(params)
    lr = torch.tensor(0.01, device="cpu" if lr_device == "cpu" else device)
    lr_ref = torch.tensor(0.01)
    opt = tbo.Adam(params[0] + params[1], lr=lr, backend=_backend(implementation, device))
    topt = torch.optim.Adam(ref[0] + ref[1], lr=lr_ref, foreach=False)
    for step in range(10):
        if step == 5:  # a schedule rewriting the tensor in place
            lr.fill_(0.002)
            lr_ref.fill_(0.002)
        grads = grads_for_step(params, step, 2)
        set_grads(params, grads)
        set_grads(ref, grads)
        opt.step()
        topt.step()
    assert_states_close(opt, topt, params, ref, **FLOAT32_TOL)
