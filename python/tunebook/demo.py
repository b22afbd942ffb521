"""``make demo``: a real tuning study on real data, on the CPU, in a few minutes.

The question (the scientific hyperparameter): for an MLP on scikit-learn's handwritten
digits, which optimizer is better, Nesterov momentum or Adam? To compare them fairly,
each one's nuisance hyperparameters are tuned away: the learning rate (log scale), the
momentum / beta1 and the warmup fraction, searched quasi-randomly (scrambled Halton)
through a :class:`tunebook.Study` stored in SQLite. Each trial trains with a tunebook
fused optimizer (global-norm clipping and the gradient-norm log inside the step), a
linear-warmup + cosine-decay schedule kept on the device (:class:`DeviceSchedule`),
and a :class:`CheckpointKeeper` that keeps its best checkpoints.

The study follows the playbook's opening moves (:mod:`tunebook.playbook`):

1. **Batch size** ("Choosing the batch size"): a throughput sweep times the MLP's
   training step at doubling batch sizes on the CPU and picks the largest one whose
   doubling still raised the examples per second (up to ``--max-batch-size``).
2. **The study** above, at that batch size.
3. **Instability** ("Identifying unstable workloads"): a short run at twice the best
   learning rate of the winning optimizer, evaluating the training loss every step
   (early instability), and the training curves just above the best learning rate.

Each result is recorded with the study. At the end: the HTML report (a section per
procedure) and a printed summary (the batch size, the best configuration of each
optimizer, whether the comparison is fair, a suggested clipping threshold, and the
instability verdicts).

Run ``python -m tunebook.demo --help`` for the options. Running it again resumes an
unfinished study, or starts the next one (``digits-mlp-2``, ...) when it is finished.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

SPACE = {
    "optimizer": {"type": "categorical", "choices": ["nesterov", "adam"]},
    "nesterov_lr": {"name": "learning_rate", "low": 1e-3, "high": 3.0, "scale": "log",
                    "when": {"optimizer": ["nesterov"]}},
    "momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer": ["nesterov"]}},
    "adam_lr": {"name": "learning_rate", "low": 1e-4, "high": 3e-1, "scale": "log",
                "when": {"optimizer": ["adam"]}},
    "beta1": {"low": 0.8, "high": 0.99, "when": {"optimizer": ["adam"]}},
    "warmup_fraction": {"low": 0.0, "high": 0.2},
}
"""The search space: one scientific hyperparameter, its conditional nuisance ones."""

STUDY_NAME = "digits-mlp"
DEFAULT_TRIALS = 40


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tunebook.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=None,
                        help=f"trials in the study (default {DEFAULT_TRIALS}; given on a resumed study, its new size)")
    parser.add_argument("--steps", type=int, default=500, help="training steps per trial (default 500)")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between evaluations (default 25)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size (default: chosen by a throughput sweep; a resumed study keeps its own)")
    parser.add_argument("--max-batch-size", type=int, default=128,
                        help="the largest batch size the throughput sweep tries (default 128: on 2 cores a step "
                             "at 128 costs about what one at 64 does, beyond that each of the 40 x 500 steps costs "
                             "more, and the demo should stay within a few minutes)")
    parser.add_argument("--check-steps", type=int, default=500,
                        help="steps of the early-instability check at 2x the best learning rate (default 500)")
    parser.add_argument("--max-grad-norm", type=float, default=5.0, help="clipping threshold (default 5)")
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--name", default=STUDY_NAME, help=f"study name (default {STUDY_NAME})")
    parser.add_argument("--new", action="store_true", help="start a new study even if the last one is unfinished")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the MLP is too small to gain from more)")
    parser.add_argument("--seed", type=int, default=0, help="Halton seed of a new study")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    # Every argument is checked here, before the study is touched: a bad one must not
    # burn a trial, nor become the study's "reproduce with" command.
    for name in ("trials", "steps", "eval_every", "batch_size", "max_batch_size", "threads", "check_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}={value} must be >= 1")
    if args.eval_every > args.steps:
        parser.error(f"--eval-every={args.eval_every} must be <= --steps={args.steps}")
    if not (math.isfinite(args.max_grad_norm) and args.max_grad_norm > 0):
        parser.error(f"--max-grad-norm={args.max_grad_norm} must be a finite number > 0 (the clipping threshold)")
    if not 0 <= args.seed < 2**63:
        parser.error(f"--seed={args.seed} must be in [0, 2**63)")
    if not args.name.strip():
        parser.error("--name must not be empty")
    given = sys.argv[1:] if argv is None else list(argv)
    args.command = f"python -m tunebook.demo {shlex.join(given)}" if given else "make demo"
    return args


def preflight(args: argparse.Namespace) -> Path:
    """Checks what the demo needs before it touches the study: its packages and a
    writable output directory. Exits with a message naming the fix."""
    import importlib.util

    missing = [name for module, name in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"))
               if importlib.util.find_spec(module) is None]
    if missing:
        sys.exit(f'tunebook demo: it needs {" and ".join(missing)}: pip install "tunebook[demo]"')
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tunebook-write-probe"
        probe.touch()
        probe.unlink()
    except OSError as error:
        sys.exit(f"tunebook demo: cannot write to --out {out}: {error.strerror}; choose a writable directory")
    return out


# --------------------------------------------------------------------------- data, model


def load_data(seed: int = 0) -> dict[str, Any]:
    """The digits (1797 8x8 images, 10 classes; shipped with scikit-learn), split
    60/20/20 into train/valid/test with a fixed permutation, pixels scaled to [0, 1]."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_train, n_valid = int(0.6 * len(y)), int(0.2 * len(y))
    return {
        "train": (x[:n_train], y[:n_train]),
        "valid": (x[n_train:n_train + n_valid], y[n_train:n_train + n_valid]),
        "test": (x[n_train + n_valid:], y[n_train + n_valid:]),
    }


def make_model(seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def make_optimizer(params: Any, config: dict[str, Any], max_grad_norm: float) -> Any:
    import tunebook.optim as optim

    if config["optimizer"] == "nesterov":
        return optim.SGD(params, lr=config["learning_rate"], momentum=config["momentum"], nesterov=True,
                         max_grad_norm=max_grad_norm, log_grad_norm=True)
    return optim.Adam(params, lr=config["learning_rate"], betas=(config["beta1"], 0.999),
                      max_grad_norm=max_grad_norm, log_grad_norm=True)


def evaluate(model: Any, data: tuple[Any, Any]) -> tuple[float, float]:
    import torch

    x, y = data
    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
    return float(loss), float(accuracy)


# --------------------------------------------------------------------------- one trial


def run_trial(trial: Any, data: dict[str, Any], args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Train one configuration; report to the study; keep the best checkpoints.

    A trial is infeasible (the playbook's red x) when its loss becomes non-finite, the
    validation loss rises above three times its starting value, or the training loss
    ends no lower than the starting loss (it diverged, or never learned).
    """
    import torch

    from tunebook.checkpoints import CheckpointKeeper
    from tunebook.schedules import DeviceSchedule, cosine_decay_schedule, linear_warmup

    config = trial.params
    model = make_model(seed=1000 + trial.index)
    optimizer = make_optimizer(model.parameters(), config, args.max_grad_norm)
    warmup = int(round(config["warmup_fraction"] * args.steps))
    schedule = linear_warmup(cosine_decay_schedule(config["learning_rate"], args.steps - warmup), warmup)
    lr_driver = DeviceSchedule(optimizer, schedule, total_steps=args.steps)
    keeper = CheckpointKeeper(run_dir / f"trial-{trial.index:04d}", keep=2, metric="valid_loss", fsync=False)
    x_train, y_train = data["train"]
    generator = torch.Generator().manual_seed(trial.index)
    order = torch.randperm(len(y_train), generator=generator)
    cursor = 0
    start_loss, _ = evaluate(model, data["valid"])
    trial.report(step=0, valid_loss=start_loss, train_loss=start_loss)
    running = torch.zeros(())
    counted = 0
    status = "complete"
    for step in range(1, args.steps + 1):
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(y_train), generator=generator), 0
        index = order[cursor:cursor + args.batch_size]
        cursor += args.batch_size
        loss = torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_driver.step()
        running += loss.detach()
        counted += 1
        if step % args.eval_every == 0 or step == args.steps:
            train_loss = float(running) / counted
            running.zero_()
            counted = 0
            valid_loss, valid_accuracy = evaluate(model, data["valid"])
            trial.report(step=step, train_loss=train_loss, valid_loss=valid_loss, valid_accuracy=valid_accuracy)
            if not (math.isfinite(train_loss) and math.isfinite(valid_loss)) or valid_loss > 3 * start_loss:
                status = "infeasible"
                break
            test_loss, test_accuracy = evaluate(model, data["test"])
            # The test metrics ride along with the checkpoint; they never choose it.
            keeper.save(step, {"model": model.state_dict(), "config": config},
                        {"valid_loss": valid_loss, "valid_accuracy": valid_accuracy,
                         "test_loss": test_loss, "test_accuracy": test_accuracy})
    log = optimizer.grad_norms()
    for step, norm in enumerate(log.norms.tolist(), start=1):
        trial.report(step=step, grad_norm=norm)
    best = keeper.best()
    if status == "complete" and (best is None or train_loss >= start_loss):
        status = "infeasible"  # training ended no better than it started: diverged, or never learned
    keeper.close()
    if status == "infeasible":
        trial.infeasible("diverged or did not learn")
    else:
        trial.complete()
    return {"status": status, "best": best, "norms": log}


# --------------------------------------------------------------------------- the playbook's opening moves


def throughput_step(data: dict[str, Any], max_grad_norm: float, seed: int = 0) -> Any:
    """One full training step of the demo's MLP (forward, backward, fused Adam) at a
    given batch size: what the throughput sweep times."""
    import torch

    model = make_model(seed)
    optimizer = make_optimizer(model.parameters(), {"optimizer": "adam", "learning_rate": 1e-3, "beta1": 0.9},
                               max_grad_norm)
    x_train, y_train = data["train"]
    generator = torch.Generator().manual_seed(seed)

    def step(batch_size: int) -> None:
        index = torch.randperm(len(y_train), generator=generator)[:batch_size]
        loss = torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def choose_batch_size(study: Any, args: argparse.Namespace, data: dict[str, Any], resumed: bool) -> int:
    """The study's batch size: the one it already ran with when resumed, else
    ``--batch-size``, else the throughput sweep's recommendation (recorded with the study)."""
    from tunebook.playbook import throughput_sweep

    stored = study.attrs.get("demo.batch_size")
    if stored is not None:
        if args.batch_size is not None and args.batch_size != stored:
            raise SystemExit(f"python -m tunebook.demo: error: study {study.name!r} runs with batch size {stored}; "
                             f"resume it without --batch-size (or with --batch-size {stored}), or pass --new")
        return int(stored)
    if args.batch_size is not None or (resumed and study.trials()):
        batch_size = args.batch_size or 64  # a study begun before the sweep existed ran at 64
    else:
        x_train, _ = data["train"]
        sweep = throughput_sweep(throughput_step(data, args.max_grad_norm), start=min(16, args.max_batch_size),
                                 max_batch_size=min(args.max_batch_size, len(x_train)), study=study)
        batch_size = sweep.recommended or 16
    study.set_attr("demo.batch_size", batch_size)
    return batch_size


def check_early_instability(study: Any, data: dict[str, Any], args: argparse.Namespace) -> Any:
    """The playbook's early-instability check: the best trial's configuration (its
    optimizer, momentum or beta1, warmup and cosine schedule) with twice its learning
    rate, for ``--check-steps`` steps, the loss on the whole training set evaluated
    after every step. Recorded with the study; None when no trial is feasible."""
    import torch

    from tunebook.playbook import early_instability_check
    from tunebook.schedules import DeviceSchedule, cosine_decay_schedule, linear_warmup

    best = study.best_trial()
    if best is None:
        return None
    config = dict(best.params)

    def train(lr: float, steps: int, eval_every: int, report: Any) -> None:
        model = make_model(seed=1000 + best.index)
        optimizer = make_optimizer(model.parameters(), {**config, "learning_rate": lr}, args.max_grad_norm)
        warmup = int(round(config["warmup_fraction"] * args.steps))
        schedule = linear_warmup(cosine_decay_schedule(lr, args.steps - warmup), warmup)
        lr_driver = DeviceSchedule(optimizer, schedule, total_steps=args.steps)
        x_train, y_train = data["train"]
        generator = torch.Generator().manual_seed(best.index)
        report(0, evaluate(model, data["train"])[0])
        for step in range(1, steps + 1):
            index = torch.randperm(len(y_train), generator=generator)[:args.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_driver.step()
            if step % eval_every == 0:
                train_loss = evaluate(model, data["train"])[0]
                report(step, train_loss)
                if not math.isfinite(train_loss):
                    break

    # The loss is evaluated exactly on the whole training set: no noise to smooth away,
    # and a running median would hide a short burst in the steep first steps.
    return early_instability_check(train, config["learning_rate"], steps=args.check_steps, study=study, smooth=1)


# --------------------------------------------------------------------------- the study


def open_study(args: argparse.Namespace, storage: str) -> Any:
    """Resume the newest study of this name if it is unfinished, else start the next."""
    from tunebook import SearchSpace, Study
    from tunebook.study import list_studies

    names = {row["name"] for row in list_studies(storage)}

    def numbered(k: int) -> str:
        return args.name if k == 1 else f"{args.name}-{k}"

    k = 1
    while numbered(k) in names:
        k += 1
    command = getattr(args, "command", None) or "make demo"
    if k > 1 and not args.new:
        study = Study(numbered(k - 1), storage=storage)
        records = study.trials()
        size = args.trials if args.trials is not None else study.max_trials
        if len(records) < (size or 0) or any(r.state in ("running", "pending") for r in records):
            if size != study.max_trials:  # a new --trials resizes the study it resumes
                study = Study(study.name, storage=storage, max_trials=size)
            return study, True
    name = numbered(k)
    study = Study(name, SearchSpace.from_dict(SPACE), storage=storage, seed=args.seed,
                  max_trials=args.trials or DEFAULT_TRIALS,
                  metric="valid_loss", mode="min", config_path="tunebook/demo.py (SPACE)",
                  notes="Nesterov momentum vs Adam on sklearn digits, MLP 64-128-128-10; nuisance: "
                        "learning rate, momentum/beta1, warmup fraction",
                  command=command)
    return study, False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from tqdm import tqdm

    out = preflight(args)
    storage = f"sqlite:///{out / 'studies.db'}"
    study, resumed = open_study(args, storage)
    print(f"tunebook demo: study {study.name!r} in {storage} "
          f"({'resuming' if resumed else 'new'}, {study.max_trials} trials x {args.steps} steps)")
    data = load_data()
    run_dir = out / study.name
    # The first optimizer use may compile the C++ kernels (cached afterwards).
    probe = make_optimizer([torch.nn.Parameter(torch.zeros(1))], {"optimizer": "adam", "learning_rate": 1e-3,
                                                                   "beta1": 0.9}, 1.0)
    print(f"optimizer backend: {probe.backend}")
    moment = time.perf_counter()
    args.batch_size = choose_batch_size(study, args, data, resumed)
    sweep_seconds = time.perf_counter() - moment
    moment = time.perf_counter()
    print(f"batch size: {args.batch_size}")

    done = sum(r.state in ("complete", "infeasible", "failed") for r in study.trials())
    bar = tqdm(total=study.max_trials, initial=done, unit="trial", disable=args.no_progress,
               dynamic_ncols=True, file=sys.stdout)
    best: dict[str, float] = {}
    while (trial := study.ask(lease_seconds=120.0)) is not None:
        with trial:
            result = run_trial(trial, data, args, run_dir)
        kind = trial.params["optimizer"]
        if result["best"] is not None and result["status"] == "complete":
            best[kind] = min(best.get(kind, math.inf), result["best"].metrics["valid_loss"])
        bar.set_postfix({k: f"{v:.3f}" for k, v in sorted(best.items())}, refresh=False)
        bar.update(1)
    bar.close()
    train_seconds = time.perf_counter() - moment
    from tunebook.playbook import lr_sweep_instability

    moment = time.perf_counter()
    check_early_instability(study, data, args)
    try:
        lr_sweep_instability(study, record=True)
    except ValueError as error:  # no feasible trial: there is no best learning rate
        print(f"instability above the best learning rate: not judged ({error})")
    check_seconds = time.perf_counter() - moment

    summary = summarize(study, args, run_dir)
    from tunebook.report import write_report

    report_path = write_report(study, out / f"{study.name}-report.html", scientific=["optimizer"],
                               max_grad_norm=args.max_grad_norm)
    print(summary)
    print(f"\nreport: {report_path.resolve()}")
    print(f"study table: tunebook studies --storage {storage}")
    print(f"time: {time.perf_counter() - started:.0f} s (throughput sweep {sweep_seconds:.1f} s, study "
          f"{train_seconds:.0f} s, instability checks {check_seconds:.1f} s)")
    return 0


def summarize(study: Any, args: argparse.Namespace, run_dir: Path) -> str:
    """The printed summary: the batch size, the best configuration of each optimizer,
    whether the comparison is fair, a suggested clipping threshold, and the
    instability verdicts."""
    from tunebook.analysis import axis_plot_data, grad_norm_data, sampled_enough_data
    from tunebook.checkpoints import CheckpointKeeper
    from tunebook.playbook import recorded

    records = study.trials()
    procedures = {r.procedure: r.result for r in recorded(study) if r.result is not None}
    lines = ["", f"== {study.name}: {len(records)} trials =="]
    sweep = procedures.get("throughput_sweep")
    if sweep is not None:
        lines.append(f"\nBatch size (playbook: choosing the batch size), throughput sweep on {sweep.device}:")
        for size, per_step, rate, gain in zip(sweep.batch_sizes.tolist(), sweep.time_per_step, sweep.throughput,
                                              sweep.gains):
            scaled = "" if math.isnan(gain) else f"  x{gain:.2f}"
            lines.append(f"  {size:6d}  {rate:10,.0f} examples/s  {per_step * 1e3:7.2f} ms/step{scaled}")
        lines.append(f"  {sweep.verdict}")
        lines.extend(f"  ! {w.message}" for w in sweep.warnings)
        if any(w.code == "max_batch_size_reached" for w in sweep.warnings):
            lines.append(f"  (the demo caps the sweep at --max-batch-size {args.max_batch_size} to keep its "
                         f"{study.max_trials} trials x {args.steps} steps short)")
    else:
        lines.append(f"\nBatch size: {args.batch_size} (given, not swept)")
    lines.append("\nBest configuration per optimizer (the scientific hyperparameter):")
    for kind in ("nesterov", "adam"):
        mine = [r for r in records if r.params.get("optimizer") == kind]
        good = [r for r in mine if r.state == "complete" and r.best_value is not None]
        infeasible = sum(r.state == "infeasible" for r in mine)
        if not good:
            lines.append(f"  {kind:9s} no feasible trial ({infeasible} infeasible of {len(mine)})")
            continue
        top = min(good, key=lambda r: r.best_value)
        keeper = CheckpointKeeper(run_dir / f"trial-{top.index:04d}", keep=2, metric="valid_loss", fsync=False)
        checkpoint = keeper.best()
        keeper.close()
        test = f", test accuracy {checkpoint.metrics['test_accuracy']:.3f}" if checkpoint else ""
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in top.params.items() if k != "optimizer")
        lines.append(f"  {kind:9s} valid_loss {top.best_value:.4f} at step {top.best_step} (trial {top.index}{test})")
        lines.append(f"  {'':9s} {params}")
        lines.append(f"  {'':9s} {len(good)} feasible, {infeasible} infeasible of {len(mine)} trials")

    lines.append("\nIs the comparison fair?")
    axis = axis_plot_data(records, study.space, metric=study.metric, mode=study.mode)
    issues = [w for w in axis.warnings]
    for kind in ("nesterov", "adam"):
        mine = [r for r in records if r.params.get("optimizer") == kind and r.state in ("complete", "infeasible")]
        if mine:
            fraction = sum(r.state == "infeasible" for r in mine) / len(mine)
            lines.append(f"  {kind}: {fraction:.0%} of its trials infeasible")
    sampled = sampled_enough_data(records, metric=study.metric, mode=study.mode, group_by="optimizer")
    issues += list(sampled.warnings)
    if issues:
        for warning in issues:
            lines.append(f"  ! {warning.message}")
    else:
        lines.append("  yes by these checks: no best trial near a search boundary, few infeasible trials, "
                     "and more trials would not change the best much (bootstrap)")

    norms = {f"trial {r.index}": r.history("grad_norm") for r in records if r.state == "complete"}
    norms = {k: v for k, v in norms.items() if v[1].size}
    if norms:
        g = grad_norm_data(norms, max_grad_norm=args.max_grad_norm)
        lines.append(f"\nGradient clipping: suggested max_grad_norm = {g.suggested_clip:.3g} (90th percentile of "
                     f"{g.norms.size} logged norms); with {args.max_grad_norm:g} in use, "
                     f"{g.clipped_fraction:.0%} of updates were clipped")
        for warning in g.warnings:
            lines.append(f"  ! {warning.message}")

    check, above = procedures.get("early_instability_check"), procedures.get("lr_sweep_instability")
    if check is not None or above is not None:
        lines.append("\nTraining instability (playbook: identifying unstable workloads):")
    if check is not None:
        lines.append(f"  early check: {check.verdict}")
    if above is not None:
        lines.append(f"  above lr*:   {above.verdict}")
        lines.extend(f"  ! {w.message}" for w in above.warnings)
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
