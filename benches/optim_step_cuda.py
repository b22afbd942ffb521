"""GPU optimizer-step benchmark: tunebook's CUDA kernels against torch, in one process.

Cases (the goals of the CUDA issue):
  adam-1B      Adam + clipping + norm log on float32 params (8 large tensors; --params, or
               "auto": the largest size that fits beside torch's run, 40% of free memory at
               16 bytes per param), against clip_grad_norm_ + torch.optim.Adam(fused=True).
  rmsprop/nadam  ~256M float32 params, against clip_grad_norm_ + torch foreach (torch has
               no fused RMSprop/NAdam).
  adam-2000    ~2000 small tensors (a transformer-like mix), against clip + fused Adam; also
               counts the kernel launches of one step of each (torch.profiler), and times
               both captured in a CUDA graph (no host overhead: the kernels alone).
  adam-bf16    bf16 params, float32 moments (the ops directly), and bf16 params with bf16
               state through tunebook.optim.Adam.

Times are medians of --steps CUDA-event-timed steps after --warmup steps. The floor of a
case is the bytes a step must move (the norm pass reads every grad once, the update reads
params, grads and state and writes params and state) divided by the measured device-to-device
copy bandwidth (torch's copy_ of a 2 GiB buffer: read + write bytes / time).

Usage: python benches/optim_step_cuda.py [--quick] [--params 1e9|auto] [--cases adam-1B,adam-2000]
       [--steps 20] [--json rows.json] [--dry-run]
--quick: 10 timed steps after 2 warm-ups, --params auto capped at 4e9, 1.28e8 params for the
other large cases: about 2 minutes on an H200 (the one-shot GPU check, scripts/gpu_check.sh).
A case that fails prints its error as a row and the others still run. --dry-run checks the
arguments and prints the plan without a GPU. Prints a note and exits 0 when no GPU is present.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import traceback

import torch


def timed(fn, steps: int, warmup: int) -> float:
    """Median milliseconds of fn() over `steps` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(gib: float = 2.0) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, device="cuda")
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), steps=20, warmup=3)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def kernel_launches(fn) -> int:
    """CUDA kernels one call of fn() launches (memcpy/memset excluded)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset")))


def make_params(sizes, dtype=torch.float32, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    params = []
    for n in sizes:
        p = torch.randn(n, device="cuda", dtype=dtype, generator=gen).requires_grad_()
        p.grad = torch.randn(n, device="cuda", dtype=dtype, generator=gen) * 1e-3
        params.append(p)
    return params


def free():
    gc.collect()
    torch.cuda.empty_cache()


ROWS: list[tuple] = []


def report(case, impl, ms, bytes_per_param, n_params, bw, baseline_ms=None, launches=None):
    floor_ms = bytes_per_param * n_params / (bw * 1e9) * 1e3
    ROWS.append((case, impl, ms, bytes_per_param * n_params / (ms * 1e-3) / 1e9,
                 floor_ms / ms, None if baseline_ms is None else baseline_ms / ms, launches))


def case_adam_large(n_params: int, bw: float, args) -> None:
    import tunebook.optim as tbo

    sizes = [n_params // 8] * 8
    n = sum(sizes)
    params = make_params(sizes)
    torch_opt = torch.optim.Adam(params, lr=1e-3, fused=True)

    def torch_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch_opt.step()

    label = f"adam-{n / 1e9:.2g}B"
    torch_ms = timed(torch_step, args.steps, args.warmup)
    report(label, "clip_grad_norm_ + Adam(fused)", torch_ms, 32, n, bw)
    del torch_opt
    free()
    tb_opt = tbo.Adam(params, lr=1e-3, max_grad_norm=1.0)
    assert tb_opt.backend == "cuda", tb_opt.backend
    tb_ms = timed(tb_opt.step, args.steps, args.warmup)
    report(label, "tunebook Adam (clip + log)", tb_ms, 32, n, bw, torch_ms)
    del tb_opt, params
    free()


def case_foreach_family(name: str, n_params: int, bw: float, args) -> None:
    import tunebook.optim as tbo

    tb_cls, torch_cls, bytes_per_param = {
        "rmsprop": (tbo.RMSprop, torch.optim.RMSprop, 24),  # p,g,sq read; p,sq write; norm
        "nadam": (tbo.NAdam, torch.optim.NAdam, 32),  # p,g,m,v read; p,m,v write; norm
    }[name]
    sizes = [n_params // 8] * 8
    n = sum(sizes)
    params = make_params(sizes)
    torch_opt = torch_cls(params, lr=1e-3, foreach=True)

    def torch_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch_opt.step()

    torch_ms = timed(torch_step, args.steps, args.warmup)
    report(name, "clip_grad_norm_ + foreach", torch_ms, bytes_per_param, n, bw)
    del torch_opt
    free()
    tb_opt = tb_cls(params, lr=1e-3, max_grad_norm=1.0)
    tb_ms = timed(tb_opt.step, args.steps, args.warmup)
    report(name, f"tunebook {tb_cls.__name__} (clip + log)", tb_ms, bytes_per_param, n, bw,
           torch_ms)
    del tb_opt, params
    free()


def transformer_like_sizes(count: int = 2000, seed: int = 0) -> list[int]:
    """Weights, biases and norms of a stack of small layers: ~2000 tensors, ~29M params."""
    gen = torch.Generator().manual_seed(seed)
    sizes = []
    while len(sizes) < count:
        width = int(torch.randint(64, 385, (1,), generator=gen))
        sizes += [width * width, width, width, width]  # weight, bias, norm weight, norm bias
    return sizes[:count]


def case_many_small(bw: float, args) -> None:
    import tunebook.optim as tbo

    sizes = transformer_like_sizes()
    n = sum(sizes)
    params = make_params(sizes)
    torch_opt = torch.optim.Adam(params, lr=1e-3, fused=True)

    def torch_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch_opt.step()

    torch_ms = timed(torch_step, args.steps, args.warmup)
    report(f"adam-{len(sizes)}", "clip_grad_norm_ + Adam(fused)", torch_ms, 32, n, bw,
           launches=kernel_launches(torch_step))
    del torch_opt
    free()
    tb_opt = tbo.Adam(params, lr=1e-3, max_grad_norm=1.0)
    tb_ms = timed(tb_opt.step, args.steps, args.warmup)
    report(f"adam-{len(sizes)}", "tunebook Adam (clip + log)", tb_ms, 32, n, bw, torch_ms,
           launches=kernel_launches(tb_opt.step))
    # Both captured in a CUDA graph: the GPU time alone, without Python and dispatch.
    graph_ms = timed(graphed(tb_opt.step), args.steps, args.warmup)
    del tb_opt
    free()
    torch_opt = torch.optim.Adam(params, lr=torch.tensor(1e-3, device="cuda"), fused=True,
                                 capturable=True)
    torch_graph_ms = timed(graphed(torch_step), args.steps, args.warmup)
    report(f"adam-{len(sizes)}", "clip_grad_norm_ + Adam(fused), CUDA graph", torch_graph_ms,
           32, n, bw)
    report(f"adam-{len(sizes)}", "tunebook Adam (clip + log), CUDA graph", graph_ms, 32, n, bw,
           torch_graph_ms)
    del torch_opt, params
    free()


def graphed(step):
    """`step` captured once into a CUDA graph (after 2 eager warm-up calls on a side
    stream); returns the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def case_bf16(n_params: int, bw: float, args) -> None:
    import tunebook.optim as tbo

    ops = torch.ops.tunebook
    sizes = [n_params // 8] * 8
    n = sum(sizes)
    params = make_params(sizes, dtype=torch.bfloat16)
    grads = [p.grad for p in params]
    m = [torch.zeros(s, device="cuda") for s in sizes]
    v = [torch.zeros(s, device="cuda") for s in sizes]
    steps = [torch.zeros((), device="cuda") for _ in sizes]
    control = torch.tensor([1.0, 0.0], device="cuda")
    counters = torch.zeros(3, dtype=torch.int64, device="cuda")
    log = torch.zeros(1 << 16, device="cuda")

    def op_step():  # what the optimizer runs, with float32 moments
        sq = ops.grad_sq_norm(grads)
        ops.step_control_(sq, None, None, control, counters, log, 1.0, True)
        ops.adam_step_(params, grads, m, v, [], steps, control, None, 1e-3, 0.9, 0.999, 1e-8,
                       0.0, False, False, False, 0)

    # bf16 p (2 read + 2 write), bf16 g (2 norm + 2 update), fp32 m, v (8 read + 8 write)
    report("adam-bf16", "tunebook ops, fp32 moments", timed(op_step, args.steps, args.warmup),
           24, n, bw)
    del m, v
    free()
    torch_opt = torch.optim.Adam(params, lr=1e-3, fused=True)

    def torch_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch_opt.step()

    torch_ms = timed(torch_step, args.steps, args.warmup)
    report("adam-bf16", "clip_grad_norm_ + Adam(fused), bf16 state", torch_ms, 16, n, bw)
    del torch_opt
    free()
    tb_opt = tbo.Adam(params, lr=1e-3, max_grad_norm=1.0)
    # bf16 p, g, m, v: 2+2+2+2 read, 2+2+2 write, 2 for the norm
    report("adam-bf16", "tunebook Adam, bf16 state", timed(tb_opt.step, args.steps, args.warmup),
           16, n, bw, torch_ms)
    del tb_opt, params, grads
    free()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 steps, 2 warm-ups, smaller cases: ~2 minutes on an H200")
    parser.add_argument("--params", default=None,
                        help='params of the large Adam case, or "auto" (default 1e9; '
                             '--quick: auto, at most 4e9)')
    parser.add_argument("--foreach-params", type=float, default=None,
                        help="params of the rmsprop/nadam/bf16 cases (default 2.56e8; "
                             "--quick: 1.28e8)")
    parser.add_argument("--cases", default="adam-1B,rmsprop,nadam,adam-2000,adam-bf16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the arguments and print the plan; needs no GPU")
    args = parser.parse_args(argv)
    quick = args.quick
    args.steps = args.steps if args.steps is not None else (10 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 3)
    args.params = args.params if args.params is not None else ("auto" if quick else "1e9")
    if args.params != "auto":
        try:
            args.params = float(args.params)
        except ValueError:
            parser.error(f'--params must be a number or "auto", got {args.params!r}')
        if args.params < 8:
            parser.error(f"--params must be >= 8, got {args.params:g}")
    args.max_auto_params = 4e9 if quick else 16e9
    if args.foreach_params is None:
        args.foreach_params = 1.28e8 if quick else 2.56e8
    known = {"adam-1B", "rmsprop", "nadam", "adam-2000", "adam-bf16"}
    args.case_list = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(args.case_list) - known)
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {sorted(known)}")
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    return args


def auto_params(limit: float) -> int:
    """The largest Adam case that fits: 40% of free memory at 16 bytes per param (params,
    grads and two moments), leaving the rest for torch's clip_grad_norm_ temporaries."""
    free_bytes, _ = torch.cuda.mem_get_info()
    return int(min(limit, 0.4 * free_bytes / 16)) // 8 * 8


def run_case(name: str, fn, *fn_args) -> None:
    """Runs one case; a failure becomes a row with the error, and the next case runs."""
    start = time.perf_counter()
    try:
        fn(*fn_args)
    except Exception as error:  # noqa: BLE001 - report and go on: GPU time is scarce
        traceback.print_exc()
        ROWS.append((name, f"FAILED: {type(error).__name__}: {error}"[:200], float("nan"),
                     float("nan"), float("nan"), None, None))
        free()
    print(f"  {name}: {time.perf_counter() - start:.1f} s", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.dry_run:
        print(f"optim_step_cuda (dry run): cases {args.case_list}, params {args.params} "
              f"(auto cap {args.max_auto_params:g}), foreach params {args.foreach_params:g}, "
              f"{args.steps} steps after {args.warmup} warm-ups, json {args.json}")
        return
    if not torch.cuda.is_available():
        print("optim_step_cuda: no CUDA GPU visible, nothing to measure "
              "(the CPU benchmark is benches/optim_step.py)")
        return
    import tunebook.optim as tbo

    if "cuda" not in tbo.library_backends():
        raise SystemExit("optim_step_cuda: the tunebook CUDA kernels did not build")
    torch.backends.cuda.matmul.allow_tf32 = True
    bw = copy_bandwidth()
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"CUDA {torch.version.cuda}  device-to-device copy: {bw:.0f} GB/s", flush=True)
    cases = args.case_list
    if "adam-1B" in cases:
        n = auto_params(args.max_auto_params) if args.params == "auto" else int(args.params)
        print(f"  adam large case: {n / 1e9:.2f}B params", flush=True)
        run_case("adam-large", case_adam_large, n, bw, args)
    for name in ("rmsprop", "nadam"):
        if name in cases:
            run_case(name, case_foreach_family, name, int(args.foreach_params), bw, args)
    if "adam-2000" in cases:
        run_case("adam-2000", case_many_small, bw, args)
    if "adam-bf16" in cases:
        run_case("adam-bf16", case_bf16, int(args.foreach_params), bw, args)
    header = (f"{'case':<10} {'implementation':<42} {'ms':>9} {'GB/s':>7} {'floor':>6} "
              f"{'speedup':>8} {'launches':>8}")
    print(header)
    print("-" * len(header))
    for case, impl, ms, gbs, frac, speedup, launches in ROWS:
        print(f"{case:<10} {impl:<42} {ms:9.3f} {gbs:7.0f} {frac:6.0%} "
              f"{'' if speedup is None else f'{speedup:7.2f}x':>8} "
              f"{'' if launches is None else launches:>8}")
    print("\nMarkdown (benches/README.md):\n")
    print("| case | implementation | ms | GB/s | share of copy floor | speed-up | launches |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for case, impl, ms, gbs, frac, speedup, launches in ROWS:
        print(f"| {case} | {impl} | {ms:.3f} | {gbs:.0f} | {frac:.0%} | "
              f"{'' if speedup is None else f'{speedup:.2f}x'} | "
              f"{'' if launches is None else launches} |")
    if args.json:
        info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                "cuda": torch.version.cuda, "copy_GBps": bw, "args": vars(args)}
        rows = [dict(zip(("case", "implementation", "ms", "GBps", "floor_share", "speedup",
                          "launches"), row)) for row in ROWS]
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
