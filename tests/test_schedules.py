"""Schedules against closed-form float64 values, torch's own schedulers, and the adapters."""

from __future__ import annotations

import doctest
import io
import math

import numpy as np
import pytest
import torch

import tunebook.schedules as sch
from tunebook.schedules import (
    DeviceSchedule,
    ScheduleLR,
    constant_schedule,
    cosine_decay_schedule,
    cyclic_schedule,
    exponential_decay,
    extend_constant_phase,
    join_schedules,
    linear_schedule,
    linear_warmup,
    lr_range_test,
    one_cycle,
    piecewise_constant_schedule,
    polynomial_schedule,
    rsqrt_schedule,
    warmup_cosine_decay_schedule,
)

STEPS = list(range(0, 260, 7)) + [99, 100, 101, 199, 200, 201]


def check(schedule, reference, steps=STEPS, rtol=1e-12):
    for step in steps:
        got = schedule(step)
        assert isinstance(got, float)
        assert got == pytest.approx(reference(step), rel=rtol, abs=1e-15), step
    # The array form gives the same numbers as the scalar form.
    array = schedule(np.asarray(steps))
    assert array.dtype == np.float64 and array.shape == (len(steps),)
    np.testing.assert_allclose(array, [reference(s) for s in steps], rtol=rtol, atol=1e-15)


# ----------------------------------------------------------------------- closed forms


def test_constant():
    check(constant_schedule(0.3), lambda t: 0.3)


def test_linear_decay_and_warmup():
    check(linear_schedule(1.0, 0.1, 100, transition_begin=20),
          lambda t: 1.0 if t <= 20 else (0.1 if t >= 120 else 1.0 - 0.9 * (t - 20) / 100))
    check(linear_schedule(0.0, 2.0, 50), lambda t: 2.0 * min(t, 50) / 50)


def test_polynomial():
    check(polynomial_schedule(1.0, 0.0, 2.0, 200), lambda t: (1 - min(t, 200) / 200) ** 2)
    check(polynomial_schedule(0.5, 0.1, 0.5, 100, 10),
          lambda t: 0.4 * (1 - min(max(t - 10, 0), 100) / 100) ** 0.5 + 0.1)


def test_cosine_decay():
    check(cosine_decay_schedule(0.2, 200),
          lambda t: 0.2 * 0.5 * (1 + math.cos(math.pi * min(t, 200) / 200)))
    check(cosine_decay_schedule(1.0, 100, alpha=0.1, exponent=2.0),
          lambda t: 0.9 * (0.5 * (1 + math.cos(math.pi * min(t, 100) / 100))) ** 2 + 0.1)


def test_rsqrt():
    check(rsqrt_schedule(0.5, timescale=25), lambda t: 0.5 / math.sqrt(1 + t / 25))
    assert rsqrt_schedule(1.0, timescale=100)(300) == pytest.approx(0.5)


def test_exponential():
    check(exponential_decay(1.0, 10, 0.5), lambda t: 0.5 ** (t / 10))
    check(exponential_decay(1.0, 10, 0.5, transition_begin=30, staircase=True),
          lambda t: 0.5 ** math.floor(max(t - 30, 0) / 10))
    check(exponential_decay(1.0, 10, 0.5, end_value=0.01), lambda t: max(0.5 ** (t / 10), 0.01))
    check(exponential_decay(0.1, 20, 2.0, end_value=1.0), lambda t: min(0.1 * 2 ** (t / 20), 1.0))


def test_piecewise_constant():
    check(piecewise_constant_schedule(1.0, {200: 0.5, 100: 0.1}),
          lambda t: 1.0 * (0.1 if t >= 100 else 1) * (0.5 if t >= 200 else 1))
    check(piecewise_constant_schedule(0.3), lambda t: 0.3)


# ----------------------------------------------------------------------- composition


def test_join_passes_relative_steps():
    joined = join_schedules([0.5, linear_schedule(1.0, 0.0, 100), cosine_decay_schedule(2.0, 50)], [30, 130])
    check(joined, lambda t: 0.5 if t < 30 else (1.0 - (t - 30) / 100 if t < 130
                                                else 2.0 * 0.5 * (1 + math.cos(math.pi * min(t - 130, 50) / 50))))


def test_join_never_gives_a_part_a_negative_step():
    seen = []

    def strict(step):
        steps = np.asarray(step)
        seen.append(steps.min())
        assert (steps >= 0).all()
        return steps * 0.0 + 1.0

    joined = join_schedules([0.0, strict], [10])
    joined(np.arange(30))
    joined(3), joined(12)
    assert min(seen) == 0


def test_linear_warmup_prepends_and_keeps_decay_length():
    decay = cosine_decay_schedule(0.1, 200)
    warm = linear_warmup(decay, warmup_steps=40, init_value=0.01)
    check(warm, lambda t: 0.01 + 0.09 * t / 40 if t < 40 else decay(t - 40))
    assert linear_warmup(decay, 0) is decay


def test_warmup_cosine_matches_optax_formula():
    s = warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=20, decay_steps=120, end_value=0.1)

    def optax(t):  # optax.warmup_cosine_decay_schedule, written out
        if t < 20:
            return t / 20
        c = min(t - 20, 100)
        return (1.0 - 0.1) * 0.5 * (1 + math.cos(math.pi * c / 100)) + 0.1

    check(s, optax)


def test_extend_constant_phase_keeps_the_decay():
    round1 = linear_warmup(linear_schedule(1.0, 0.0, 900), warmup_steps=100)
    round2 = extend_constant_phase(round1, at_step=100, extra_steps=500)
    steps = np.arange(0, 1600)
    r2 = round2(steps)
    # Warmup unchanged, a held peak, then round 1's decay shifted by 500 steps.
    np.testing.assert_array_equal(r2[:100], round1(steps[:100]))
    np.testing.assert_array_equal(r2[100:600], 1.0)
    np.testing.assert_allclose(r2[600:], round1(steps[100:1100]), rtol=0, atol=1e-15)
    assert [round2(s) for s in (50, 400, 1500)] == [0.5, 1.0, 0.0]
    # A constant-then-cosine schedule extended at the start of the decay.
    base = join_schedules([0.3, cosine_decay_schedule(0.3, 100)], [50])
    longer = extend_constant_phase(base, at_step=50, extra_steps=25)
    check(longer, lambda t: base(t) if t < 50 else (base(50) if t < 75 else base(t - 25)))


# ------------------------------------------------------------ cyclical and 1cycle vs torch


def torch_values(make, steps, key="lr", optimizer="sgd"):
    param = torch.nn.Parameter(torch.zeros(1))
    if optimizer == "sgd":
        opt = torch.optim.SGD([param], lr=1.0, momentum=0.9)
    else:
        opt = torch.optim.Adam([param], lr=1.0)
    scheduler = make(opt)
    values = []
    for _ in range(steps):
        group = opt.param_groups[0]
        values.append(group[key] if key != "beta1" else group["betas"][0])
        opt.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("mode,gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.995)])
@pytest.mark.parametrize("down", [None, 7])
def test_cyclic_matches_torch_cycliclr(mode, gamma, down):
    n = 120
    ref_lr = torch_values(lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, 0.01, 0.1, step_size_up=13, step_size_down=down, mode=mode, gamma=gamma,
        base_momentum=0.8, max_momentum=0.9), n)
    ref_m = torch_values(lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, 0.01, 0.1, step_size_up=13, step_size_down=down, mode=mode, gamma=gamma,
        base_momentum=0.8, max_momentum=0.9), n, key="momentum")
    lr = cyclic_schedule(0.01, 0.1, 13, down, mode=mode, gamma=gamma)
    momentum = cyclic_schedule(0.9, 0.8, 13, down, mode=mode, gamma=gamma)  # the inverse cycle
    np.testing.assert_allclose(lr(np.arange(n)), ref_lr, rtol=1e-12)
    np.testing.assert_allclose(momentum(np.arange(n)), ref_m, rtol=1e-12)


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_matches_torch_onecyclelr(anneal, three_phase):
    total = 100
    kwargs = dict(total_steps=total, pct_start=0.25, anneal_strategy=anneal, div_factor=10.0,
                  final_div_factor=100.0, three_phase=three_phase, base_momentum=0.8, max_momentum=0.95)

    def make(o):
        return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.5, **kwargs)

    ours = one_cycle(max_value=0.5, **kwargs)
    np.testing.assert_allclose(ours.learning_rate(np.arange(total)), torch_values(make, total), rtol=1e-12)
    np.testing.assert_allclose(ours.momentum(np.arange(total)), torch_values(make, total, "momentum"), rtol=1e-12)
    np.testing.assert_allclose(ours.momentum(np.arange(total)),
                               torch_values(make, total, "beta1", optimizer="adam"), rtol=1e-12)
    assert ours.learning_rate(total + 50) == ours.learning_rate(total - 1)


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize("build,message", [
    (lambda: linear_warmup(0.1, warmup_steps=-1), "warmup_steps=-1 must be >= 0"),
    (lambda: linear_schedule(1.0, 0.0, transition_steps=0), "transition_steps=0 must be >= 1"),
    (lambda: linear_schedule(1.0, 0.0, 10, transition_begin=-5), "transition_begin=-5 must be >= 0"),
    (lambda: cosine_decay_schedule(1.0, decay_steps=10, alpha=-0.1), "alpha=-0.1 must be >= 0"),
    (lambda: cosine_decay_schedule(float("nan"), 10), "init_value=nan must be finite"),
    (lambda: rsqrt_schedule(1.0, timescale=0), "timescale=0.0 must be > 0"),
    (lambda: exponential_decay(1.0, 10, decay_rate=0.0), "decay_rate=0.0 must be > 0"),
    (lambda: polynomial_schedule(1.0, 0.0, power=0, transition_steps=5), "power=0.0 must be > 0"),
    (lambda: piecewise_constant_schedule(1.0, {-3: 0.1}), "boundary=-3 must be >= 0"),
    (lambda: join_schedules([0.1, 0.2], []), "must be len\\(schedules\\) - 1"),
    (lambda: join_schedules([0.1, 0.2, 0.3], [20, 10]), "strictly increasing"),
    (lambda: extend_constant_phase(0.1, at_step=5, extra_steps=-1), "extra_steps=-1 must be >= 0"),
    (lambda: cyclic_schedule(0.1, 1.0, mode="sawtooth"), "mode='sawtooth' must be one of"),
    (lambda: cyclic_schedule(0.1, 1.0, step_size_up=0), "step_size_up=0 must be >= 1"),
    (lambda: one_cycle(100, 0.1, pct_start=1.0), "pct_start=1.0 must be in \\(0, 1\\)"),
    (lambda: one_cycle(100, 0.1, pct_start=0.6, three_phase=True), "pct_start=0.6 must be < 0.5"),
    (lambda: one_cycle(100, 0.1, base_momentum=0.99, max_momentum=0.9), "base_momentum=0.99 must be <="),
    (lambda: warmup_cosine_decay_schedule(0.0, 1.0, 50, 50), "decay_steps=50 must be > warmup_steps=50"),
    (lambda: lr_range_test(lambda lr: 1.0, 1e-3, 1e-4), "max_lr=0.0001 must be > min_lr=0.001"),
])
def test_bad_arguments_name_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_types():
    with pytest.raises(TypeError, match="warmup_steps=1.5 must be an int"):
        linear_warmup(0.1, warmup_steps=1.5)
    with pytest.raises(TypeError, match="step must be an int"):
        constant_schedule(1.0)("3")


# ----------------------------------------------------------------------- LR range test


def quadratic_step_fn(curvature=4.0):
    """Gradient descent on f(x) = c x^2 / 2 with a random push (seeded) each step.

    x' = (1 - lr c) x + noise: the stationary loss E[c x^2/2] is least at lr = 1/c and
    infinite from lr = 2/c on, where the iteration diverges; small learning rates are
    slow to leave x = 1.
    """
    state = {"x": 1.0}
    noise = iter(np.random.default_rng(0).normal(0.0, 0.01, size=10_000))

    def step(lr):
        state["x"] = (1.0 - lr * curvature) * state["x"] + next(noise)
        return 0.5 * curvature * state["x"] ** 2

    return step


def test_lr_range_test_finds_the_stability_edge():
    result = lr_range_test(quadratic_step_fn(4.0), 1e-4, 10.0, 200, smoothing=0.3)
    assert result.diverged and len(result.losses) < 200
    assert result.learning_rates[-1] > 0.5  # it stopped past the edge at 2/c = 0.5 ...
    assert 0.05 < result.min_loss_lr < 0.5   # ... and the best loss sits below it
    low, high = result.suggested_range
    assert low < high == result.min_loss_lr
    assert low <= result.steepest_lr <= high
    np.testing.assert_allclose(result.learning_rates, np.geomspace(1e-4, 10.0, 200)[: len(result.losses)])


def test_lr_range_test_sets_the_optimizer_lr():
    param = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([param], lr=0.0)
    seen = []

    def step(lr):
        seen.append((lr, opt.param_groups[0]["lr"]))
        opt.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        opt.step()
        return float(loss.detach())

    result = lr_range_test(step, 1e-3, 1e-1, 20, mode="linear", optimizer=opt)
    assert [a for a, _ in seen] == [b for _, b in seen] == list(result.learning_rates)
    np.testing.assert_allclose(result.learning_rates, np.linspace(1e-3, 1e-1, 20))


# ----------------------------------------------------------------------- ScheduleLR


def test_schedule_lr_drives_torch_param_groups():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=1.0)
    first = linear_warmup(cosine_decay_schedule(0.1, 30), 10)
    second = one_cycle(40, 0.3).learning_rate
    scheduler = ScheduleLR(opt, [first, second])
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    for k in range(45):
        assert opt.param_groups[0]["lr"] == pytest.approx(first(k), rel=1e-15, abs=1e-18)
        assert opt.param_groups[1]["lr"] == pytest.approx(second(k), rel=1e-15)
        opt.step()
        scheduler.step()
    assert scheduler.get_last_lr() == [first(45), second(45)]


def test_schedule_lr_matches_lambdalr_and_round_trips():
    def run(make, steps):
        param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        opt = torch.optim.Adam([param], lr=0.01)
        scheduler = make(opt)
        for _ in range(steps):
            opt.zero_grad()
            (param**2).sum().backward()
            opt.step()
            scheduler.step()
        return param.detach().clone(), opt, scheduler

    schedule = warmup_cosine_decay_schedule(0.0, 0.05, 5, 40)
    ours, _, sched = run(lambda o: ScheduleLR(o, schedule), 30)
    ref, _, _ = run(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: schedule(k) / 0.01), 30)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)  # picklable: the schedule functions are left out
    buffer.seek(0)
    param = torch.nn.Parameter(torch.zeros(2))
    fresh = ScheduleLR(torch.optim.Adam([param], lr=0.01), schedule)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    assert fresh.last_epoch == 30
    fresh.step()
    assert fresh.get_last_lr() == [schedule(31)]


def test_schedule_lr_momentum_for_sgd_and_adam():
    cycle = one_cycle(20, 0.1)
    p = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1, betas=(0.9, 0.98))
    s1 = ScheduleLR(sgd, cycle.learning_rate, momentum=cycle.momentum)
    s2 = ScheduleLR(adam, cycle.learning_rate, momentum=cycle.momentum)
    for k in range(20):
        assert sgd.param_groups[0]["momentum"] == pytest.approx(cycle.momentum(k))
        assert adam.param_groups[0]["betas"] == pytest.approx((cycle.momentum(k), 0.98))
        sgd.step(), adam.step()
        s1.step(), s2.step()
    with pytest.raises(ValueError, match="has neither 'momentum' nor 'betas'"):
        ScheduleLR(torch.optim.Adagrad([p]), 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="has 2 schedules but the optimizer has 1 param groups"):
        ScheduleLR(sgd, [0.1, 0.2])


# ----------------------------------------------------------------------- DeviceSchedule


class HostSyncError(AssertionError):
    pass


@pytest.fixture
def forbid_host_reads(monkeypatch):
    """Make every tensor -> Python conversion raise: a device step must not do any."""

    def boom(*args, **kwargs):
        raise HostSyncError("a tensor was read on the host")

    def install():
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy"):
            monkeypatch.setattr(torch.Tensor, name, boom)

    return install


def test_device_schedule_follows_closed_form_without_host_reads(forbid_host_reads, monkeypatch):
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    lr_b = torch.tensor(0.0, dtype=torch.float64)
    opt = torch.optim.SGD([{"params": [a], "lr": 0.3}, {"params": [b], "lr": lr_b}])
    first = linear_warmup(cosine_decay_schedule(0.1, 50), 10)
    second = one_cycle(60, 0.2).learning_rate
    driver = DeviceSchedule(opt, [first, second], total_steps=60)
    lr_a = opt.param_groups[0]["lr"]
    assert isinstance(lr_a, torch.Tensor) and lr_a.dim() == 0 and lr_a.dtype == torch.float32
    assert opt.param_groups[1]["lr"] is lr_b  # a tensor lr is updated in place, never replaced
    seen_a, seen_b = [lr_a.clone()], [lr_b.clone()]
    forbid_host_reads()
    for _ in range(69):
        driver.step()
        seen_a.append(lr_a.clone())
        seen_b.append(lr_b.clone())
    monkeypatch.undo()
    steps = np.minimum(np.arange(70), 59)  # past the table the last value holds
    np.testing.assert_allclose(torch.stack(seen_a).numpy(), first(steps).astype(np.float32), rtol=0)
    np.testing.assert_allclose(torch.stack(seen_b).numpy(), second(steps), rtol=1e-15)
    assert driver.last_lr() == [pytest.approx(first(59), rel=1e-6), pytest.approx(second(59))]


def test_device_schedule_state_dict_and_training():
    def train(resume_at=None):
        param = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        opt = torch.optim.Adam([param], lr=torch.tensor(0.0), foreach=False)
        schedule = linear_warmup(0.05, 5)
        driver = DeviceSchedule(opt, schedule, total_steps=20)
        for k in range(20):
            if k == resume_at:
                state = driver.state_dict()
                driver = DeviceSchedule(opt, schedule, total_steps=20)
                driver.load_state_dict(state)
            opt.zero_grad()
            (param**2).sum().backward()
            opt.step()
            driver.step()
        return param.detach()

    ref_param = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    ref = torch.optim.Adam([ref_param], lr=0.05)
    lam = torch.optim.lr_scheduler.LambdaLR(ref, lambda k: linear_warmup(0.05, 5)(k) / 0.05)
    for _ in range(20):
        ref.zero_grad()
        (ref_param**2).sum().backward()
        ref.step()
        lam.step()
    torch.testing.assert_close(train(), ref_param.detach())
    torch.testing.assert_close(train(resume_at=7), ref_param.detach())


def test_device_schedule_errors():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="total_steps=0 must be >= 1"):
        DeviceSchedule(torch.optim.SGD([p], lr=0.1), 0.1, total_steps=0)
    with pytest.raises(ValueError, match="must be a 0-dim tensor"):
        DeviceSchedule(torch.optim.SGD([p], lr=torch.tensor([0.1])), 0.1, total_steps=3)
    driver = DeviceSchedule(torch.optim.SGD([p], lr=0.1), 0.1, total_steps=3)
    with pytest.raises(ValueError, match="total_steps=4"):
        driver.load_state_dict({"total_steps": 4, "steps": [0]})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_schedule_inside_a_cuda_graph():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(64, device="cuda"))
    opt = torch.optim.Adam([param], lr=torch.tensor(0.0, device="cuda"), capturable=True)
    schedule = linear_warmup(cosine_decay_schedule(0.01, 30), 10)
    driver = DeviceSchedule(opt, schedule, total_steps=40)
    param.grad = torch.ones_like(param)
    opt.step()  # state init outside the graph
    driver.load_state_dict({"total_steps": 40, "steps": [0]})
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a host sync inside step() raises
    try:
        driver.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    driver.load_state_dict({"total_steps": 40, "steps": [0]})
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        opt.step()
        driver.step()
    torch.cuda.current_stream().wait_stream(stream)
    driver.load_state_dict({"total_steps": 40, "steps": [0]})
    lrs = []
    for _ in range(35):
        graph.replay()
        lrs.append(float(opt.param_groups[0]["lr"]))
    np.testing.assert_allclose(lrs, schedule(np.arange(1, 36)).astype(np.float32), rtol=1e-6)


# ----------------------------------------------------------------------- docs


@pytest.mark.parametrize("module", ["_decay", "_join", "_cyclic", "_range_test", "_torch", "__init__"])
def test_docstring_examples_run(module):
    import importlib

    mod = sch if module == "__init__" else importlib.import_module(f"tunebook.schedules.{module}")
    result = doctest.testmod(mod, verbose=False)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_device_schedule_drives_tunebook_optimizers(name, forbid_host_reads, monkeypatch):
    """tunebook's fused optimizers read the 0-dim lr tensor in their kernels: a run with
    DeviceSchedule matches torch.optim + LambdaLR on the same closed-form schedule."""
    optim = pytest.importorskip("tunebook.optim")
    torch.manual_seed(0)
    data = torch.randn(8, 5)
    schedule = linear_warmup(cosine_decay_schedule(0.05, 25), 5)
    kwargs = {"momentum": 0.9, "nesterov": True} if name == "SGD" else {"betas": (0.9, 0.99)}

    def run(make, drive, strict=False):
        param = torch.nn.Parameter(torch.linspace(-1, 1, 5))
        opt = make([param])
        driver = drive(opt)
        trace = []
        for k in range(30):
            opt.zero_grad()
            ((data @ param).sin() ** 2).mean().backward()
            if strict and k > 0:  # after state init: optimizer step + schedule step read nothing on the host
                forbid_host_reads()
            opt.step()
            driver.step()
            monkeypatch.undo()
            trace.append(param.detach().clone())
        return torch.stack(trace)

    ours = run(lambda p: getattr(optim, name)(p, lr=0.0, **kwargs),
               lambda o: DeviceSchedule(o, schedule, total_steps=30), strict=True)
    ref = run(lambda p: getattr(torch.optim, name)(p, lr=0.05, foreach=False, **kwargs),
              lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: schedule(k) / 0.05))
    torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    peak=st.floats(1e-6, 10.0),
    warmup=st.integers(0, 50),
    decay=st.integers(1, 200),
    alpha=st.floats(0.0, 1.0),
    at=st.integers(0, 100),
    extra=st.integers(0, 100),
)
def test_composed_schedules_properties(peak, warmup, decay, alpha, at, extra):
    base = linear_warmup(cosine_decay_schedule(peak, decay, alpha=alpha), warmup)
    steps = np.arange(0, warmup + decay + 20)
    values = base(steps)
    # Scalar and array forms agree; values stay between the floor and the peak.
    np.testing.assert_array_equal(values, [base(int(s)) for s in steps])
    assert values.min() >= 0 and values.max() <= peak * (1 + 1e-12)
    assert base(warmup) == pytest.approx(peak) and base(warmup + decay + 5) == pytest.approx(alpha * peak)
    # Warmup rises monotonically, then the decay never rises.
    assert np.all(np.diff(values[: warmup + 1]) >= 0) and np.all(np.diff(values[warmup:]) <= 1e-15)
    # Extending the constant phase shifts the rest of the schedule by exactly `extra`.
    longer = extend_constant_phase(base, at_step=at, extra_steps=extra)
    t = np.arange(at, at + 150)
    np.testing.assert_array_equal(longer(t + extra), base(t))
    np.testing.assert_array_equal(longer(np.arange(at)), base(np.arange(at)))
    assert np.all(longer(np.arange(at, at + extra)) == base(at))


# ----------------------------------------------------------------- steps of any size


def test_any_integer_is_a_step():
    cosine = cosine_decay_schedule(0.1, 100)
    warm = linear_warmup(cosine, warmup_steps=10)
    for step in (10**20, 10**400, 2**64, np.uint64(2**64 - 1), np.int64(2**62)):
        assert cosine(step) == 0.0 and warm(step) == 0.0
    assert warm(-(10**30)) == 0.0  # before the start: the warmup's first value
    np.testing.assert_array_equal(cosine([0, 10**20, 10**400]), [0.1, 0.0, 0.0])
    assert exponential_decay(1.0, 10, 0.5)(10**20) == 0.0
    assert math.isinf(exponential_decay(1.0, 10, 2.0)(10**20))  # growth: inf, without a warning
    with pytest.raises(TypeError, match="step must be an int"):
        cosine([True, 2**70])


# ------------------------------------------------- DeviceSchedule with plain functions


def test_device_schedule_tabulates_plain_python_functions():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(params, lr=torch.tensor(0.0, dtype=torch.float64))
    # A branch on the step cannot take an array: it is evaluated step by step.
    driver = DeviceSchedule(opt, lambda s: 0.1 if s < 5 else 0.01, total_steps=10)
    assert driver.tables[0].tolist() == [0.1] * 5 + [0.01] * 5
    seen = []
    for _ in range(9):
        seen.append(float(opt.param_groups[0]["lr"]))
        driver.step()
    assert seen == [0.1] * 5 + [0.01] * 4
    # Functions of a float, and constant ones, too.
    assert driver.tables[0].dtype == torch.float64
    np.testing.assert_allclose(DeviceSchedule(opt, math.cos, 4).tables[0].numpy(), np.cos(np.arange(4)))
    assert DeviceSchedule(opt, lambda s: 0.3, 3).tables[0].tolist() == [0.3] * 3
    with pytest.raises(ValueError, match="must return a number for an int step; at step 0"):
        DeviceSchedule(opt, lambda s: "fast", 3)
    with pytest.raises(ValueError, match="is nan at step 2"):
        DeviceSchedule(opt, lambda s: math.nan if s == 2 else 0.1, 4)
