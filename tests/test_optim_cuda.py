"""tunebook.optim on CUDA: what the device-parametrised suites (the ``device`` fixture of
conftest.py runs test_optim.py on CUDA too) do not already show.

The oracle is torch.optim's single-tensor implementation (``foreach=False``) run on the same
GPU, preceded by ``clip_grad_norm_`` when clipping is on; GradScaler runs are checked against
``torch.optim.Adam(fused=True)``, which honours ``grad_scale``/``found_inf`` the same way.
GPU-only checks: capture and replay of a whole training step (forward, backward, GradScaler,
clipping, the norm log) in a CUDA graph, and of every family's step (device lr rewritten
between replays, 1000 tensors, the first step); launches per step per family; 64-bit
indexing past 2^31 elements; misaligned views and chunk boundaries; bf16/fp16 params with
float32 state for every family; mixed-dtype groups; a norm above the float32 maximum;
``.grad`` and ``_version`` after ``scaler.step`` against torch's fused Adam; params on
cuda:1 while cuda:0 is current; channels_last params; torch.compile of a step;
compute-sanitizer memcheck and racecheck.

Every test skips when ``torch.cuda.is_available()`` is False. ``TUNEBOOK_CUDA_TESTS_ON_CPU=1``
runs the device-agnostic ones with the CPU kernels instead, to check the tests themselves on a
machine without a GPU (graph capture, the profiler and the memory-hungry tests still skip).
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tunebook.optim as tbo
from optim_cases import (
    CASE_IDS, CASES, assert_states_close, clone_params, grads_for_step, make_params,
    param_groups, run_against_torch, set_grads,
)

DRY_RUN_ON_CPU = os.environ.get("TUNEBOOK_CUDA_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if DRY_RUN_ON_CPU else "cuda"
BACKEND = DEVICE

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() or DRY_RUN_ON_CPU),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False)",
    ),
]
gpu_only = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a real CUDA GPU (graphs, profiler, memory)"
)

FLOAT32_TOL = dict(rtol=1e-5, atol=1e-5)
CASE = {name: case for name, case in zip(CASE_IDS, CASES)}
ONE_PER_FAMILY = ["sgd_nesterov_wd", "rmsprop_centered_momentum_wd", "adam_amsgrad_wd",
                  "nadam_decoupled"]
# For element-by-element comparisons with torch over 100K+ elements: no clipping and no
# centered RMSprop. Comparing clipped runs there mostly tests the last bit of two different
# norm reductions, and cancellation (g + wd p near 0, or centered RMSprop's
# E[g^2] - E[g]^2) amplifies last-bit differences to ~1e-5 on one element in 100K. Both are
# covered by the 20-step suite; the norm itself is checked through the log against float64.
LARGE_CASES = ["sgd_nesterov_wd", "rmsprop_momentum", "adam_amsgrad_wd", "nadam_decoupled"]


def ops():
    assert BACKEND in tbo.library_backends(), f"the {BACKEND} kernels did not build"
    return torch.ops.tunebook


def test_cuda_backend_is_built():
    assert BACKEND in tbo.library_backends(), (
        "the CUDA kernels must build wherever a GPU and nvcc are present (see the warning "
        "of tunebook.optim._build)"
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_playbook_rule_matches_reference(case):
    """rule="playbook" on the GPU equals the reference path's float32 formulas (themselves
    tested against float64 playbook formulas in test_optim.py)."""
    _, tb_cls, _, kwargs = case
    if tb_cls is tbo.SGD:
        pytest.skip("SGD has a single rule")
    runs = {}
    for backend in (BACKEND, "reference"):
        groups = make_params(5, DEVICE)
        opt = tb_cls(param_groups(groups, kwargs), **kwargs, rule="playbook", backend=backend,
                     max_grad_norm=250.0)
        for step in range(20):
            set_grads(groups, grads_for_step(groups, step, 5))
            opt.step()
        runs[backend] = (groups, opt)
    (a_groups, a_opt), (b_groups, b_opt) = runs[BACKEND], runs["reference"]
    assert_states_close(a_opt, b_opt, a_groups, b_groups, **FLOAT32_TOL)


def _run(case, dtype, backend, steps=20, seed=3, max_grad_norm=250.0):
    _, tb_cls, _, kwargs = case
    groups = make_params(seed, DEVICE, dtype=dtype)
    opt = tb_cls(param_groups(groups, kwargs), **kwargs, backend=backend,
                 max_grad_norm=max_grad_norm)
    for step in range(steps):
        set_grads(groups, grads_for_step(groups, step, seed))
        opt.step()
    return groups, opt


def _assert_nearly_identical(a, b):
    """Almost every element bit-identical; the rest a few roundings apart (a float32 result
    on the edge of a low-precision rounding, then carried on by the state). The same
    criterion as the CPU suite's."""
    eps = torch.finfo(a.dtype).eps if a.dtype != torch.float32 else 1e-6
    if a.numel() == 0:
        return
    differing = int((a != b).sum())
    assert differing <= 1 + a.numel() // 200, f"{differing} of {a.numel()} elements differ"
    torch.testing.assert_close(a.float(), b.float(), rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("name", LARGE_CASES)
def test_many_small_tensors_match_torch(name):
    """2000 tensors: more than one launch's table for every kernel (1624 grads per norm
    launch, 541-902 tensors per update launch, 1800-3600 per step-prepare launch). The norm
    (two launches) is checked through the log against float64; the updates against torch."""
    _, tb_cls, torch_cls, kwargs = CASE[name]
    gen = torch.Generator().manual_seed(7)
    sizes = torch.randint(1, 300, (2000,), generator=gen).tolist()
    base = [torch.randn(n, generator=gen).to(DEVICE) for n in sizes]
    params = [b.clone().requires_grad_() for b in base]
    ref = [b.clone().requires_grad_() for b in base]
    opt = tb_cls(params, **kwargs, backend=BACKEND)
    topt = torch_cls(ref, **kwargs, foreach=False)
    g = torch.Generator().manual_seed(11)
    norms = []
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=g) * 0.01 for p in params]
        norms.append(math.sqrt(sum(float(x.double().square().sum()) for x in grads)))
        for p, r, grad in zip(params, ref, grads):
            p.grad, r.grad = grad.to(DEVICE), grad.to(DEVICE)
        opt.step()
        topt.step()
    log = opt.grad_norms()
    torch.testing.assert_close(log.norms.double(), torch.tensor(norms, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    assert_states_close(opt, topt, [params], [ref], **FLOAT32_TOL)


@pytest.mark.parametrize("name", LARGE_CASES)
def test_misaligned_views_and_chunk_boundaries(name):
    """Params and grads that are views at odd storage offsets (no vector loads possible)
    and sizes around the 65536-element chunk: the scalar path and the chunk tails."""
    _, tb_cls, torch_cls, kwargs = CASE[name]
    sizes = [1, 3, 65535, 65536, 65537, 2 * 65536 + 3]
    gen = torch.Generator().manual_seed(3)
    storage = torch.randn(sum(sizes) + 8, generator=gen).to(DEVICE)
    params, ref, start = [], [], 1  # offset 1 float: 4-byte aligned, not 16-byte aligned
    for i, n in enumerate(sizes):
        view = storage[start:start + n]
        # Every other param is misaligned; the aligned ones keep the vector path in play.
        p = torch.nn.Parameter(view if i % 2 == 0 else view.clone())
        params.append(p)
        ref.append(torch.nn.Parameter(view.detach().clone()))
        start += n
    if DEVICE == "cuda":
        assert params[0].data_ptr() % 16 != 0
    opt = tb_cls(params, **kwargs, backend=BACKEND)
    topt = torch_cls(ref, **kwargs, foreach=False)
    norms = []
    for step in range(5):
        grad_storage = torch.randn(sum(sizes) + 8, generator=gen).to(DEVICE)
        offset = 3
        for i, (p, r) in enumerate(zip(params, ref)):
            grad = grad_storage[offset:offset + p.numel()]  # offset 3: misaligned
            p.grad = grad if i % 2 == 0 else grad.clone()
            r.grad = grad.clone()
            offset += p.numel()
        norms.append(math.sqrt(sum(float(r.grad.double().square().sum()) for r in ref)))
        opt.step()
        topt.step()
    torch.testing.assert_close(opt.grad_norms().norms.double(),
                               torch.tensor(norms, dtype=torch.float64), rtol=1e-6, atol=0)
    assert_states_close(opt, topt, [params], [ref], **FLOAT32_TOL)


# ---------------------------------------------------------------- non-finite steps, GradScaler
@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_nonfinite_step_leaves_everything_bit_identical(name, bad):
    _, tb_cls, torch_cls, kwargs = CASE[name]
    groups = make_params(4, DEVICE)
    ref = clone_params(groups)
    opt = tb_cls(param_groups(groups, kwargs), **kwargs, backend=BACKEND, max_grad_norm=250.0)
    topt = torch_cls(param_groups(ref, kwargs), **kwargs, foreach=False)

    def step_both(step):
        grads = grads_for_step(groups, step, 4)
        set_grads(groups, grads)
        set_grads(ref, grads)
        torch.nn.utils.clip_grad_norm_([p for g in ref for p in g if p.grad is not None], 250.0)
        opt.step()
        topt.step()

    for step in range(3):
        step_both(step)
    before = [p.detach().clone() for g in groups for p in g]
    state_before = {(id(p), k): v.clone()
                    for g in groups for p in g for k, v in opt.state[p].items()}
    grads = grads_for_step(groups, 3, 4)
    grads[1][0].view(-1)[7] = bad
    set_grads(groups, grads)
    opt.step()  # torch never sees this step
    after = [p.detach() for g in groups for p in g]
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    for g in groups:
        for p in g:
            for k, v in opt.state[p].items():
                assert torch.equal(v, state_before[(id(p), k)]), k
    log = opt.grad_norms()
    assert log.skipped == 1 and log.steps == 4
    assert not math.isfinite(float(log.norms[-1]))
    for step in range(4, 7):
        step_both(step)
    assert_states_close(opt, topt, groups, ref, **FLOAT32_TOL)


def _scaled_losses(params, step, inject_inf):
    gen = torch.Generator().manual_seed(100 + step)
    loss = 0
    for p in params:
        c = torch.randn(p.shape, generator=gen).to(p.device)
        if inject_inf and p is params[0] and p.numel() > 0:
            c.view(-1)[0] = math.inf
        loss = loss + (p * c).sum() + 0.5 * (p * p).sum()
    return loss


@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
def test_grad_scaler_matches_torch_fused_adam(clip):
    """GradScaler hands grad_scale/found_inf to the step: inf steps are skipped without a
    host sync, and the scale evolves exactly as with torch's fused Adam."""
    if DEVICE != "cuda":
        pytest.skip("torch's fused Adam and GradScaler('cuda') need a GPU")
    params = [p for g in make_params(6, DEVICE) for p in g]
    ref = [p.detach().clone().requires_grad_() for p in params]
    max_norm = 20.0 if clip else None
    opt = tbo.Adam(params, lr=0.01, backend=BACKEND, max_grad_norm=max_norm)
    topt = torch.optim.Adam(ref, lr=0.01, fused=True)
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**12, growth_interval=3)
               for _ in range(2)]
    for step in range(12):
        inject = step in (4, 9)
        for o, ps, scaler in ((opt, params, scalers[0]), (topt, ref, scalers[1])):
            o.zero_grad(set_to_none=True)
            scaler.scale(_scaled_losses(ps, step, inject)).backward()
            if clip and o is topt:
                scaler.unscale_(o)
                torch.nn.utils.clip_grad_norm_(ps, max_norm)
            scaler.step(o)
            scaler.update()
        assert scalers[0].get_scale() == scalers[1].get_scale()
    for a, b in zip(params, ref):
        torch.testing.assert_close(a.detach(), b.detach(), **FLOAT32_TOL)
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"], topt.state[b]["exp_avg_sq"],
                                   **FLOAT32_TOL)
        assert float(opt.state[a]["step"]) == float(topt.state[b]["step"]) == 10.0
    log = opt.grad_norms()
    assert log.skipped == 2 and log.steps == 12
    if clip:
        assert log.clipped > 0


# ---------------------------------------------------------------- the ops directly
def test_grad_sq_norm_mixed_dtypes_is_exact_and_deterministic():
    gen = torch.Generator().manual_seed(1)
    sizes = [0, 1, 3, 65535, 65536, 65537, 200003]
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    grads = [torch.randn(n, generator=gen).to(DEVICE, dtypes[i % 3])
             for i, n in enumerate(sizes)]
    grads.append(torch.randn(3, 5, 7, generator=gen).to(DEVICE).transpose(0, 2))  # dense, permuted
    expected = sum(float(g.double().square().sum()) for g in grads)
    first = ops().grad_sq_norm(grads)
    second = ops().grad_sq_norm(grads)
    assert first.dtype == torch.float32 and first.shape == () and first.device.type == DEVICE
    assert torch.equal(first, second)  # fixed reduction order: bitwise reproducible
    assert float(first) == pytest.approx(expected, rel=1e-6)
    assert float(ops().grad_sq_norm([torch.empty(0, device=DEVICE)])) == 0.0


def test_step_control_equals_the_cpu_op_bit_for_bit():
    """Same function (math::finalize_step_control), same IEEE operations: same bits."""
    cases = []
    for sq in (None, 0.0, 4.0, 1.0e6, math.inf, math.nan):
        for scale in (None, 1024.0):
            for found in (None, 0.0, 1.0):
                for max_norm in (None, 1.0):
                    for skip in (True, False):
                        cases.append((sq, scale, found, max_norm, skip))
    results = {}
    for device in ("cpu", DEVICE):
        control = torch.tensor([1.0, 0.0], device=device)
        counters = torch.zeros(3, dtype=torch.int64, device=device)
        log = torch.full((5,), math.nan, device=device)
        history = []
        for sq, scale, found, max_norm, skip in cases:
            def scalar(v):
                return None if v is None else torch.tensor(v, dtype=torch.float32, device=device)
            ops().step_control_(scalar(sq), scalar(scale), scalar(found), control, counters,
                                log, max_norm, skip)
            history.append(control.cpu().clone())
        results[device] = (torch.stack(history), counters.cpu(), log.cpu())
    for a, b in zip(results["cpu"], results[DEVICE]):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("state_dtype_is_float32", [True, False], ids=["fp32_state", "same"])
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_adam_op_low_precision_params_with_float32_state(param_dtype, state_dtype_is_float32):
    """The ops take state in float32 for bf16/fp16 params; CUDA and CPU kernels agree."""
    gen = torch.Generator().manual_seed(2)
    sizes = [5, 65537, 1000]
    sdt = torch.float32 if state_dtype_is_float32 else param_dtype
    master = [torch.randn(n, generator=gen) for n in sizes]
    grads_per_step = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(6)]
    out = {}
    for device in ("cpu", DEVICE):
        params = [m.to(device, param_dtype) for m in master]
        m1 = [torch.zeros(n, device=device, dtype=sdt) for n in sizes]
        m2 = [torch.zeros(n, device=device, dtype=sdt) for n in sizes]
        steps = [torch.zeros((), device=device) for _ in sizes]
        control = torch.tensor([0.5, 0.0], device=device)  # a clip coefficient of 0.5
        for grads in grads_per_step:
            g = [x.to(device, param_dtype) for x in grads]
            ops().adam_step_(params, g, m1, m2, [], steps, control, None, 1e-2, 0.9, 0.999,
                             1e-8, 0.01, False, False, True, 0)
        out[device] = (params, m1, m2, steps)
    eps = torch.finfo(param_dtype).eps
    for a_list, b_list in zip(out["cpu"], out[DEVICE]):
        for a, b in zip(a_list, b_list):
            assert a.dtype == b.dtype
            tol = 1e-6 if a.dtype == torch.float32 else 2 * eps
            torch.testing.assert_close(b.cpu().float(), a.float(), rtol=tol, atol=1e-6)
    assert all(float(s) == 6.0 for s in out[DEVICE][3])


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_state_dict_from_torch_mid_training(name):
    _, tb_cls, torch_cls, kwargs = CASE[name]
    groups = make_params(8, DEVICE)
    ref = clone_params(groups)
    topt = torch_cls(param_groups(ref, kwargs), **kwargs, foreach=False)
    for step in range(4):
        set_grads(ref, grads_for_step(ref, step, 8))
        topt.step()
    with torch.no_grad():
        for g, r in zip(groups, ref):
            for p, q in zip(g, r):
                p.copy_(q)
    opt = tb_cls(param_groups(groups, kwargs), **kwargs, backend=BACKEND)
    opt.load_state_dict(copy.deepcopy(topt.state_dict()))
    for step in range(4, 9):
        grads = grads_for_step(groups, step, 8)
        set_grads(groups, grads)
        set_grads(ref, grads)
        opt.step()
        topt.step()
    assert_states_close(opt, topt, groups, ref, **FLOAT32_TOL)


def test_opcheck_every_op():
    dev = DEVICE
    p = [torch.randn(5, device=dev), torch.randn(70000, device=dev)]
    g = [torch.randn_like(x) for x in p]
    z = [torch.zeros_like(x) for x in p]
    steps = [torch.zeros((), device=dev) for _ in p]
    control = torch.tensor([1.0, 0.0], device=dev)
    t = torch.ops.tunebook
    ops()
    torch.library.opcheck(t.grad_sq_norm.default, (g,))
    torch.library.opcheck(
        t.step_control_.default,
        (torch.tensor(4.0, device=dev), None, None, control.clone(),
         torch.zeros(3, dtype=torch.int64, device=dev), torch.zeros(4, device=dev), 1.0, True))
    torch.library.opcheck(
        t.sgd_step_.default, ([x.clone() for x in p], g, [x.clone() for x in z], control, None,
                              0.1, 0.9, 0.0, 0.0, False, False, False))
    torch.library.opcheck(
        t.adam_step_.default,
        ([x.clone() for x in p], g, [x.clone() for x in z], [x.clone() for x in z], [],
         [s.clone() for s in steps], control, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False,
         False, 0))
    torch.library.opcheck(
        t.rmsprop_step_.default,
        ([x.clone() for x in p], g, [x.clone() for x in z], [x.clone() for x in z],
         [x.clone() for x in z], [s.clone() for s in steps], control, None, 1e-2, 0.99, 1e-8,
         0.0, 0.9, True, False, 0))
    torch.library.opcheck(
        t.nadam_step_.default,
        ([x.clone() for x in p], g, [x.clone() for x in z], [x.clone() for x in z],
         [torch.ones((), device=dev) for _ in p], [s.clone() for s in steps], control, None,
         2e-3, 0.9, 0.999, 1e-8, 0.0, 4e-3, False, False, 0))


# ---------------------------------------------------------------- GPU only
def _mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
    ).cuda()


def _batches(n, inf_at=()):
    gen = torch.Generator().manual_seed(9)
    out = []
    for i in range(n):
        x = torch.randn(16, 32, generator=gen) * (1 + i % 3)
        y = torch.randn(16, 8, generator=gen)
        if i in inf_at:
            x[0, 0] = math.inf
        out.append((x.cuda(), y.cuda()))
    return out


def _train_step(model, opt, scaler, x, y):
    with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None,
                        cache_enabled=False):
        loss = torch.nn.functional.mse_loss(model(x).float(), y)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loss


@gpu_only
@pytest.mark.parametrize("use_scaler", [False, True], ids=["fp32", "amp_gradscaler"])
def test_cuda_graph_captures_a_full_training_step(use_scaler):
    """Forward, backward, GradScaler, global-norm clipping, the norm log and the update are
    captured once and replayed; the replays equal the same steps run eagerly."""
    warmup, replays = 3, 8
    batches = _batches(warmup + replays, inf_at=(warmup + 4,) if use_scaler else ())
    models = [_mlp(0), _mlp(0)]
    opts = [tbo.Adam(m.parameters(), lr=1e-2, max_grad_norm=0.1, backend="cuda") for m in models]
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**10, growth_interval=2)
               if use_scaler else None for _ in models]
    graphed, eager = 0, 1

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in batches[:warmup]:
            for k in (graphed, eager):
                opts[k].zero_grad(set_to_none=True)
                _train_step(models[k], opts[k], scalers[k], x, y)
    torch.cuda.current_stream().wait_stream(side)

    static_x = batches[0][0].clone()
    static_y = batches[0][1].clone()
    graph = torch.cuda.CUDAGraph()
    opts[graphed].zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        _train_step(models[graphed], opts[graphed], scalers[graphed], static_x, static_y)
    # Capturing runs nothing: the log still holds the warm-up steps only.
    assert opts[graphed].grad_norms().steps == warmup

    before = [p.detach().clone() for p in models[graphed].parameters()]
    for x, y in batches[warmup:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        opts[eager].zero_grad(set_to_none=True)
        _train_step(models[eager], opts[eager], scalers[eager], x, y)
    torch.cuda.synchronize()

    assert any(not torch.equal(a, p) for a, p in zip(before, models[graphed].parameters()))
    for a, b in zip(models[graphed].parameters(), models[eager].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    logs = [o.grad_norms() for o in opts]
    assert logs[graphed].steps == logs[eager].steps == warmup + replays
    assert logs[graphed].clipped == logs[eager].clipped > 0
    assert logs[graphed].skipped == logs[eager].skipped == (1 if use_scaler else 0)
    torch.testing.assert_close(logs[graphed].norms, logs[eager].norms, rtol=1e-4, atol=0,
                               equal_nan=True)
    if use_scaler:
        assert scalers[graphed].get_scale() == scalers[eager].get_scale()


@gpu_only
def test_cuda_graph_step_matches_torch_clip_and_adam():
    """The captured fp32 step against torch run eagerly: clip_grad_norm_ + Adam(foreach=False)."""
    warmup, replays = 2, 6
    batches = _batches(warmup + replays)
    model, ref = _mlp(1), _mlp(1)
    opt = tbo.Adam(model.parameters(), lr=1e-2, max_grad_norm=0.5, backend="cuda")
    topt = torch.optim.Adam(ref.parameters(), lr=1e-2, foreach=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in batches[:warmup]:
            opt.zero_grad(set_to_none=True)
            _train_step(model, opt, None, x, y)
    torch.cuda.current_stream().wait_stream(side)
    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        _train_step(model, opt, None, static_x, static_y)
    for i, (x, y) in enumerate(batches):
        if i >= warmup:
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(ref(x), y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5, foreach=False)
        topt.step()
    torch.cuda.synchronize()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@gpu_only
def test_launches_per_step_do_not_grow_with_tensor_count():
    """2000 small tensors, Adam + clipping + log: 2 norm launches + 1 final sum + 1 step
    control + 1 step prepare + 4 update launches = 9, where torch's clip_grad_norm_ +
    Adam(fused=True) needs ~100."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(int(n), generator=gen).cuda().requires_grad_()
              for n in torch.randint(1, 300, (2000,), generator=gen)]
    opt = tbo.Adam(params, lr=1e-3, max_grad_norm=1.0, backend="cuda")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # lazy state init outside the profiled step
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]
    assert 0 < len(kernels) <= 9, kernels


@gpu_only
def test_64bit_indexing_past_two_to_the_31_elements():
    """One bf16 tensor of 2^31 + 5 elements (~8.6 GB with its grad): the norm and the update
    reach the elements beyond int32 range."""
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip(f"needs ~12 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    n = 2**31 + 5
    p = torch.ones(n, dtype=torch.bfloat16, device="cuda").requires_grad_()
    p.grad = torch.full((n,), 0.5, dtype=torch.bfloat16, device="cuda")
    tail = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.bfloat16, device="cuda")
    p.grad[-5:] = tail
    opt = tbo.SGD([p], lr=1.0, backend="cuda")
    opt.step()
    expected_sq = 0.25 * (n - 5) + 55.0
    log = opt.grad_norms()
    assert float(log.norms[-1]) == pytest.approx(math.sqrt(expected_sq), rel=1e-6)
    got = p.detach()
    assert torch.all(got[:8] == 0.5)
    assert torch.all(got[2**31 - 4:2**31 + 1] == 0.5)  # across the int32 boundary
    assert torch.equal(got[-5:].float(), 1.0 - tail.float())
    del p, got, opt
    torch.cuda.empty_cache()


# ================================================================ GPU-only checks (issue 14)
# Each test below stands alone (its own params, optimizers and seeds) and says in its
# failure message what went wrong, so that one GPU run gives a readable report. The ones
# that need no GPU feature beyond the kernels also run with TUNEBOOK_CUDA_TESTS_ON_CPU=1.


def _snapshot(opt, params):
    """Copies of every param and state tensor, to check a skipped step changed nothing."""
    return ([p.detach().clone() for p in params],
            {(i, k): v.clone() for i, p in enumerate(params) for k, v in opt.state[p].items()})


def _assert_unchanged(opt, params, snapshot, what):
    before, state_before = snapshot
    for i, (a, p) in enumerate(zip(before, params)):
        assert torch.equal(a, p.detach()), f"{what}: param {i} changed"
    for i, p in enumerate(params):
        for k, v in opt.state[p].items():
            assert torch.equal(v, state_before[(i, k)]), f"{what}: state[{k!r}] of param {i} changed"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_finite_grads_whose_norm_overflows_float32_skip_the_step(name, dtype):
    """Every gradient element finite (1e20 fits float32 and bf16), but the sum of squares
    (4e40) is above the float32 maximum: the norm is inf, the step is skipped and counted,
    nothing changes, and the next ordinary step goes ahead. (The CPU kernels must do the
    same: the contract is one for both backends.)"""
    _, tb_cls, _, kwargs = CASE[name]
    groups = make_params(12, DEVICE, dtype=dtype)
    params = [p for g in groups for p in g]
    opt = tb_cls(param_groups(groups, kwargs), **kwargs, backend=BACKEND, max_grad_norm=1.0)
    set_grads(groups, grads_for_step(groups, 0, 12))
    opt.step()
    grads = grads_for_step(groups, 1, 12)
    grads[1][0].view(-1)[:4] = 1e20
    set_grads(groups, grads)
    assert all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
    snapshot = _snapshot(opt, params)
    opt.step()
    _assert_unchanged(opt, params, snapshot, "a step whose norm overflows float32")
    log = opt.grad_norms()
    assert (log.steps, log.skipped) == (2, 1), f"steps/skipped = {log.steps}/{log.skipped}"
    assert float(log.norms[-1]) == math.inf, f"logged norm {float(log.norms[-1])}, expected inf"
    set_grads(groups, grads_for_step(groups, 2, 12))
    opt.step()
    log = opt.grad_norms()
    assert (log.steps, log.skipped) == (3, 1) and math.isfinite(float(log.norms[-1]))
    assert any(not torch.equal(a, p.detach()) for a, p in zip(snapshot[0], params)), (
        "the step after the skipped one changed nothing")


@gpu_only
def test_grad_scaler_step_leaves_grads_and_version_counters_as_torch_fused_adam():
    """What GradScaler users see after ``scaler.step(opt)``: the ``.grad`` tensors (torch's
    fused Adam writes the unscaled gradient back) and how far each param's, grad's and
    state tensor's ``_version`` moved (autograd's in-place checks and torch.compile read
    them). Compared, step by step, with torch.optim.Adam(fused=True) on the same GPU."""
    params = [p for g in make_params(6, "cuda") for p in g if p.numel() > 0]
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt = tbo.Adam(params, lr=0.01, backend="cuda")
    topt = torch.optim.Adam(ref, lr=0.01, fused=True)
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**12) for _ in range(2)]
    for step in range(3):
        seen = []
        for o, ps, scaler in ((opt, params, scalers[0]), (topt, ref, scalers[1])):
            o.zero_grad(set_to_none=True)
            scaler.scale(_scaled_losses(ps, step, False)).backward()
            state_versions = [{k: v._version for k, v in o.state[p].items()} for p in ps]
            versions = [(p._version, p.grad._version) for p in ps]
            scaler.step(o)
            scaler.update()
            torch.cuda.synchronize()
            moved = [(p._version - a, p.grad._version - b) for p, (a, b) in zip(ps, versions)]
            state_moved = [{k: v._version - before.get(k, v._version) for k, v in o.state[p].items()}
                           for p, before in zip(ps, state_versions)]
            seen.append(([p.grad.detach().clone() for p in ps], moved, state_moved))
        (tb_grads, tb_moved, tb_state), (t_grads, t_moved, t_state) = seen
        for i, (a, b) in enumerate(zip(tb_grads, t_grads)):
            ratio = float((a.double().norm() / b.double().norm().clamp_min(1e-30)))
            torch.testing.assert_close(
                a, b, rtol=1e-6, atol=1e-7,
                msg=lambda m, i=i, r=ratio: f"step {step}, param {i}: .grad after scaler.step "
                f"differs from torch fused Adam's (norm ratio tunebook/torch {r:.6g}): {m}")
        assert tb_moved == t_moved, (
            f"step {step}: (param, grad) _version increments per param: tunebook {tb_moved}, "
            f"torch fused Adam {t_moved}")
        if step > 0:  # step 0 creates the state
            assert tb_state == t_state, (
                f"step {step}: state _version increments: tunebook {tb_state}, torch {t_state}")


def _family_op_call(family, impl, params, grads, state, control):
    """One update of `family` through `impl` (the compiled ops or the reference module),
    with torch's defaults plus momentum/weight decay where the family has them."""
    if family == "sgd":
        impl.sgd_step_(params, grads, state["momentum_buffer"], control, None, 0.05, 0.9, 0.1,
                       0.01, True, False, state.pop("first", False))
    elif family == "rmsprop":
        impl.rmsprop_step_(params, grads, state["square_avg"], state["grad_avg"],
                           state["momentum_buffer"], state["step"], control, None, 1e-2, 0.99,
                           1e-8, 0.01, 0.9, True, False, 0)
    elif family == "nadam":
        impl.nadam_step_(params, grads, state["exp_avg"], state["exp_avg_sq"],
                         state["mu_product"], state["step"], control, None, 2e-3, 0.9, 0.999,
                         1e-8, 0.01, 4e-3, False, False, 0)
    else:
        impl.adam_step_(params, grads, state["exp_avg"], state["exp_avg_sq"], [], state["step"],
                        control, None, 1e-2, 0.9, 0.999, 1e-8, 0.01, False, False, True, 0)


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", ["sgd", "rmsprop", "nadam", "adam"])
def test_low_precision_params_with_float32_state_every_family(family, param_dtype):
    """bf16/fp16 params and grads with float32 state (master-weight style), through the
    kernels and through the pure-torch reference ops on the same device, 6 steps with a
    clip coefficient of 0.5: state agrees to float32 rounding, params to one rounding of
    their dtype."""
    from tunebook.optim import _reference

    gen = torch.Generator().manual_seed(21)
    sizes = [5, 65537, 1000, 3]
    master = [torch.randn(n, generator=gen) for n in sizes]
    grads_per_step = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(6)]
    keys = {"sgd": ["momentum_buffer"],
            "rmsprop": ["square_avg", "grad_avg", "momentum_buffer"],
            "nadam": ["exp_avg", "exp_avg_sq"], "adam": ["exp_avg", "exp_avg_sq"]}[family]
    out = {}
    for name, impl in (("kernel", ops()), ("reference", _reference)):
        params = [m.to(DEVICE, param_dtype) for m in master]
        state = {k: [torch.zeros(n, device=DEVICE) for n in sizes] for k in keys}
        state["step"] = [torch.zeros((), device=DEVICE) for _ in sizes]
        state["mu_product"] = [torch.ones((), device=DEVICE) for _ in sizes]
        state["first"] = True
        control = torch.tensor([0.5, 0.0], device=DEVICE)
        for grads in grads_per_step:
            g = [x.to(DEVICE, param_dtype) for x in grads]
            _family_op_call(family, impl, params, g, state, control)
        out[name] = (params, {k: state[k] for k in keys})
    (kp, ks), (rp, rs) = out["kernel"], out["reference"]
    for i, (a, b) in enumerate(zip(kp, rp)):
        assert a.dtype == param_dtype, f"param {i} became {a.dtype}"
        _assert_nearly_identical(a, b)
    for k in keys:
        for i, (a, b) in enumerate(zip(ks[k], rs[k])):
            assert a.dtype == torch.float32, f"state {k}[{i}] became {a.dtype}"
            # The state reads the param (weight decay): where the two params are a rounding
            # of their dtype apart, the state follows, by up to ~wd * eps * |p|.
            loose = ~torch.isclose(a, b, rtol=1e-5, atol=1e-6)
            assert int(loose.sum()) <= 1 + a.numel() // 200, (
                f"state {k}[{i}]: {int(loose.sum())} of {a.numel()} elements differ")
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-4,
                                       msg=lambda m, k=k, i=i: f"state {k}[{i}]: {m}")


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_mixed_dtype_param_groups_end_to_end(name):
    """Three groups (float32; bf16; float16 plus one float32 param) in one optimizer with
    clipping: one global norm over all dtypes (checked against float64), one update call per
    group and dtype, and the same result as the reference path on the same device."""
    _, tb_cls, _, kwargs = CASE[name]
    lr = kwargs.get("lr", 1e-3)
    layout = [[(torch.float32, (3, 4)), (torch.float32, (40000,))],
              [(torch.bfloat16, (7, 3)), (torch.bfloat16, (65537,))],
              [(torch.float16, (5,)), (torch.float32, (11,)), (torch.float16, (1000,))]]
    gen = torch.Generator().manual_seed(31)
    init = [[(torch.randn(s, generator=gen), dt) for dt, s in group] for group in layout]
    grads = [[[torch.randn(s, generator=gen) * 0.3 for _, s in group] for group in layout]
             for _ in range(8)]
    runs = {}
    for backend in (BACKEND, "reference"):
        groups = [[x.to(DEVICE, dt).requires_grad_() for x, dt in group] for group in init]
        spec = [dict(params=groups[0]), dict(params=groups[1], lr=lr * 0.5),
                dict(params=groups[2], lr=lr * 2)]
        opt = tb_cls(spec, **kwargs, backend=backend, max_grad_norm=5.0)
        norms = []
        for step_grads in grads:
            for group, row in zip(groups, step_grads):
                for p, g in zip(group, row):
                    p.grad = g.to(DEVICE, p.dtype)
            norms.append(math.sqrt(sum(float(p.grad.double().square().sum())
                                       for group in groups for p in group)))
            opt.step()
        runs[backend] = (groups, opt, norms)
    (groups, opt, norms), (ref_groups, ref_opt, _) = runs[BACKEND], runs["reference"]
    log = opt.grad_norms()
    assert log.steps == len(norms) and log.skipped == 0
    torch.testing.assert_close(log.norms.double(), torch.tensor(norms, dtype=torch.float64),
                               rtol=1e-5, atol=0, msg=lambda m: f"global norm: {m}")
    assert log.clipped > 0, "max_grad_norm=5 should clip some of these steps"
    for gi, (ga, gb) in enumerate(zip(groups, ref_groups)):
        for pi, (a, b) in enumerate(zip(ga, gb)):
            assert a.dtype == b.dtype
            if a.dtype == torch.float32:
                torch.testing.assert_close(a.detach(), b.detach(), **FLOAT32_TOL,
                                           msg=lambda m, gi=gi, pi=pi: f"group {gi} param {pi}: {m}")
            else:
                _assert_nearly_identical(a.detach(), b.detach())


def _graph_run(name, sizes, steps, warmup, max_grad_norm=1.0, seed=0):
    """`steps` steps of CASE[name] with a device lr that changes every step: `warmup` eager
    steps on a side stream, then one captured step replayed for the rest (grads and lr
    rewritten in place before each replay). Returns (params, optimizer, grads per step,
    lr per step, initial values)."""
    _, tb_cls, _, kwargs = CASE[name]
    kwargs = dict(kwargs)
    base_lr = kwargs.pop("lr")
    lrs = [base_lr * (1.0 - 0.08 * i) for i in range(steps)]
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(n, generator=gen) for n in sizes]
    grads = [[torch.randn(n, generator=gen) * 0.1 for n in sizes] for _ in range(steps)]
    params = [x.cuda().requires_grad_() for x in init]
    static_grads = [torch.zeros(n, device="cuda") for n in sizes]
    for p, g in zip(params, static_grads):
        p.grad = g
    lr = torch.tensor(lrs[0], device="cuda")
    opt = tb_cls(params, lr=lr, **kwargs, backend="cuda", max_grad_norm=max_grad_norm)

    def load(i):
        for sg, g in zip(static_grads, grads[i]):
            sg.copy_(g)
        lr.fill_(lrs[i])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(warmup):
            load(i)
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            opt.step()
    except RuntimeError as error:
        pytest.fail(f"capturing {tb_cls.__name__}.step() after {warmup} eager steps failed "
                    f"(host copies or syncs inside step()?): {error}")
    for i in range(warmup, steps):
        load(i)
        graph.replay()
    torch.cuda.synchronize()
    return params, opt, grads, lrs, init


@gpu_only
@pytest.mark.parametrize("scenario", ["device_lr", "1000_tensors", "first_step"])
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_cuda_graph_replays_match_torch(name, scenario):
    """One captured step of every family (Adam with AMSGrad among them) replayed with new
    grads and a device lr rewritten in place between replays, against torch's single-tensor
    optimizer run eagerly with the same lr per step and clip_grad_norm_:
      device_lr:    a few tensors, 2 warm-up steps, 6 replays;
      1000_tensors: more tensors than one launch of any update kernel holds (541 Adam,
                    624 RMSprop/NAdam, 902 SGD), so the graph holds several launches;
      first_step:   the very first step is captured (no warm-up): state and buffers must
                    be created without host copies, and replays must not redo their
                    initialisation."""
    sizes = {"device_lr": [5, 3, 65537, 1000, 130],
             "1000_tensors": [1 + (i * 37) % 64 for i in range(1000)],
             "first_step": [5, 3, 65537, 1000, 130]}[scenario]
    warmup = 0 if scenario == "first_step" else 2
    steps = 8
    params, opt, grads, lrs, init = _graph_run(name, sizes, steps, warmup)
    _, _, torch_cls, kwargs = CASE[name]
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    ref = [x.cuda().requires_grad_() for x in init]
    topt = torch_cls(ref, lr=lrs[0], **kwargs, foreach=False)
    norms = []
    for i in range(steps):
        for r, g in zip(ref, grads[i]):
            r.grad = g.cuda()
        norms.append(math.sqrt(sum(float(g.double().square().sum()) for g in grads[i])))
        torch.nn.utils.clip_grad_norm_(ref, 1.0, foreach=False)
        topt.param_groups[0]["lr"] = lrs[i]
        topt.step()
    hint = (" (is state or buffer initialisation captured into the graph and redone by every "
            "replay?)" if scenario == "first_step" else "")
    log = opt.grad_norms()
    assert log.steps == steps, (
        f"{log.steps} steps logged, expected {steps} ({warmup} eager){hint}")
    torch.testing.assert_close(log.norms.double(), torch.tensor(norms, dtype=torch.float64),
                               rtol=1e-5, atol=0, msg=lambda m: f"logged norms{hint}: {m}")
    try:
        assert_states_close(opt, topt, [params], [ref], rtol=1e-4, atol=1e-6)
    except AssertionError as error:
        raise AssertionError(f"replayed steps differ from torch's eager ones{hint}: {error}") from None


@gpu_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("name", ["adam_amsgrad_wd", "sgd_nesterov_wd", "rmsprop_centered_momentum_wd",
                                  "nadam_decoupled"])
def test_params_on_the_second_gpu_while_the_first_is_current(name):
    """Every launch goes to the params' device and its current stream: nothing is allocated
    on or launched to cuda:0, and the results equal torch's on cuda:1."""
    _, tb_cls, torch_cls, kwargs = CASE[name]
    torch.cuda.set_device(0)
    groups = make_params(5, "cuda:1")
    ref = clone_params(groups)
    torch.cuda.synchronize(0)
    allocated = torch.cuda.memory_allocated(0)
    opt = tb_cls(param_groups(groups, kwargs), **kwargs, backend="cuda", max_grad_norm=250.0)
    topt = torch_cls(param_groups(ref, kwargs), **kwargs, foreach=False)
    for step in range(5):
        grads = grads_for_step(groups, step, 5)
        set_grads(groups, grads)
        set_grads(ref, grads)
        torch.nn.utils.clip_grad_norm_([p for g in ref for p in g if p.grad is not None], 250.0)
        opt.step()
        topt.step()
    torch.cuda.synchronize(1)
    assert torch.cuda.current_device() == 0, "the step changed the current device"
    assert torch.cuda.memory_allocated(0) == allocated, "the step allocated memory on cuda:0"
    for g in groups:
        for p in g:
            for k, v in opt.state[p].items():
                assert v.device == p.device, f"state[{k!r}] on {v.device}, param on {p.device}"
    assert_states_close(opt, topt, groups, ref, **FLOAT32_TOL)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_channels_last_params(name):
    """4-D conv weights in channels_last: the kernels read flat storage, so the update must
    follow the params' layout; grads arrive channels_last (what autograd gives) or
    contiguous (then copied into the param's layout). Against torch, param layout kept."""
    _, tb_cls, torch_cls, kwargs = CASE[name]
    gen = torch.Generator().manual_seed(41)
    shapes = [(8, 4, 3, 3), (16, 8, 5, 5), (3, 2, 1, 1), (4, 3, 2, 7)]
    params = [torch.randn(s, generator=gen).to(DEVICE).to(memory_format=torch.channels_last)
              .requires_grad_() for s in shapes]
    ref = [p.detach().clone(memory_format=torch.channels_last).requires_grad_() for p in params]
    opt = tb_cls(params, **kwargs, backend=BACKEND, max_grad_norm=2.0)
    topt = torch_cls(ref, **kwargs, foreach=False)
    for step in range(6):
        for i, (p, r) in enumerate(zip(params, ref)):
            g = torch.randn(p.shape, generator=gen).to(DEVICE)
            if (i + step) % 2 == 0:
                g = g.contiguous(memory_format=torch.channels_last)
            p.grad, r.grad = g.clone(), g.clone()
        torch.nn.utils.clip_grad_norm_(ref, 2.0, foreach=False)
        opt.step()
        topt.step()
    for i, p in enumerate(params):
        assert p.is_contiguous(memory_format=torch.channels_last), f"param {i} lost its layout"
        for k, v in opt.state[p].items():
            if v.dim() == 4:
                assert v.stride() == p.stride(), f"state[{k!r}] of param {i}: strides {v.stride()}"
    assert_states_close(opt, topt, [params], [ref], **FLOAT32_TOL)


def _expected_launches(name: str, n: int) -> int:
    """Kernel launches of one step over n tensors of one dtype with clipping and the log,
    from the launchers' table sizes (csrc/cuda/*.cu): the norm's partials
    (ceil(n / 1624)), its final sum, step control, the step-prepare kernel where the family
    keeps a step (Adam, RMSprop: 3600 per launch; NAdam: 1800) and the updates (Adam 541,
    RMSprop/NAdam 624, SGD 902 tensors per launch)."""
    ceil = lambda a, b: -(-a // b)  # noqa: E731
    family = name.split("_")[0]
    prepare = {"adam": ceil(n, 3600), "rmsprop": ceil(n, 3600), "nadam": ceil(n, 1800),
               "sgd": 0}[family]
    update = ceil(n, {"adam": 541, "rmsprop": 624, "nadam": 624, "sgd": 902}[family])
    return ceil(n, 1624) + 1 + 1 + prepare + update


@gpu_only
@pytest.mark.parametrize("name", ["sgd_momentum", "rmsprop_centered_momentum_wd", "adam",
                                  "adam_amsgrad_wd", "nadam"])
def test_launches_per_step_every_family(name):
    """2000 small float32 tensors, clipping and the log: exactly the launches the table
    sizes predict (Adam 9, SGD 7, RMSprop 9, NAdam 10), all of them tunebook's kernels."""
    from torch.profiler import ProfilerActivity, profile

    _, tb_cls, _, kwargs = CASE[name]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(int(n), generator=gen).cuda().requires_grad_()
              for n in torch.randint(1, 300, (2000,), generator=gen)]
    opt = tb_cls(params, **kwargs, max_grad_norm=1.0, backend="cuda")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # lazy state init and SGD's first-step buffer copy outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]
    expected = _expected_launches(name, len(params))
    others = [k for k in kernels if "tunebook" not in k]
    assert not others, f"kernels other than tunebook's in a step: {others}"
    assert len(kernels) == expected, (
        f"{len(kernels)} launches, expected {expected}: {[k[:80] for k in kernels]}")


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_of_a_step_matches_eager(compile_backend):
    """``torch.compile`` of a function that calls ``opt.step()``: dynamo traces the step,
    the ops' fake kernels give the shapes, functionalisation handles the in-place
    (``Tensor(a!)[]``) schemas; the compiled steps equal eager ones."""
    if DEVICE == "cpu" and compile_backend == "inductor":
        pytest.skip("inductor on the CPU is slow to compile here; the GPU run covers it")
    torch._dynamo.reset()
    groups = make_params(51, DEVICE)
    twin = clone_params(groups)
    compiled_opt = tbo.Adam(param_groups(groups, {"lr": 0.01}), lr=0.01, backend=BACKEND,
                            max_grad_norm=250.0)
    eager_opt = tbo.Adam(param_groups(twin, {"lr": 0.01}), lr=0.01, backend=BACKEND,
                         max_grad_norm=250.0)

    @torch.compile(backend=compile_backend)
    def compiled_step():
        compiled_opt.step()

    for step in range(5):
        grads = grads_for_step(groups, step, 51)
        set_grads(groups, grads)
        set_grads(twin, grads)
        compiled_step()
        eager_opt.step()
    assert_states_close(compiled_opt, eager_opt, groups, twin, rtol=1e-6, atol=1e-7)
    a, b = compiled_opt.grad_norms(), eager_opt.grad_norms()
    assert (a.steps, a.clipped, a.skipped) == (b.steps, b.clipped, b.skipped) == (5, a.clipped, 0)
    torch.testing.assert_close(a.norms, b.norms, rtol=1e-6, atol=0)


_SANITIZER_WORKLOAD = """
import torch
import tunebook.optim as tbo

assert "cuda" in tbo.library_backends(), "the CUDA kernels did not build"
gen = torch.Generator().manual_seed(0)
sizes = [1, 3, 4099, 65537]
families = [(tbo.SGD, dict(momentum=0.9, nesterov=True)),
            (tbo.RMSprop, dict(centered=True, momentum=0.9)),
            (tbo.Adam, dict(amsgrad=True, weight_decay=0.01)), (tbo.NAdam, dict())]
for cls, kwargs in families:
    for dtype in (torch.float32, torch.bfloat16):
        storage = torch.randn(sum(sizes) + 8, generator=gen).to("cuda", dtype)
        params, start = [], 1
        for i, n in enumerate(sizes):  # odd offsets: the scalar path and the norm's heads
            view = storage[start:start + n]
            params.append(torch.nn.Parameter(view if i % 2 == 0 else view.clone()))
            start += n
        opt = cls(params, lr=1e-3, max_grad_norm=1.0, **kwargs)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to("cuda", dtype)
            opt.step()
        torch.cuda.synchronize()
        print(cls.__name__, dtype, opt.grad_norms().steps, flush=True)
print("sanitizer workload done", flush=True)
"""


def _compute_sanitizer() -> str | None:
    from tunebook.optim._cuda_toolkit import cuda_home

    candidates = [shutil.which("compute-sanitizer")]
    for root in (cuda_home(), Path("/usr/local/cuda")):
        if root is not None:
            candidates += [root / "bin" / "compute-sanitizer",
                           root / "compute-sanitizer" / "compute-sanitizer"]
    return next((str(c) for c in candidates if c and Path(c).exists()), None)


@gpu_only
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer_finds_nothing(tool, tmp_path):
    """Every family, float32 and bf16, aligned and misaligned tensors, two steps each,
    under compute-sanitizer (torch's caching allocator off, so that an access past a
    tensor's end leaves its allocation). Skips where the sanitizer is missing or refuses
    the device (it does under gVisor); TUNEBOOK_SANITIZER_TIMEOUT (s) bounds each tool."""
    exe = _compute_sanitizer()
    if exe is None:
        pytest.skip("compute-sanitizer not found (PATH, the CUDA toolkit, /usr/local/cuda)")
    script = tmp_path / "workload.py"
    script.write_text(_SANITIZER_WORKLOAD)
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    timeout = float(os.environ.get("TUNEBOOK_SANITIZER_TIMEOUT", "240"))
    cmd = [exe, "--tool", tool, "--error-exitcode", "99", "--print-limit", "20",
           sys.executable, str(script)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired as error:
        out = (error.stdout or b"")[-3000:]
        pytest.fail(f"{tool} did not finish in {timeout:.0f} s: {out!r}")
    out = proc.stdout + proc.stderr
    if "Device not supported" in out or "device is not supported" in out.lower():
        pytest.skip(f"compute-sanitizer refuses this device: {out[-500:]}")
    assert "sanitizer workload done" in proc.stdout, f"the workload did not finish:\n{out[-6000:]}"
    assert proc.returncode == 0, f"{tool} reported errors (exit {proc.returncode}):\n{out[-6000:]}"
    assert not re.search(r"ERROR SUMMARY: [1-9]|\(([1-9]\d*) errors", out), out[-6000:]
