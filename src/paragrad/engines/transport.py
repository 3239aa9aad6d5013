"""Moving task arguments and results between processes through shared regions.

A message is pickled with protocol 5: large arrays leave the pickle stream as out-of-band
buffers, which are copied once into a :class:`~paragrad.core.shm.Region` (shared memory
mapped by both sides), while the small stream travels over a pipe. The
receiver rebuilds the arrays as views of the region, without a copy.
"""

from __future__ import annotations

import pickle
from typing import Any

from paragrad.core.shm import Region, aligned

IN_BAND_BYTES = 32 * 1024

Layout = tuple[tuple[int, int], ...]  # (offset, length) of each buffer in a region


def dumps(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``; buffers of at least ``IN_BAND_BYTES`` are returned apart."""
    buffers: list[memoryview] = []

    def keep_apart(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < IN_BAND_BYTES:
            return True
        buffers.append(view)
        return False

    return pickle.dumps(obj, protocol=5, buffer_callback=keep_apart), buffers


def layout_size(buffers: list[memoryview]) -> int:
    """Bytes a region needs to hold ``buffers``, each aligned."""
    return sum(aligned(view.nbytes) for view in buffers)


def write_buffers(buffers: list[memoryview], region: Region) -> Layout:
    """Copy buffers into a region; returns their (offset, length) layout."""
    layout, offset = [], 0
    for view in buffers:
        region.mapping[offset : offset + view.nbytes] = view
        layout.append((offset, view.nbytes))
        offset += aligned(view.nbytes)
    return tuple(layout)


def read_buffers(region: Region, layout: Layout) -> list[memoryview]:
    """Read-only views of the buffers a layout describes, without copying."""
    view = memoryview(region.mapping).toreadonly()
    return [view[offset : offset + length] for offset, length in layout]


def loads(stream: bytes, region: Region | None, layout: Layout, copy: bool = False) -> Any:
    """Rebuild an object from its stream and its buffers in ``region``.

    Without ``copy`` its arrays are read-only views of the region, valid until the region
    is written again; with it they are private copies.
    """
    buffers: list[Any] = read_buffers(region, layout) if region is not None and layout else []
    if copy:
        buffers = [bytearray(view) for view in buffers]
    return pickle.loads(stream, buffers=buffers)
