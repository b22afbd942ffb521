"""Trial claims per second with 8 worker processes: tunebook vs Optuna, same storage.

Each worker loops: claim a trial, report one value, finish it. tunebook: ``study.ask()``,
``trial.report``, ``trial.complete()``; Optuna (the competitor, RDB storage with its
Halton QMC sampler, the closest match to a tunebook study): ``study.ask()``, two
``suggest_float``, ``study.tell()``. Workers start together at a barrier time; the
throughput is trials / (last worker's end - barrier). SQLite always; PostgreSQL when
``scripts/postgres.sh start`` has written .tunebook/postgres_url (or
$TUNEBOOK_TEST_POSTGRES_URL is set). Medians of 3 runs.

    python benches/study_claims.py [--trials 400] [--workers 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = {
    "lr": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "wd": {"min": 1e-6, "max": 1e-2, "scaling": "log"},
}


def worker(kind: str, storage: str, name: str, start_at: float, quota: int) -> None:
    if kind == "tunebook":
        from tunebook.study import Study

        study = Study.load(name, storage)
        study.params(0)  # rebuild the space from storage before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        while (trial := study.ask(lease_seconds=60)) is not None:
            trial.report(step=0, valid_loss=trial.params["lr"])
            trial.complete()
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.QMCSampler(qmc_type="halton", scramble=True, seed=0)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        time.sleep(max(0.0, start_at - time.time()))
        for _ in range(quota):
            trial = study.ask()
            lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            trial.suggest_float("wd", 1e-6, 1e-2, log=True)
            study.tell(trial, lr)
    print(time.time(), flush=True)


def create(kind: str, storage: str, name: str, trials: int) -> None:
    if kind == "tunebook":
        from tunebook.search import SearchSpace
        from tunebook.study import Study

        Study(name, SearchSpace.from_dict(SPACE), storage=storage, max_trials=trials)
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study(study_name=name, storage=storage)


def optuna_url(storage: str) -> str:
    return storage.replace("postgresql://", "postgresql+psycopg2://", 1)


def run_once(kind: str, storage: str, trials: int, workers: int) -> float:
    name = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    storage = storage if kind == "tunebook" else optuna_url(storage)
    create(kind, storage, name, trials)
    start_at = time.time() + 3.0  # after every worker has imported and connected
    quota = trials // workers
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, storage, name, repr(start_at), str(quota)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    ends = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} worker failed with exit code {proc.returncode}")
        ends.append(float(out.split()[-1]))
    if start_at < time.time() - 3600 or max(ends) <= start_at:
        raise RuntimeError("workers did not start at the barrier")
    return (quota * workers) / (max(ends) - start_at)


def postgres_url() -> str | None:
    url = os.environ.get("TUNEBOOK_TEST_POSTGRES_URL")
    path = ROOT / ".tunebook" / "postgres_url"
    if not url and path.exists():
        url = path.read_text().strip()
    if not url:
        return None
    try:
        import sqlalchemy as sa

        from tunebook.study._storage import get_engine

        with get_engine(url).connect() as connection:
            connection.execute(sa.text("select 1"))
    except Exception as error:  # noqa: BLE001
        print(f"(PostgreSQL not reachable, skipped: {error})")
        return None
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import optuna  # noqa: F401

        kinds = ["tunebook", "optuna"]
    except ImportError:
        print("(optuna is not installed: tunebook only; pip install optuna for the comparison)")
        kinds = ["tunebook"]
    backends = []
    with tempfile.TemporaryDirectory() as tmp:
        backends.append(("sqlite", lambda kind: f"sqlite:///{tmp}/{kind}-{uuid.uuid4().hex[:6]}.db"))
        pg = postgres_url()
        if pg is not None:
            backends.append(("postgresql", lambda kind: pg))
        print(f"{args.workers} worker processes, {args.trials} trials per run, median of {args.repeats} runs")
        print(f"{'storage':<12}{'tunebook claims/s':>20}{'optuna trials/s':>18}{'ratio':>8}")
        for backend, url in backends:
            rates = {
                kind: statistics.median(run_once(kind, url(kind), args.trials, args.workers) for _ in range(args.repeats))
                for kind in kinds
            }
            optuna_rate = rates.get("optuna")
            ratio = f"{rates['tunebook'] / optuna_rate:.2f}x" if optuna_rate else "-"
            optuna_text = f"{optuna_rate:.1f}" if optuna_rate else "-"
            print(f"{backend:<12}{rates['tunebook']:>20.1f}{optuna_text:>18}{ratio:>8}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, storage, name, start_at, quota = sys.argv[2:7]
        worker(kind, storage, name, float(start_at), int(quota))
    else:
        main()
