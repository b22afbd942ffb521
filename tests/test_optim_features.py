"""tunebook.optim beyond the update rule: non-finite skipping, the norm log, GradScaler,
state_dict compatibility with torch.optim, lr schedulers, errors."""

from __future__ import annotations

import collections
import io
import math

import pytest
import torch

import tunebook.optim as tbo
from optim_cases import (
    CASE_IDS, CASES, assert_states_close, clone_params, grads_for_step, make_params,
    param_groups, set_grads,
)

BACKENDS = ["cpu", "reference"]
TOL = dict(rtol=1e-5, atol=1e-5)
FAMILY_CASES = [CASES[CASE_IDS.index(n)] for n in (
    "sgd_dampening_max", "rmsprop_centered_momentum_wd", "adam_amsgrad_wd", "adamw",
    "nadam_decoupled")]
FAMILY_IDS = [c[0] for c in FAMILY_CASES]


def _snapshot(opt, groups):
    params = [p.detach().clone() for g in groups for p in g]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for g in groups for p in g]
    return params, states


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("case", FAMILY_CASES, ids=FAMILY_IDS)
def test_nonfinite_step_is_skipped_bit_identically(case, bad, backend):
    _, tb_cls, torch_cls, kwargs = case
    groups = make_params(5)
    ref = clone_params(groups)
    opt = tb_cls(param_groups(groups, kwargs), **kwargs, backend=backend, max_grad_norm=250.0)
    topt = torch_cls(param_groups(ref, kwargs), **kwargs, foreach=False)
    for step in range(8):
        grads = grads_for_step(groups, step, 5)
        set_grads(groups, grads)
        if step == 4:  # one bad element: the whole step is skipped, torch never sees it
            before = _snapshot(opt, groups)
            groups[1][0].grad[123] = bad
            opt.step()
            after = _snapshot(opt, groups)
            for a, b in zip(before[0], after[0]):
                assert torch.equal(a, b)
            for sa, sb in zip(before[1], after[1]):
                assert sa.keys() == sb.keys()
                for key in sa:
                    assert torch.equal(sa[key], sb[key]), key
            continue
        set_grads(ref, grads)
        torch.nn.utils.clip_grad_norm_([p for g in ref for p in g if p.grad is not None], 250.0)
        opt.step()
        topt.step()
    assert_states_close(opt, topt, groups, ref, **TOL)
    log = opt.grad_norms()
    assert (log.steps, log.skipped) == (8, 1)
    assert not math.isfinite(log.norms[4])
    assert math.isnan(log.norms[4]) == math.isnan(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_nonfinite_off_lets_nan_through_like_torch(backend):
    p = torch.ones(4, requires_grad=True)
    opt = tbo.SGD([p], lr=0.1, skip_nonfinite=False, backend=backend)
    p.grad = torch.tensor([1.0, math.nan, 1.0, 1.0])
    opt.step()
    assert math.isnan(p[1].item()) and float(p.detach()[0]) == pytest.approx(0.9)
    assert opt.grad_norms().skipped == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_log_ring_buffer_and_switches(backend):
    p = torch.zeros(3, requires_grad=True)
    opt = tbo.Adam([p], norm_log_capacity=4, backend=backend)
    assert opt.grad_norms().steps == 0 and opt.grad_norms().norms.numel() == 0
    for k in range(1, 11):
        p.grad = torch.tensor([3.0 * k, 4.0 * k, 0.0])
        opt.step()
    log = opt.grad_norms()
    assert log.steps == 10 and log.clipped == 0 and log.max_grad_norm is None
    torch.testing.assert_close(log.norms, torch.tensor([35.0, 40.0, 45.0, 50.0]))
    off = tbo.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, log_grad_norm=False,
                  skip_nonfinite=False, backend=backend)
    off.param_groups[0]["params"][0].grad = torch.ones(2)
    off.step()
    assert off.grad_norms().norms.numel() == 0 and off.grad_norms().steps == 1


@pytest.mark.parametrize("case", FAMILY_CASES, ids=FAMILY_IDS)
@pytest.mark.parametrize("direction", ["torch_to_tunebook", "tunebook_to_torch"])
def test_state_dict_round_trips_with_torch(case, direction):
    _, tb_cls, torch_cls, kwargs = case
    groups = make_params(9)
    ref = clone_params(groups)
    tb_opt = tb_cls(param_groups(groups, kwargs), **kwargs)
    torch_opt = torch_cls(param_groups(ref, kwargs), **kwargs, foreach=False)
    source, source_groups = (torch_opt, ref) if direction == "torch_to_tunebook" else (tb_opt, groups)
    for step in range(6):
        set_grads(source_groups, grads_for_step(source_groups, step, 9))
        source.step()
    # Copy the params across and load the state_dict, then continue both in lockstep.
    for ga, gb in zip(groups, ref):
        for a, b in zip(ga, gb):
            (a if source is torch_opt else b).data.copy_((b if source is torch_opt else a).data)
    target = tb_opt if source is torch_opt else torch_opt
    buffer = io.BytesIO()  # through torch.save, as a checkpoint would: no shared tensors
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))
    for step in range(6, 14):
        grads = grads_for_step(groups, step, 9)
        set_grads(groups, grads)
        set_grads(ref, grads)
        tb_opt.step()
        torch_opt.step()
    assert_states_close(tb_opt, torch_opt, groups, ref, **TOL)


def test_state_dict_keeps_the_norm_log():
    p = torch.zeros(2, requires_grad=True)
    opt = tbo.SGD([p], lr=0.1, max_grad_norm=1.0)
    for k in range(3):
        p.grad = torch.tensor([0.0, 2.0 + k])
        opt.step()
    other = tbo.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, max_grad_norm=1.0)
    other.load_state_dict(opt.state_dict())
    assert other.grad_norms().steps == 3 and other.grad_norms().clipped == 3
    torch.testing.assert_close(other.grad_norms().norms, torch.tensor([2.0, 3.0, 4.0]))


def _amp_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [False, True])
def test_grad_scaler_skips_and_clips_like_torch(backend, clip):
    """With inf losses on some steps: tunebook (unscaling and clipping in the step) vs
    torch (scaler.unscale_ + clip_grad_norm_ + Adam), same params and scale after."""
    ours, theirs = _amp_model(0), _amp_model(0)
    opt = tbo.Adam(ours.parameters(), lr=0.01, max_grad_norm=0.5 if clip else None,
                   backend=backend)
    topt = torch.optim.Adam(theirs.parameters(), lr=0.01, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    tscaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    for step in range(12):
        bad = math.inf if step in (3, 8) else 1.0
        for model, optimizer, sc, is_torch in ((ours, opt, scaler, False),
                                               (theirs, topt, tscaler, True)):
            optimizer.zero_grad()
            loss = model(x).square().mean() * bad
            sc.scale(loss).backward()
            if is_torch and clip:
                sc.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            sc.step(optimizer)
            sc.update()
    assert scaler.get_scale() == tscaler.get_scale()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(opt.state[a]["step"], topt.state[b]["step"])
    assert opt.grad_norms().skipped == 2


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5], gamma=0.3),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + s)),
    "MultiplicativeLR": lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda s: 0.9),
    "ExponentialLR": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6),
    "CosineAnnealingWarmRestarts":
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=5),
    "LinearLR": lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4),
    "ConstantLR": lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=0.5, total_iters=3),
    "PolynomialLR": lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=8, power=2),
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, base_lr=0.001, max_lr=0.01, step_size_up=3),  # also cycles betas[0]
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.02, total_steps=12),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=1),
    "SequentialLR": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=3),
            torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)], milestones=[3]),
    "ChainedScheduler": lambda o: torch.optim.lr_scheduler.ChainedScheduler(
        [torch.optim.lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
         torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)]),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_schedulers(name):
    groups = make_params(4)
    ref = clone_params(groups)
    kwargs = dict(lr=0.01)
    opt = tbo.Adam(param_groups(groups, kwargs), **kwargs)
    topt = torch.optim.Adam(param_groups(ref, kwargs), **kwargs, foreach=False)
    sched, tsched = SCHEDULERS[name](opt), SCHEDULERS[name](topt)
    history, thistory = [], []
    for step in range(12):
        history.append([g["lr"] for g in opt.param_groups])
        thistory.append([g["lr"] for g in topt.param_groups])
        grads = grads_for_step(groups, step, 4)
        set_grads(groups, grads)
        set_grads(ref, grads)
        opt.step()
        topt.step()
        if name == "ReduceLROnPlateau":
            sched.step(1.0)
            tsched.step(1.0)
        else:
            sched.step()
            tsched.step()
    assert history == thistory
    assert len({h[0] for h in history}) > 1, "the schedule never changed the lr"
    assert_states_close(opt, topt, groups, ref, **TOL)


def test_errors_are_clear():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="differentiable=True.*rule='torch'"):
        tbo.Adam([p], differentiable=True, rule="playbook")
    with pytest.raises(ValueError, match="floating point or complex"):
        tbo.Adam([torch.zeros(2, dtype=torch.int64)])
    # Devices are checked where they matter, at the step (params made on meta may be
    # materialised in between); complex params are stepped as their real view.
    meta = torch.zeros(2, device="meta", requires_grad=True)
    mixed = tbo.SGD([p, meta], lr=0.1)
    p.grad, meta.grad = torch.zeros(3), torch.zeros(2, device="meta")
    with pytest.raises(ValueError, match="one device"):
        mixed.step()
    p.grad = None
    with pytest.raises(ValueError, match="max_grad_norm"):
        tbo.SGD([p], lr=0.1, max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="rule"):
        tbo.Adam([p], rule="optax")
    with pytest.raises(ValueError, match="backend"):
        tbo.Adam([p], backend="tpu")
    with pytest.raises(ValueError, match="Invalid learning rate"):
        tbo.Adam([p], lr=-1.0)
    opt = tbo.Adam([p])
    p.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def _set_grads_in_place(groups, grads):
    """zero_grad(set_to_none=False) style: the same grad tensors, new values."""
    for group, row in zip(groups, grads):
        for p, g in zip(group, row):
            if g is None:
                p.grad = None
            elif p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", FAMILY_CASES, ids=FAMILY_IDS)
def test_cached_step_lists_follow_every_change_like_torch(case, backend):
    """tunebook reuses each group's op lists between steps; every change that torch.optim
    sees on its next step must be seen too: params appended to a group in place, a param
    whose grad appears (step 5), disappears (9) and comes back (12), load_state_dict
    mid-training (7, each loads the other's state), add_param_group (10), state tensors
    replaced (13) and a per-param state dict replaced (16), a grad with other strides than
    its param (15), grads reused in place (17-19)."""
    _, tb_cls, torch_cls, kwargs = case
    groups = make_params(11)
    ref = clone_params(groups)
    gen = torch.Generator().manual_seed(11)
    late = torch.randn(6, generator=gen).requires_grad_()
    extra = torch.randn(5, 3, generator=gen).requires_grad_()
    late_ref, extra_ref = clone_params([[late, extra]])[0]
    tb = tb_cls(param_groups(groups, kwargs), **kwargs, backend=backend, max_grad_norm=250.0)
    th = torch_cls(param_groups(ref, kwargs), **kwargs, foreach=False)
    runs = [(tb, groups, late, extra), (th, ref, late_ref, extra_ref)]
    for step in range(20):
        if step == 3:
            for opt, gs, lp, _ in runs:
                opt.param_groups[0]["params"].append(lp)
                gs[0].append(lp)
        if step == 7:
            saved = []
            for opt, *_ in runs:
                buffer = io.BytesIO()
                torch.save(opt.state_dict(), buffer)
                buffer.seek(0)
                saved.append(buffer)
            tb.load_state_dict(torch.load(saved[1]))
            th.load_state_dict(torch.load(saved[0]))
        if step == 10:
            for opt, gs, _, ep in runs:
                opt.add_param_group(dict(params=[ep], lr=kwargs["lr"] * 2))
                gs.append([ep])
        if step == 13:
            for opt, gs, *_ in runs:
                state = opt.state[gs[1][0]]
                for key in list(state):
                    state[key] = state[key].clone()
        if step == 16:
            for opt, gs, *_ in runs:
                p = gs[0][0]
                opt.state[p] = {key: value.clone() for key, value in opt.state[p].items()}
        grads = grads_for_step(groups, step, 11)
        if len(grads[0]) > 6 and not (5 <= step < 9 or step >= 12):
            grads[0][6] = None  # `late`
        for opt, gs, *_ in runs:
            (_set_grads_in_place if step >= 17 else set_grads)(gs, grads)
            if step == 15:  # same values, transposed memory layout (strides (1, 3))
                p = gs[0][0]
                p.grad = p.grad.t().contiguous().t()
                assert p.grad.stride() != p.stride()
        torch.nn.utils.clip_grad_norm_([p for g in ref for p in g if p.grad is not None], 250.0)
        tb.step()
        th.step()
    assert_states_close(tb, th, groups, ref, **TOL)
    assert tb.grad_norms().steps == 20


def test_resetting_the_state_mapping_restarts_like_torch():
    groups = make_params(12)
    ref = clone_params(groups)
    kwargs = dict(lr=0.01)
    tb = tbo.Adam(param_groups(groups, kwargs), **kwargs)
    th = torch.optim.Adam(param_groups(ref, kwargs), **kwargs, foreach=False)
    for step in range(8):
        if step == 3:  # a common way to reset an optimizer
            tb.state = collections.defaultdict(dict)
            th.state = collections.defaultdict(dict)
        if step == 5:
            tb.state.clear()
            th.state.clear()
        grads = grads_for_step(groups, step, 12)
        set_grads(groups, grads)
        set_grads(ref, grads)
        tb.step()
        th.step()
    assert_states_close(tb, th, groups, ref, **TOL)
    assert float(tb.state[groups[0][0]]["step"]) == 3
