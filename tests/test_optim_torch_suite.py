"""torch's own optimizer test cases, run against tunebook.

Every configuration torch tests its optimizers with (``optim_db`` in
``torch.testing._internal.common_optimizers``, each OptimizerInfo's ``optim_inputs_func`` on
the CPU) is run with tunebook's class and checked against torch.optim's for-loop
implementation (``foreach=False``), the ground truth torch checks its own foreach and
fused variants against, on the model torch uses for that (Linear-Sigmoid-Linear-Sigmoid
plus a 0-dim param, a layer frozen mid-run, a step without grads): params and every state
tensor, in float32, float64, bfloat16, float16 and complex64. Around it, torch's habits:
param groups, step / state_dict / load_state_dict hooks, state_dict save and load in both
directions and through ``torch.save(weights_only=True)``, deepcopy and pickle, Tensor lr,
``zero_grad`` both ways, ``add_param_group`` with lists and generators, LR schedulers,
named parameters, old state_dicts, torch's error inputs, and ``differentiable=True`` (torch's protocol, with gradcheck).

The checks are written here from what torch's test/test_optim.py checks; no torch test code
is copied. Everything tunebook does not do is listed once, in ``EXCLUDED``, with the reason.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
import re

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

import tunebook.optim as tbo

# A hard import, not importorskip: torch's helpers need `expecttest` (the dev extra has
# it), and a missing package must fail the run rather than silently skip the drop-in claim.
import torch.testing._internal.common_optimizers as common_optimizers  # noqa: E402

TUNEBOOK_CLASS = {
    torch.optim.SGD: tbo.SGD,
    torch.optim.Adam: tbo.Adam,
    torch.optim.AdamW: tbo.AdamW,
    torch.optim.NAdam: tbo.NAdam,
    torch.optim.RMSprop: tbo.RMSprop,
}
INFOS = {
    info.optim_cls.__name__: info
    for info in common_optimizers.optim_db
    if info.optim_cls in TUNEBOOK_CLASS
}

# Everything of torch's suite for these five classes that tunebook does not do, and why.
# Keys: (optimizer name or "*", what); `what` is an error-input description or a dtype.
EXCLUDED = {
    ("*", "lr as Tensor doesn't work with foreach & not capturable"):
        "tunebook's step is always one fused call, so a Tensor lr works with foreach=True "
        "too; torch's for-loop/foreach split does not exist here (accepted, not an error)",
    ("*", r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True"):
        "Tensor betas are not supported at all (the fused step reads betas on the host); "
        "tunebook refuses them with its own message whatever foreach is",
    ("*", "multiple devices"):
        "one optimizer steps params on one device (one global norm, one control tensor); "
        "torch's mixed-device tests need two GPUs anyway",
    ("*", "capturable configs"):
        "CUDA-only configurations (capturable=True, Tensor betas) of optim_db; run by the "
        "CUDA suite, not on the CPU",
}


def _configs(name, device="cpu", dtype=None):
    """torch's configurations for one optimizer: ``[(desc, kwargs)]``."""
    return [(i.desc, dict(i.kwargs)) for i in INFOS[name].optim_inputs_func(device, dtype)]


CASES = [(name, desc, kwargs) for name in INFOS for desc, kwargs in _configs(name)]
CASE_IDS = [f"{name}-{desc.replace(' ', '_')}" for name, desc, _ in CASES]


def _pair(name, params_a, params_b, kwargs):
    """(tunebook optimizer, torch for-loop optimizer) with the same configuration."""
    kwargs = copy.deepcopy(kwargs)
    torch_kwargs = copy.deepcopy(kwargs)
    tb_cls = TUNEBOOK_CLASS[INFOS[name].optim_cls]
    return tb_cls(params_a, **kwargs), INFOS[name].optim_cls(params_b, **torch_kwargs, foreach=False)


def _model(dtype):
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
    )
    return model.to(dtype)


def _tolerance(dtype):
    # torch.testing's defaults, as torch's own fused-vs-forloop comparison uses; low precision
    # is looser than that: torch's for-loop rounds after every op, the fused step once.
    return {
        torch.float32: dict(rtol=1.3e-6, atol=1e-5),
        torch.float64: dict(rtol=1e-7, atol=1e-7),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
        torch.float16: dict(rtol=1e-3, atol=1e-3),
    }[dtype]


def _compare_states(tb, th, pa, pb, tol, state_tol=None):
    torch.testing.assert_close(pa.detach(), pb.detach().to(pa.dtype), **tol)
    tol = state_tol or tol
    sa, sb = tb.state.get(pa, {}), th.state.get(pb, {})
    assert set(sa) == set(sb), (set(sa), set(sb))
    for key in sa:
        a, b = sa[key], sb[key]
        if key in ("step", "mu_product"):
            torch.testing.assert_close(a.cpu().float(), torch.as_tensor(b).cpu().float(),
                                       rtol=1e-6, atol=0)
        else:
            torch.testing.assert_close(a, b.to(a.dtype), **tol,
                                       msg=lambda m, key=key: f"state[{key!r}]: {m}")


# ---------------------------------------------------------------- trajectories
TORCH_FUSES = {"SGD", "Adam", "AdamW"}  # torch.optim has a fused (float32 opmath) CPU variant


def _trajectory(name, kwargs, dtype, oracle):
    """tunebook and torch (``oracle``: "forloop" or "fused") on the same model: torch's
    ``_test_derived_optimizers`` protocol. Yields (opts, param pairs) after every step."""
    inp = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    models = [_model(dtype), _model(dtype)]
    extras = []
    for _ in models:
        extra = torch.tensor(0.5, dtype=dtype, requires_grad=True)
        extra.grad = torch.tensor(0.25, dtype=dtype)
        extras.append(extra)
    flag = {"foreach": False} if oracle == "forloop" else {"fused": True}
    tb = TUNEBOOK_CLASS[INFOS[name].optim_cls]([*models[0].parameters(), extras[0]],
                                               **copy.deepcopy(kwargs))
    th = INFOS[name].optim_cls([*models[1].parameters(), extras[1]], **copy.deepcopy(kwargs),
                               **flag)
    for i in range(7):
        for model, opt in zip(models, (tb, th)):
            opt.zero_grad()
            if i == 3:
                model[2].requires_grad_(False)
            if i == 5:
                model[2].requires_grad_(True)
            if i != 2:
                model(inp).sum().backward()
            opt.step()
        yield (tb, th), list(zip([*models[0].parameters(), extras[0]],
                                 [*models[1].parameters(), extras[1]]))


def _fixed_grad_trajectory(name, kwargs, dtype):
    """tunebook in ``dtype`` against torch's for-loop in float32 fed the very same (rounded)
    grads: the difference is tunebook's one rounding of params and state per step."""
    gen = torch.Generator().manual_seed(4)
    init = [torch.randn(3, 2, generator=gen), torch.randn(4, generator=gen), torch.randn((), generator=gen)]
    low = [t.to(dtype).requires_grad_() for t in init]
    full = [t.to(dtype).float().requires_grad_() for t in init]
    tb, th = _pair(name, low, full, kwargs)
    for i in range(7):
        for k, (a, b) in enumerate(zip(low, full)):
            g = (torch.randn(a.shape, generator=gen) * 0.3).to(dtype)
            no_grad = i == 2 or (k == 1 and i in (3, 4))
            a.grad, b.grad = (None, None) if no_grad else (g, g.float())
        tb.step()
        th.step()
        yield (tb, th), list(zip(low, full))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("name", list(INFOS))
def test_trajectory_matches_forloop(name, dtype):
    """Every configuration torch has for the optimizer and dtype; params and every state
    tensor after every one of 7 steps (no grads at step 2, a layer frozen at steps 3-4).

    float32/float64: torch's ``_test_derived_optimizers`` protocol against the for-loop.
    bfloat16/float16: the for-loop rounds after every op and the fused step once (torch's own
    fused-vs-forloop check needs 5e-3 there), so: against torch's fused variant in the same
    dtype, to one rounding, where torch has one (SGD, Adam, AdamW); and, for all five,
    against the for-loop in float32 fed the same rounded grads, to the dtype's resolution.
    """
    configs = _configs(name, "cpu", dtype)
    checks = []
    if dtype in (torch.float32, torch.float64):
        checks.append(("forloop", functools.partial(_trajectory, oracle="forloop"),
                       _tolerance(dtype), None))
    else:
        eps = torch.finfo(dtype).eps
        if name in TORCH_FUSES:
            checks.append(("fused", functools.partial(_trajectory, oracle="fused"),
                           dict(rtol=eps, atol=eps / 8), None))
        # 16-bit state (as torch keeps it) rounds small second moments coarsely: a state
        # element may be a few more roundings away than the params.
        checks.append(("float32 forloop", _fixed_grad_trajectory, dict(rtol=4 * eps, atol=4 * eps),
                       dict(rtol=16 * eps, atol=16 * eps)))
    for desc, kwargs in configs:
        for oracle, run, tol, state_tol in checks:
            for opts, pairs in run(name, kwargs, dtype):
                for pa, pb in pairs:
                    try:
                        _compare_states(*opts, pa, pb, tol, state_tol)
                    except AssertionError as error:
                        raise AssertionError(f"{desc} (vs torch {oracle}): {error}") from None


@pytest.mark.parametrize("name", list(INFOS))
def test_complex_matches_forloop_and_real_view(name):
    """torch's test_complex, both ways: complex params (mixed with a real one) against torch's
    for-loop on the same complex params, and against tunebook on their real views."""
    for desc, kwargs in _configs(name):
        torch.manual_seed(0)
        init = [torch.randn(10, 5, dtype=torch.complex64), torch.randn(10, dtype=torch.complex64),
                torch.randn(10, 5)]
        complex_a = [t.clone().requires_grad_() for t in init]
        complex_b = [t.clone().requires_grad_() for t in init]
        real = [(torch.view_as_real(t) if t.is_complex() else t).clone().requires_grad_()
                for t in init]
        tb, th = _pair(name, complex_a, complex_b, kwargs)
        tb_real = TUNEBOOK_CLASS[INFOS[name].optim_cls](real, **copy.deepcopy(kwargs))
        for _ in range(3):
            for a, b, r in zip(complex_a, complex_b, real):
                g = torch.randn_like(a)
                a.grad, b.grad = g.clone(), g.clone()
                r.grad = (torch.view_as_real(g) if g.is_complex() else g).clone()
            for opt in (tb, th, tb_real):
                opt.step()
        for a, b, r in zip(complex_a, complex_b, real):
            _compare_states(tb, th, a, b, _tolerance(torch.float32))
            torch.testing.assert_close(torch.view_as_real(a) if a.is_complex() else a, r,
                                       rtol=0, atol=0)


# ---------------------------------------------------------------- per-config habits
def _weight_bias(seed=0, noncontiguous=False):
    gen = torch.Generator().manual_seed(seed)
    if noncontiguous:
        w = torch.randn(10, 5, 2, generator=gen)[..., 0]
        b = torch.randn(10, 2, generator=gen)[..., 0]
    else:
        w, b = torch.randn(10, 5, generator=gen), torch.randn(10, generator=gen)
    return w, b, torch.randn(5, generator=gen)


def _run_pair(tb, th, params_a, params_b, inp, steps, schedulers=False, set_to_none=True):
    scheds = []
    if schedulers:
        scheds = [(StepLR(o, gamma=0.9, step_size=3), ReduceLROnPlateau(o)) for o in (tb, th)]
    for i in range(steps):
        for k, (opt, (w, b)) in enumerate(((tb, params_a), (th, params_b))):
            opt.zero_grad(set_to_none=set_to_none if i % 2 else not set_to_none)
            loss = (w.mv(inp) + b).pow(2).sum()
            loss.backward()
            opt.step()
            for sched in scheds[k] if scheds else ():
                sched.step(loss.item()) if isinstance(sched, ReduceLROnPlateau) else sched.step()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_habits_match_forloop(case):
    """Per configuration: non-contiguous params under StepLR + ReduceLROnPlateau with
    zero_grad alternating set_to_none, Tensor lr against float lr, two param groups (the
    second without weight decay, at another lr) against torch, repr."""
    name, desc, kwargs = case
    tol = _tolerance(torch.float32)
    # Non-contiguous params, LR schedulers, zero_grad both ways.
    w, b, inp = _weight_bias(noncontiguous=True)
    a = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    c = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    tb, th = _pair(name, a, c, kwargs)
    repr(tb)
    _run_pair(tb, th, a, c, inp, 12, schedulers=True)
    for pa, pb in zip(a, c):
        _compare_states(tb, th, pa, pb, tol)
    # Tensor lr (torch rejects it with foreach, not with the for-loop).
    w, b, inp = _weight_bias(1)
    a = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    c = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    lr = float(kwargs.get("lr", 1e-3))
    tb, th = _pair(name, a, c, dict(kwargs, lr=torch.tensor(lr)))
    _run_pair(tb, th, a, c, inp, 5)
    for pa, pb in zip(a, c):
        _compare_states(tb, th, pa, pb, tol)
    # Param groups: weight decay only on the weight, another lr for the bias.
    w, b, inp = _weight_bias(2)
    a = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    c = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    bias_kwargs = dict(kwargs, weight_decay=0.0, lr=float(kwargs.get("lr", 1e-3)) * 3)
    tb, th = _pair(name, [dict(params=[a[0]], **kwargs), dict(params=[a[1]], **bias_kwargs)],
                   [dict(params=[c[0]], **kwargs), dict(params=[c[1]], **bias_kwargs)], {})
    _run_pair(tb, th, a, c, inp, 5)
    for pa, pb in zip(a, c):
        _compare_states(tb, th, pa, pb, tol)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_dict_both_ways_and_copies(case):
    """torch's state_dict checks: save mid-run, load into a fresh tunebook optimizer, into
    torch's for-loop and back, through torch.save/torch.load(weights_only=True); deterministic
    state_dicts; deepcopy and pickle (all public attributes kept); a state_dict whose `step`
    is a number; one without the flags added after the optimizer's first release; named
    params both ways. Every continuation equals an uninterrupted torch run."""
    name, desc, kwargs = case
    tol = _tolerance(torch.float32)
    w, b, inp = _weight_bias(3)
    runs = {}
    for key in ("tb", "copy", "pickled", "from_torch", "to_torch", "old", "named", "torch"):
        runs[key] = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    tb_cls, th_cls = TUNEBOOK_CLASS[INFOS[name].optim_cls], INFOS[name].optim_cls
    opts = {
        "tb": tb_cls(runs["tb"], **copy.deepcopy(kwargs)),
        "torch": th_cls(runs["torch"], **copy.deepcopy(kwargs), foreach=False),
    }

    def step(key, n):
        w_, b_ = runs[key]
        for _ in range(n):
            opts[key].zero_grad()
            (w_.mv(inp) + b_).pow(2).sum().backward()
            opts[key].step()

    step("tb", 4)
    step("torch", 4)
    sd_tb, sd_th = opts["tb"].state_dict(), opts["torch"].state_dict()
    for key in ("copy", "pickled", "from_torch", "to_torch", "old", "named"):
        runs[key][0].data.copy_(runs["tb"][0].detach())
        runs[key][1].data.copy_(runs["tb"][1].detach())
    # deepcopy / pickle of the optimizer together with its params.
    cp_params, cp_opt = copy.deepcopy((runs["tb"], opts["tb"]))
    runs["copy"], opts["copy"] = cp_params, cp_opt
    pk_params, pk_opt = pickle.loads(pickle.dumps((runs["tb"], opts["tb"])))
    runs["pickled"], opts["pickled"] = pk_params, pk_opt
    public = {k for k in vars(opts["tb"]) if not k.startswith("_")}
    assert public == {k for k in vars(cp_opt) if not k.startswith("_")}
    # torch -> tunebook through torch.save / torch.load(weights_only=True).
    buffer = io.BytesIO()
    torch.save(sd_th, buffer)
    buffer.seek(0)
    opts["from_torch"] = tb_cls(runs["from_torch"], **copy.deepcopy(kwargs))
    opts["from_torch"].load_state_dict(torch.load(buffer, weights_only=True))
    # tunebook -> torch, then torch steps.
    buffer = io.BytesIO()
    torch.save(sd_tb, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert set(loaded) >= {"state", "param_groups"}
    opts["to_torch"] = th_cls(runs["to_torch"], **copy.deepcopy(kwargs), foreach=False)
    opts["to_torch"].load_state_dict(loaded)
    # An old state_dict: flags added after the first release removed, `step` as numbers.
    old = copy.deepcopy(sd_tb)
    for group in old["param_groups"]:
        for flag in INFOS[name].not_og_supported_flags:
            group.pop(flag, None)
    for state in old["state"].values():
        if "step" in state:
            state["step"] = state["step"].item()
    opts["old"] = tb_cls(runs["old"], **copy.deepcopy(kwargs))
    opts["old"].load_state_dict(old)
    # Named params on the loading side.
    opts["named"] = tb_cls([("weight", runs["named"][0]), ("bias", runs["named"][1])],
                           **copy.deepcopy(kwargs))
    opts["named"].load_state_dict(copy.deepcopy(sd_tb))
    assert opts["named"].state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    for key in ("tb", "copy", "pickled", "from_torch", "to_torch", "old", "named", "torch"):
        step(key, 4)
    for key in ("tb", "copy", "pickled", "from_torch", "to_torch", "old", "named"):
        for pa, pb in zip(runs[key], runs["torch"]):
            torch.testing.assert_close(pa.detach(), pb.detach(), **tol, msg=lambda m, k=key: f"{k}: {m}")
    # Deterministic: equal optimizers give equal state_dicts.
    sd_copy, sd_pickled = opts["copy"].state_dict(), opts["pickled"].state_dict()
    assert sd_copy["param_groups"] == sd_pickled["param_groups"] == opts["tb"].state_dict()["param_groups"]
    torch.testing.assert_close(sd_copy["state"], sd_pickled["state"], rtol=0, atol=0)
    torch.testing.assert_close(sd_copy["tunebook_grad_norms"], sd_pickled["tunebook_grad_norms"],
                               rtol=0, atol=0)


# ---------------------------------------------------------------- hooks
@pytest.mark.parametrize("name", list(INFOS))
def test_hooks_fire_as_in_torch(name):
    """Step pre/post hooks (global and per optimizer, removable), state_dict pre/post hooks,
    load_state_dict pre hooks (prepend) and post hooks: the same events, in the same order,
    for tunebook and torch."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    def events(cls):
        log = []
        p = torch.nn.Parameter(torch.ones(2))
        opt = cls([p], lr=0.01)
        other = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))])
        handles = [
            register_optimizer_step_pre_hook(lambda o, a, k: log.append(("global-pre", type(o).__name__ == cls.__name__))),
            register_optimizer_step_post_hook(lambda o, a, k: log.append(("global-post", type(o).__name__ == cls.__name__))),
            opt.register_step_pre_hook(lambda o, a, k: log.append("pre")),
            opt.register_step_post_hook(lambda o, a, k: log.append("post")),
        ]
        p.grad = torch.ones(2)
        opt.step()
        other.step()
        opt.state_dict()
        for h in handles:
            h.remove()
        opt.step()
        opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("extra", 1))

        def post(o, sd):
            log.append(("post-sd", sd["state"].pop("extra", None)))
            sd["ran"] = True
            return sd

        opt.register_state_dict_post_hook(post)
        sd = opt.state_dict()
        log.append(("sd-ran", sd.get("ran")))

        def pre1(o, sd):
            sd["param_groups"][0]["lr"] = 0.002

        def pre2(o, sd):
            sd = copy.deepcopy(sd)
            sd["param_groups"][0]["lr"] = 0.003
            return sd

        opt.register_load_state_dict_pre_hook(pre1)
        opt.load_state_dict(opt.state_dict())
        log.append(("lr", opt.param_groups[0]["lr"]))
        opt.register_load_state_dict_pre_hook(pre2, prepend=True)
        opt.register_load_state_dict_post_hook(lambda o: log.append(("loaded", o.param_groups[0]["lr"])))
        opt.load_state_dict(opt.state_dict())
        log.append(("lr", opt.param_groups[0]["lr"]))
        return log

    info = INFOS[name]
    assert events(TUNEBOOK_CLASS[info.optim_cls]) == events(info.optim_cls)


# ---------------------------------------------------------------- construction habits
@pytest.mark.parametrize("name", list(INFOS))
def test_param_group_habits(name):
    """Groups from generators, add_param_group with a list, a generator and a single tensor,
    and named parameters: tunebook keeps what torch keeps and trains like torch."""
    tb_cls, th_cls = TUNEBOOK_CLASS[INFOS[name].optim_cls], INFOS[name].optim_cls

    def torch_cls(*args, **kwargs):
        return th_cls(*args, **kwargs, foreach=False)

    for named in (False, True):
        models = [_model(torch.float32), _model(torch.float32)]
        opts = []
        for cls, model in ((tb_cls, models[0]), (torch_cls, models[1])):
            params = model.named_parameters if named else model.parameters
            def pick(dim, params=params):
                return (item for item in params()
                        if (item[1] if isinstance(item, tuple) else item).dim() == dim)

            groups = [{"params": pick(2)}, {"params": pick(1), "lr": 3e-3}]  # generators
            opts.append(cls(groups, lr=1e-2))
        assert [len(g["params"]) for g in opts[0].param_groups] == [2, 2]
        assert [g.get("param_names") for g in opts[0].param_groups] == [
            g.get("param_names") for g in opts[1].param_groups]
        extras = [[torch.nn.Parameter(torch.ones(3)) for _ in range(3)] for _ in range(2)]
        for opt, (x, y, z) in zip(opts, extras):
            if named:
                opt.add_param_group({"params": (kv for kv in [("x", x), ("y", y)]), "lr": 5e-3})
                opt.add_param_group({"params": [("z", z)]})
            else:
                opt.add_param_group({"params": (p for p in [x, y]), "lr": 5e-3})
                opt.add_param_group({"params": z})
        assert [len(g["params"]) for g in opts[0].param_groups] == [2, 2, 2, 1]
        inp = torch.rand(4, 2)
        for _ in range(4):
            for model, opt, (x, y, z) in zip(models, opts, extras):
                opt.zero_grad()
                (model(inp).sum() + (x * y * z).sum()).backward()
                opt.step()
        for pa, pb in zip([*models[0].parameters(), *extras[0]],
                          [*models[1].parameters(), *extras[1]]):
            _compare_states(*opts, pa, pb, _tolerance(torch.float32))
        assert opts[0].state_dict()["param_groups"][0].get("param_names") == (
            opts[1].state_dict()["param_groups"][0].get("param_names"))


@pytest.mark.parametrize("name", list(INFOS))
def test_noop_cases_as_in_torch(name):
    """No grads: nothing happens (a closure is still called); zero grads without weight
    decay: params unchanged; the state after one step is never an empty entry."""
    tb_cls = TUNEBOOK_CLASS[INFOS[name].optim_cls]
    params = [torch.randn(2, 3) for _ in range(2)]
    opt = tb_cls(params)
    assert opt.step(lambda: torch.tensor(1.0)).item() == 1.0
    for desc, kwargs in _configs(name):
        if kwargs.get("weight_decay", 0) != 0:
            continue
        if name == "AdamW":
            kwargs["lr"] = 1e-5
        p = torch.nn.Parameter(torch.randn(5, 1))
        before = p.detach().clone()
        opt = tb_cls([p], **kwargs)
        p.grad = torch.zeros_like(p)
        opt.step()
        torch.testing.assert_close(p.detach(), before, rtol=0, atol=0 if name != "AdamW" else 1e-4)
    model = torch.nn.Linear(5, 5)
    for desc, kwargs in _configs(name):
        opt = tb_cls(model.parameters(), **kwargs)
        model(torch.rand(2, 5)).sum().backward()
        opt.step()
        assert all(len(state) > 0 for state in opt.state.values())
        opt.zero_grad()


def _error_inputs(name):
    inputs = INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)
    return [(i, i.optimizer_error_input.desc) for i in inputs]


ERROR_CASES = [(name, i, desc) for name in INFOS for i, desc in _error_inputs(name)]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[f"{n}-{d[:40]}" for n, _, d in ERROR_CASES])
def test_error_inputs_raise_what_torch_raises(case):
    name, error_input, desc = case
    excluded = [reason for (opt, what), reason in EXCLUDED.items()
                if opt in ("*", name) and (what == desc or re.fullmatch(what, error_input.error_regex or ""))]
    if excluded:
        pytest.skip(excluded[0])
    tb_cls = TUNEBOOK_CLASS[INFOS[name].optim_cls]
    optim_input = error_input.optimizer_error_input
    params, kwargs = optim_input.params, optim_input.kwargs
    if params is None:
        params = [torch.nn.Parameter(torch.randn(1, 1))]
    construct = error_input.error_on == common_optimizers.OptimizerErrorEnum.CONSTRUCTION_ERROR
    if issubclass(error_input.error_type, Warning):
        with pytest.warns(error_input.error_type, match=error_input.error_regex):
            opt = tb_cls(params, **kwargs)
            if not construct:
                opt.step()
        return
    with pytest.raises(error_input.error_type, match=error_input.error_regex):
        opt = tb_cls(params, **kwargs)
        if not construct:
            opt.step()


def _differentiable_step(cls, kwargs, keys, scalars, p, g, lr, *state, max_grad_norm=None):
    """One ``differentiable=True`` step as a function of its inputs (torch's
    ``test_differentiable`` protocol): the param, its grad, a Tensor lr and the state
    tensors in; the stepped param and state out."""
    p = p.clone()
    p.grad = g
    extra = {} if max_grad_norm is None else dict(max_grad_norm=max_grad_norm)
    opt = cls([p], **dict(kwargs, lr=lr), differentiable=True, **extra)
    opt.state[p] = {key: t.clone() for key, t in zip(keys, state)}
    opt.state[p].update({key: t.clone() for key, t in scalars.items()})
    opt.step()
    return (p, *(opt.state[p][key] for key in keys))


def _differentiable_inputs(name, kwargs, seed=0):
    """(state keys, 0-dim state, [p, g, lr, *state]) in float64, the list requiring grad:
    the state as one non-differentiable torch step leaves it, perturbed."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(4, generator=gen, dtype=torch.float64)
    warm = torch.nn.Parameter(p.clone())
    warm.grad = torch.randn(4, generator=gen, dtype=torch.float64)
    opt = INFOS[name].optim_cls([warm], **kwargs, foreach=False)
    opt.step()
    keys = sorted(k for k, v in opt.state[warm].items() if k != "step" and v.dim() > 0)
    state = [(opt.state[warm][k] + torch.rand(4, generator=gen, dtype=torch.float64))
             for k in keys]
    scalars = {k: v.detach() for k, v in opt.state[warm].items() if v.dim() == 0}
    g = torch.randn(4, generator=gen, dtype=torch.float64)
    lr = torch.tensor(float(kwargs.get("lr", 1e-3)), dtype=torch.float64)
    return keys, scalars, [t.requires_grad_() for t in (p, g, lr, *state)]


# gradcheck (finite differences) on the first configuration of each class; the others are
# checked against torch's autograd gradients, which torch checks with gradcheck itself.
GRADCHECKED = {name: next(desc for n, desc, _ in CASES if n == name) for name in INFOS}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_differentiable_step_matches_torch(case):
    """torch's differentiable=True protocol on every configuration: the step's outputs and
    their gradients w.r.t. the param, the grad, a Tensor lr (where torch's for-loop takes
    one) and every state tensor equal torch.optim's, also with max_grad_norm clipping
    active (against torch fed the clipped grad); gradcheck on one configuration per class."""
    name, desc, kwargs = case
    if kwargs.get("capturable") or kwargs.get("fused"):
        pytest.skip("capturable/fused configurations refuse differentiable=True in torch too")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("foreach", "lr")}
    tb_cls = TUNEBOOK_CLASS[INFOS[name].optim_cls]
    keys, scalars, inputs = _differentiable_inputs(name, dict(kwargs, lr=1e-2))
    ours = functools.partial(_differentiable_step, tb_cls, kwargs, keys, scalars)
    theirs = functools.partial(_differentiable_step, INFOS[name].optim_cls, kwargs, keys, scalars)
    try:
        reference = theirs(*inputs)
    except TypeError:  # torch's RMSprop/NAdam for-loop takes a float lr only
        inputs[2] = float(inputs[2].detach())
        with pytest.raises(TypeError):
            ours(*[t.detach().requires_grad_() for t in inputs[:2]],
                 torch.tensor(1e-2, dtype=torch.float64, requires_grad=True), *inputs[3:])
        reference = theirs(*inputs)
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(out.shape, dtype=torch.float64, generator=gen) for out in reference]
    wrt = [t for t in inputs if isinstance(t, torch.Tensor)]

    def gradients(fn):
        outputs = fn(*inputs)
        total = sum((o * w).sum() for o, w in zip(outputs, weights))
        return [o.detach() for o in outputs], torch.autograd.grad(total, wrt, allow_unused=True)

    def clipped_torch(p, g, lr, *state):
        coef = torch.clamp(0.5 / (torch.linalg.vector_norm(g) + 1e-6), max=1.0)
        return theirs(p, g * coef, lr, *state)

    clipped = functools.partial(ours, max_grad_norm=0.5)
    for fn_a, fn_b in ((ours, theirs), (clipped, clipped_torch)):
        for values_a, values_b in zip(gradients(fn_a), gradients(fn_b)):
            for a, b in zip(values_a, values_b):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=desc)
    if GRADCHECKED[name] == desc:
        for fn in (ours, clipped):
            assert torch.autograd.gradcheck(lambda *t, fn=fn: fn(*t[:2], inputs[2], *t[2:]),
                                            [wrt[0], wrt[1], *wrt[-len(keys):]] if keys else wrt[:2])


@pytest.mark.parametrize("name", list(INFOS))
def test_differentiable_keeps_tunebooks_options(name):
    """differentiable=True keeps the norm log and skips a non-finite step bit-identically;
    the combinations torch has no implementation for are refused, naming the fix."""
    tb_cls = TUNEBOOK_CLASS[INFOS[name].optim_cls]
    p = torch.ones(3, requires_grad=True).clone()  # not a leaf, as torch's protocol has it
    opt = tb_cls([p], lr=0.1, differentiable=True, max_grad_norm=1.0)
    p.grad = torch.full((3,), 2.0)
    opt.step()
    stepped = p.detach().clone()
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    opt.step()
    assert torch.equal(p.detach(), stepped)
    log = opt.grad_norms()
    assert (log.steps, log.skipped, log.clipped) == (2, 1, 1)
    torch.testing.assert_close(log.norms[0], torch.tensor(12.0).sqrt())
    if "fused" in opt.defaults:
        with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
            tb_cls([p], differentiable=True, fused=True)
    if "rule" in opt.defaults:
        with pytest.raises(ValueError, match=r"differentiable=True.*rule='playbook'.*rule='torch'"):
            tb_cls([p], differentiable=True, rule="playbook")
        with pytest.raises(ValueError, match="differentiable=True"):
            opt.rule = "playbook"


def test_exclusions_are_listed_once_with_a_reason():
    assert all(isinstance(reason, str) and len(reason) > 40 for reason in EXCLUDED.values())
    covered = {name for name, _, _ in CASES}
    assert covered == {"SGD", "Adam", "AdamW", "NAdam", "RMSprop"}
    assert len(CASES) == 34, len(CASES)  # torch's CPU configurations of the five classes

