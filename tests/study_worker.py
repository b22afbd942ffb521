"""A study worker process for tests/test_study.py and benches/study_claims.py.

    python tests/study_worker.py STORAGE STUDY drain START_AT LEASE [STEPS]
    python tests/study_worker.py STORAGE STUDY hang START_AT LEASE

``drain`` claims trials until none is left, reporting STEPS steps each, and mops up:
while other workers' trials are unfinished it keeps asking, so an expired lease is
picked up. ``hang`` claims one trial and sleeps, to be SIGKILLed. Every claim prints
``claimed INDEX ATTEMPT``; START_AT (a time.time()) lines the workers up.
"""

from __future__ import annotations

import sys
import time

from tunebook.study import Study


def main() -> None:
    storage, name, mode, start_at, lease = sys.argv[1:6]
    steps = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    study = Study.load(name, storage)
    time.sleep(max(0.0, float(start_at) - time.time()))
    if mode == "hang":
        trial = study.ask(lease_seconds=float(lease))
        print(f"claimed {trial.index} {trial.attempt}", flush=True)
        time.sleep(3600)
        return
    while True:
        trial = study.ask(lease_seconds=float(lease))
        if trial is None:
            if any(not record.finished for record in study.trials()):
                time.sleep(0.1)
                continue
            return
        print(f"claimed {trial.index} {trial.attempt}", flush=True)
        for step in range(steps):
            trial.report(step=step, valid_loss=trial.params["lr"] * (steps - step), train_loss=float(step))
        trial.complete()


if __name__ == "__main__":
    main()
