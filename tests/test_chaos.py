"""Chaos: workers killed, stopped and runs interrupted at random rounds, resumed until done.

Seeded (``PARAGRAD_CHAOS_SEED``, default 0; the seed is in every failure message) and
bounded in time: faults are injected only within ``BUDGET_S``, after which the runs are
let finish. Every fault is a real one (SIGKILL, SIGSTOP, an exception in the coordinator);
whatever happens, the run ends with the parameters of an undisturbed run, and nothing is
left running, in shared memory or on disk.
"""

from __future__ import annotations

import os
import random
import signal
import time
import warnings

import numpy as np
import pytest
from conftest import is_running, relative_error, shared_memory_of

import paragrad as pg
from paragrad.engines.local import LocalEngine
from paragrad.errors import WorkerLost

SEED = int(os.environ.get("PARAGRAD_CHAOS_SEED", "0"))
BUDGET_S = 12.0  # faults are injected within this; the runs then finish undisturbed
STRATEGIES = {"gd": pg.GradientDescent, "sgd": lambda: pg.SGD(batch_size=32)}


class Crash(Exception):
    """The coordinator stopped abruptly (as by Ctrl-C or a crash) after a round."""


def train(data, strategy: str, engine, workers, checkpoint_dir, resume: bool, callbacks=()):
    return pg.train(
        pg.models.LogisticRegression(l2=0.01),
        data,
        strategy=STRATEGIES[strategy](),
        optimizer=pg.optim.Adam(lr=0.05),
        engine=engine,
        workers=workers,
        epochs=20 if strategy == "gd" else 2,
        tol=0,
        seed=3,
        round_timeout_s=1.0,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=None if checkpoint_dir is None else 1,
        resume=resume,
        callbacks=list(callbacks),
    )


def faults(rng: random.Random, engine: LocalEngine | None, total: int, pids: set[int]):
    """A callback that injects one to three random faults at random rounds (not the last),
    and what they are."""
    kinds = ["crash"] if engine is None else ["kill", "kill", "stop", "crash"]
    planned = {rng.randrange(total - 1): rng.choice(kinds) for _ in range(rng.randint(1, 3))}

    def callback(record):
        kind = planned.get(record["round"])
        if kind is None:
            return
        if engine is not None:
            pids.update(engine.pids)
        if kind == "crash":
            raise Crash(f"after round {record['round']}")
        victim = engine.pids[rng.randrange(len(engine.pids))]
        os.kill(victim, signal.SIGKILL if kind == "kill" else signal.SIGSTOP)

    return callback, ", ".join(f"{kind} at round {at}" for at, kind in sorted(planned.items()))


@pytest.mark.parametrize("engine_name", ["serial", "local"])
@pytest.mark.parametrize("strategy", ["gd", "sgd"])
def test_random_faults_resumed_until_done_end_as_an_undisturbed_run(tmp_path, strategy, engine_name):
    rng = random.Random(f"{SEED}-{strategy}-{engine_name}")
    data = pg.make_classification(240, 4, seed=7)
    reference = train(data, strategy, "serial", 2, None, False)
    total = len(reference.history)
    memory_before = shared_memory_of()
    started, resume, log, pids = time.monotonic(), False, [], set()
    for _ in range(20):
        inject = time.monotonic() - started < BUDGET_S
        max_restarts, workers = rng.choice([0, 1]), rng.choice([2, (1, 2)])
        engine = LocalEngine(2, max_restarts=max_restarts) if engine_name == "local" else "serial"
        callbacks = []
        if inject:
            callback, what = faults(rng, engine if engine_name == "local" else None, total, pids)
            callbacks.append(callback)
            log.append(f"{what} (max_restarts={max_restarts}, workers={workers})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no checkpoint to resume from" and the like
                run = train(data, strategy, engine, workers, tmp_path, resume, callbacks)
            log.append("done")
            break
        except (Crash, WorkerLost) as exc:
            log.append(f"-> {type(exc).__name__}: {exc}")
            resume = True
        finally:
            if isinstance(engine, LocalEngine):
                pids.update(engine.pids)
                engine.close()
    else:
        pytest.fail(f"seed {SEED}: not done after 20 attempts: {log}")
    assert relative_error(run.params, reference.params) <= 1e-12, f"seed {SEED}: {log}"
    assert [record["round"] for record in run.history] == list(range(total)), f"seed {SEED}: {log}"
    time.sleep(0.2)  # the workers of a closed engine are reaped by then
    assert not [pid for pid in pids if is_running(pid)], f"seed {SEED}: {log}"
    assert shared_memory_of() <= memory_before, f"seed {SEED}: {log}"
    assert not [path.name for path in tmp_path.iterdir() if path.suffix == ".tmp"], f"seed {SEED}: {log}"
    assert np.isfinite(run.params).all()
    print(f"seed {SEED}, {strategy} on {engine_name}: {log}")
