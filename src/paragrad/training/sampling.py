"""Which rows a worker computes on in a round: the sample streams of the strategies.

SGD draws from one stream over the whole data that depends on the seed and the virtual
shards alone, never on the workers, so any number of workers, and any change of them
between rounds, draws the same rows. In each epoch every virtual shard's rows are
permuted from ``(seed, virtual shard, epoch)``, and the virtual shards are visited in an
order drawn from ``(seed, epoch)``: position ``j * V + rank(v)`` of the epoch's stream
is the ``j``-th row of virtual shard ``v``'s permutation (the shards one row larger
than the rest give their last rows after every full lap, in the same order). Round
``p`` takes positions ``[p B, (p + 1) B)``: a global batch of ``B`` rows, spread evenly
over the data. A worker finds its rows of a round from its own virtual shards alone.

LocalSGD's workers draw batches from their own rows (``(seed, worker, epoch)``).
"""

from __future__ import annotations

import numpy as np

from paragrad.core.seeding import shuffle_seeded
from paragrad.core.shards import EpochOrder, Shard, VirtualShards


def virtual_order(shard: Shard, seed: int, epoch: int) -> EpochOrder:
    """The shard's rows in the order of the epoch's stream, with their stream positions:
    each held virtual shard's rows permuted, its ``j``-th row at position ``j V + rank``
    (its extra row, if any, at its tail position), laid out once per epoch, so that a
    round finds its rows by two binary searches."""
    if shard.order is not None and shard.order.epoch == epoch and shard.order.positions is not None:
        return shard.order
    held = shard.held
    local = _local_starts(held)
    sizes = np.diff(local)
    # Each held virtual shard's rows, permuted from (seed, virtual shard, epoch), in place.
    rows = np.arange(local[-1])
    shuffle_seeded(rows, local, [[seed, v, epoch, 1] for v in range(held.first, held.first + held.count)])
    lap = np.random.default_rng([seed, epoch]).permutation(held.num_virtual)
    ranks = np.empty(held.num_virtual, dtype=np.int64)
    ranks[lap] = np.arange(held.num_virtual)
    base = held.total_rows // held.num_virtual
    every = VirtualShards(0, held.num_virtual, held.num_virtual, held.total_rows)
    larger = np.diff(every.starts()) > base  # the virtual shards with one more row than the rest
    # Their extra rows come after the full laps, in lap order.
    tails = (base * held.num_virtual + np.cumsum(larger[lap])[ranks] - 1)[
        held.first : held.first + held.count
    ]
    mine = ranks[held.first : held.first + held.count]
    extra = sizes > base
    # The stream's laps: the j-th rows of the held virtual shards, in rank order, for each j;
    # then their extra rows, in the order of their tail positions.
    by_rank = np.argsort(mine)
    laps = rows[local[by_rank][None, :] + np.arange(base)[:, None]].ravel()
    lap_positions = (np.arange(base)[:, None] * held.num_virtual + mine[by_rank]).ravel()
    last = np.flatnonzero(extra)[np.argsort(tails[extra])]
    tail_rows = rows[local[last] + base]
    positions = np.concatenate([lap_positions, tails[last]])
    shard.order = EpochOrder(epoch, np.concatenate([laps, tail_rows]), positions)
    return shard.order


def _local_starts(held: VirtualShards) -> np.ndarray:
    """Where each held virtual shard starts among the shard's rows, and where the last ends."""
    starts = held.starts()
    return starts - starts[0]


def stream_rows(shard: Shard, seed: int, epoch: int, start: int, stop: int) -> slice | np.ndarray:
    """The shard's rows at positions ``[start, stop)`` of the epoch's global stream, sorted
    (for memory locality; this changes no sum but its order). All of them: a slice."""
    if start <= 0 and stop >= shard.held.total_rows:
        return slice(None)
    order = virtual_order(shard, seed, epoch)
    assert order.positions is not None
    first, last = np.searchsorted(order.positions, (start, stop))
    return np.sort(order.permutation[first:last])


def epoch_permutation(shard: Shard, seed: int, epoch: int) -> np.ndarray:
    """The order in which the shard's own rows are drawn in ``epoch`` (kept for the epoch)."""
    if shard.order is None or shard.order.epoch != epoch or shard.order.positions is not None:
        rng = np.random.default_rng([seed, shard.worker, epoch])
        shard.order = EpochOrder(epoch, rng.permutation(shard.num_rows))
    return shard.order.permutation


def batch_rows(
    shard: Shard, seed: int, epoch: int, position: int, batch_size: int | None
) -> slice | np.ndarray:
    """Rows of batch ``position`` of ``epoch`` of the shard's own rows, drawn without
    replacement within an epoch (LocalSGD's local steps).

    A batch as large as the shard is the whole shard, as a slice (no copy), and the later
    batches of that epoch are empty. The rows of a batch are sorted, for memory locality.
    """
    if batch_size is None or batch_size >= shard.num_rows:
        return slice(None) if position == 0 else slice(0, 0)
    perm = epoch_permutation(shard, seed, epoch)
    return np.sort(perm[position * batch_size : (position + 1) * batch_size])
