"""The ``latency`` suite: one round of the local engine against pipes and gloo all_reduce."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from typing import Any

import numpy as np

from paragrad.bench.common import Row, engine_round, start_on_tiny_data, timings, two_ranks
from paragrad.engines.local import LocalEngine


def _pipe_echo(conn: Connection) -> None:
    while True:
        data = conn.recv_bytes()
        if not data:
            return
        conn.send_bytes(data)


def pipe_round(d: int, repeats: int) -> dict[str, float]:
    """Baseline: send the vector to 2 echo processes through pipes, receive and sum."""
    context = mp.get_context("spawn")
    pairs = [context.Pipe() for _ in range(2)]
    processes = [context.Process(target=_pipe_echo, args=(child,), daemon=True) for _, child in pairs]
    for process in processes:
        process.start()
    params = np.ones(d)

    total = np.empty(d)

    def step() -> None:
        for parent, _ in pairs:
            parent.send_bytes(params.data)
        np.copyto(total, np.frombuffer(pairs[0][0].recv_bytes(), dtype=np.float64))
        for parent, _ in pairs[1:]:
            np.add(total, np.frombuffer(parent.recv_bytes(), dtype=np.float64), out=total)

    try:
        return timings(step, repeats)
    finally:
        for parent, _ in pairs:
            parent.send_bytes(b"")
        for process in processes:
            process.join(5)


def _gloo_worker(rank: int, port: int, d: int, repeats: int, queue: Queue[Any]) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tensor = torch.ones(d, dtype=torch.float64)
    result = timings(lambda: dist.all_reduce(tensor), repeats)
    dist.destroy_process_group()
    if rank == 0:
        queue.put(result)


def gloo_round(d: int, repeats: int) -> dict[str, float] | None:
    """Baseline: torch.distributed all_reduce on gloo over 127.0.0.1, if torch is installed."""
    if importlib.util.find_spec("torch") is None:  # looked up, not imported: torch is large
        return None
    return two_ranks(_gloo_worker, d, repeats, timeout=300)


def bench_latency(quick: bool) -> list[Row]:
    """Round latency at d = 100 and 1e6 on 2 local workers, beside pipes and gloo."""
    rows = []
    with LocalEngine(2) as engine:
        start_on_tiny_data(engine)
        for d in (100, 1_000_000):
            repeats = (200 if d == 100 else 30) if quick else (2000 if d == 100 else 200)
            ours = engine_round(engine, d, repeats)
            pipe = pipe_round(d, repeats)
            gloo = gloo_round(d, repeats)
            rows.append(
                {
                    "benchmark": "round_latency",
                    "d": d,
                    "workers": 2,
                    "local_median_s": ours["median_s"],
                    "local_p90_s": ours["p90_s"],
                    "pipe_median_s": pipe["median_s"],
                    "gloo_median_s": None if gloo is None else gloo["median_s"],
                    "ratio_pipe_over_local": pipe["median_s"] / ours["median_s"],
                    "ratio_gloo_over_local": None if gloo is None else gloo["median_s"] / ours["median_s"],
                    "target_s": 100e-6 if d == 100 else 2e-3,
                }
            )
    return rows
