"""Where a worker finds its rows, and how it maps them without a copy.

The coordinator places a data set once: features memory-mapped from a file stay where
they are, anything else is copied once into a shared region (shard after shard, CSR
arrays side by side). A :class:`ShardSpec` then tells a worker the files and offsets of
its rows, and :func:`map_shard` maps them read-only. The local engine's workers and the
Ray engine's actors (for ``.npy`` files) map their rows the same way.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from paragrad.core.shards import ShardPlan, default_workers
from paragrad.core.shm import Region, aligned
from paragrad.data import Dataset


@dataclass(frozen=True)
class SparseLayout:
    """Where the CSR arrays lie in the data file (``x_offset`` is that of ``data``)."""

    index_dtype: str
    indices_offset: int
    indptr_offset: int


@dataclass(frozen=True)
class ShardSpec:
    """Where a worker finds its rows: the files and offsets of X and y, and a row range."""

    dtype: str
    num_features: int
    total_rows: int
    x_path: str
    x_offset: int
    y_path: str | None
    y_offset: int
    start: int
    stop: int
    sparse: SparseLayout | None = None


def map_rows(path: str, offset: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
    """A read-only array over ``nbytes`` of a file, its pages mapped in up front.

    Faulting shared pages in one by one during training costs more than the arithmetic
    (and two workers faulting the same file contend for it), so the mapping is populated
    when the shard is placed.
    """
    if nbytes == 0:
        return np.empty(0, dtype=dtype)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with open(path, "rb") as handle:
        mapping = mmap.mmap(
            handle.fileno(), nbytes + offset - start, flags=flags, prot=mmap.PROT_READ, offset=start
        )
    return np.frombuffer(mapping, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset - start)


def map_shard(spec: ShardSpec) -> tuple[Any, np.ndarray | None]:
    """The shard's features (an array, or CSR over the shared arrays) and labels."""
    dtype, rows = np.dtype(spec.dtype), spec.stop - spec.start
    y = None
    if spec.y_path is not None:
        y = map_rows(spec.y_path, spec.y_offset + spec.start * dtype.itemsize, rows * dtype.itemsize, dtype)
    if spec.sparse is not None:
        return _map_csr_rows(spec), y
    row_bytes = spec.num_features * dtype.itemsize
    X = map_rows(spec.x_path, spec.x_offset + spec.start * row_bytes, rows * row_bytes, dtype)
    return X.reshape(rows, spec.num_features), y


def _map_csr_rows(spec: ShardSpec) -> Any:
    """The shard's rows as a CSR matrix over the shared arrays (only the row pointers are copied)."""
    import scipy.sparse as sp

    layout, rows = spec.sparse, spec.stop - spec.start
    assert layout is not None
    indptr = map_rows(spec.x_path, layout.indptr_offset + spec.start * 8, (rows + 1) * 8, np.dtype(np.int64))
    first, last = int(indptr[0]), int(indptr[-1])
    value_type, index_type = np.dtype(spec.dtype), np.dtype(layout.index_dtype)
    data = map_rows(
        spec.x_path,
        spec.x_offset + first * value_type.itemsize,
        (last - first) * value_type.itemsize,
        value_type,
    )
    indices = map_rows(
        spec.x_path,
        layout.indices_offset + first * index_type.itemsize,
        (last - first) * index_type.itemsize,
        index_type,
    )
    return sp.csr_matrix((data, indices, indptr - first), shape=(rows, spec.num_features), copy=False)


NewRegion = Callable[[int], Region]


def place(dataset: Dataset, plan: ShardPlan, new_region: NewRegion) -> list[ShardSpec]:
    """Put a data set where every worker can map it; one spec per shard.

    Features memory-mapped from a file (a ``.npy`` loaded by :func:`paragrad.load`) are
    mapped by the workers from that file, with no copy. Otherwise the features and
    labels are copied once into one shared region from ``new_region``, in shard order.
    """
    if dataset.sparse:
        return _place_sparse(dataset, plan, new_region)
    X, y = dataset.X, dataset.y
    backing = dataset.storage if plan.order is None else None
    backing = backing if backing is not None and backing.is_current() else None
    size = (0 if backing else X.nbytes) + (0 if y is None else y.nbytes)
    data = new_region(size)
    if backing:
        x_path, x_offset = backing.path, backing.offset
    else:
        x_path, x_offset = data.path, 0
        _copy_rows(X, plan.order, np.ndarray(X.shape, X.dtype, buffer=data.mapping))
    y_path, y_offset = None, size - (0 if y is None else y.nbytes)
    if y is not None:
        y_path = data.path
        _copy_rows(y, plan.order, np.ndarray(y.shape, y.dtype, buffer=data.mapping, offset=y_offset))
    return [
        ShardSpec(X.dtype.str, X.shape[1], X.shape[0], x_path, x_offset, y_path, y_offset, start, stop)
        for start, stop in plan.bounds
    ]


def _place_sparse(dataset: Dataset, plan: ShardPlan, new_region: NewRegion) -> list[ShardSpec]:
    """Copy the three CSR arrays (and y) once into a shared region; workers map their rows."""
    X, y = dataset.X, dataset.y
    if plan.order is not None:
        X, y = X[plan.order], None if y is None else y[plan.order]
    parts = [X.data, X.indices, X.indptr.astype(np.int64)] + ([] if y is None else [y])
    offsets = np.cumsum([0] + [aligned(part.nbytes) for part in parts]).tolist()
    data = new_region(offsets[-1])
    for part, offset in zip(parts, offsets, strict=False):
        np.ndarray(part.shape, part.dtype, buffer=data.mapping, offset=offset)[...] = part
    layout = SparseLayout(X.indices.dtype.str, offsets[1], offsets[2])
    y_path, y_offset = (None, 0) if y is None else (data.path, offsets[3])
    return [
        ShardSpec(X.dtype.str, X.shape[1], X.shape[0], data.path, 0, y_path, y_offset, start, stop, layout)
        for start, stop in plan.bounds
    ]


def _copy_rows(source: np.ndarray, order: np.ndarray | None, target: np.ndarray) -> None:
    """Copy rows into shared memory, in ``order`` when given, without a temporary copy.

    Writing fresh pages costs the kernel a fault and a zeroing per page, well below the
    memory's copy speed; threads (numpy lets go of Python's lock while copying) fault
    and copy their parts on every core at once.
    """
    parts = min(default_workers(), max(1, source.nbytes // PARALLEL_COPY_BYTES))
    edges = np.linspace(0, len(target), parts + 1).astype(np.intp).tolist()

    def copy_part(part: int) -> None:
        rows = slice(edges[part], edges[part + 1])
        if order is None:
            target[rows] = source[rows]
        else:
            np.take(source, order[rows], axis=0, out=target[rows])

    if parts == 1:
        copy_part(0)
        return
    from concurrent.futures import ThreadPoolExecutor  # not on import: with logging, 10 ms

    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(copy_part, range(parts)))


# Arrays from this size on are copied by several threads.
PARALLEL_COPY_BYTES = 32 << 20
