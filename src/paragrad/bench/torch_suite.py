"""The ``torch`` suite: epoch time of a small torch model on 2 local workers against
DistributedDataParallel on gloo, drawing the same batches."""

from __future__ import annotations

import importlib.util
import math
import time
from multiprocessing.queues import Queue
from typing import Any

import numpy as np

from paragrad.bench.common import Row, targets, two_ranks
from paragrad.core.shards import Shard, plan_shards
from paragrad.data import make_classification
from paragrad.engines.local import LocalEngine
from paragrad.optim import SGD as SGDOptimizer
from paragrad.training.sampling import stream_rows
from paragrad.training.strategies import SGD
from paragrad.training.trainer import train

GLOBAL_BATCH = 2048  # 1024 rows a worker on two


def _ddp_worker(rank: int, port: int, num_rows: int, d: int, epochs: int, queue: Queue[Any]) -> None:
    """One DDP rank: its shard, its part of global batches of 2048 drawn as paragrad's SGD
    draws them."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = make_classification(num_rows, d, seed=5, dtype=np.float32)
    plan = plan_shards(num_rows, 2)
    rows = plan.rows(rank)
    shard = Shard(data.X[rows], targets(data)[rows], rank, 2, virtual=plan.virtual(rank))
    X, y = torch.from_numpy(shard.X), torch.from_numpy(shard.y).long()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(d, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    per_epoch = math.ceil(num_rows / GLOBAL_BATCH)
    times = []
    for epoch in range(epochs):
        dist.barrier()
        start = time.perf_counter()
        for position in range(per_epoch):
            batch = stream_rows(shard, 0, epoch, position * GLOBAL_BATCH, (position + 1) * GLOBAL_BATCH)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X[batch]), y[batch])
            loss.backward()
            optimizer.step()
        dist.barrier()
        times.append(time.perf_counter() - start)
    dist.destroy_process_group()
    if rank == 0:
        queue.put(times)


def bench_torch(quick: bool) -> list[Row]:
    """Epoch time of a small torch model: 2 local workers against DDP on gloo, same batches."""
    if importlib.util.find_spec("torch") is None:
        return [{"benchmark": "torch_epoch", "skipped": "torch is not installed"}]
    import torch

    from paragrad.models.torch_module import Torch

    num_rows, d, epochs = (200_000 if quick else 1_000_000), 100, 2
    ddp_times = two_ranks(_ddp_worker, num_rows, d, epochs, timeout=600)
    data = make_classification(num_rows, d, seed=5, dtype=np.float32)
    torch.manual_seed(0)
    with LocalEngine(2) as engine:
        ours = []
        for _ in range(epochs):
            model = Torch(torch.nn.Linear(d, 2))
            options: dict[str, Any] = dict(
                strategy=SGD(GLOBAL_BATCH), optimizer=SGDOptimizer(lr=0.1), engine=engine
            )
            run = train(model, data, epochs=1, tol=0, dtype="float32", **options)
            ours.append(sum(record["wall_s"] for record in run.history))
    ddp_s, ours_s = min(ddp_times), min(ours)
    return [
        {
            "benchmark": "torch_epoch",
            "model": f"Linear({d}, 2), cross-entropy",
            "rows": num_rows,
            "global_batch": GLOBAL_BATCH,
            "workers": 2,
            "epoch_s": ours_s,
            "ddp_gloo_epoch_s": ddp_s,
            "ratio_to_ddp": ours_s / ddp_s,
            "target_ratio": 0.5,
        }
    ]
