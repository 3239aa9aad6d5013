"""Moving task arguments and results between processes through shared, memory-mapped files.

A message is pickled with protocol 5: large arrays leave the pickle stream as out-of-band
buffers, which are copied once into a :class:`Region` (a file in ``/dev/shm`` mapped by
both sides), while the small stream travels over a pipe. The receiver rebuilds the
arrays as views of the region, without a copy.
"""

from __future__ import annotations

import mmap
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

IN_BAND_BYTES = 32 * 1024
ALIGN = 64
SHM_DIR = Path("/dev/shm")


def scratch_dir(size: int = 0) -> str:
    """Where shared files live: RAM-backed ``/dev/shm`` when it exists and has room.

    A full ``/dev/shm`` (containers often give it 64 MB) would crash the process that
    writes past its end, so larger files go to the temporary directory instead.
    """
    if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK):
        stats = os.statvfs(SHM_DIR)
        if stats.f_bavail * stats.f_frsize >= 1.1 * size:
            return str(SHM_DIR)
    return tempfile.gettempdir()


class Region:
    """A memory-mapped file that several processes share.

    The coordinator creates regions (and alone unlinks them); workers open them by path.
    """

    def __init__(self, path: str, size: int, mapping: mmap.mmap) -> None:
        self.path, self.size, self.mapping = path, size, mapping

    @classmethod
    def create(cls, size: int) -> Region:
        """A new zero-filled region, named ``paragrad-<pid>-*`` after its creator.

        Regions in ``/dev/shm`` are registered with multiprocessing's resource tracker,
        which removes them should the creating process be killed before it can.
        """
        size = max(int(size), 1)
        fd, path = tempfile.mkstemp(prefix=f"{region_prefix()}", dir=scratch_dir(size))
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        _track(path, register=True)
        return cls(path, size, mapping)

    @classmethod
    def open(cls, path: str, size: int) -> Region:
        fd = os.open(path, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(path, size, mapping)

    def close(self) -> None:
        """Unmap; arrays still viewing the region keep it mapped until they are gone."""
        try:
            self.mapping.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        _track(self.path, register=False)


def region_prefix(pid: int | None = None) -> str:
    """The file-name prefix of the regions a process creates."""
    return f"paragrad-{os.getpid() if pid is None else pid}-"


def is_region(path: str) -> bool:
    """Whether a file is one of this process's regions: private to this machine."""
    return Path(path).name.startswith(region_prefix())


def _track(path: str, register: bool) -> None:
    """(Un)register a ``/dev/shm`` file as a POSIX shared-memory name with the tracker."""
    if Path(path).parent != SHM_DIR:
        return
    from multiprocessing import resource_tracker

    name = "/" + Path(path).name
    if register:
        resource_tracker.register(name, "shared_memory")
    else:
        resource_tracker.unregister(name, "shared_memory")


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
    return sum(_aligned(view.nbytes) for view in buffers)


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to the alignment of buffers in a region."""
    return _aligned(nbytes)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def write_buffers(buffers: list[memoryview], region: Region) -> list[tuple[int, int]]:
    """Copy buffers into a region; returns their (offset, length) layout."""
    layout, offset = [], 0
    for view in buffers:
        region.mapping[offset : offset + view.nbytes] = view
        layout.append((offset, view.nbytes))
        offset += _aligned(view.nbytes)
    return layout


def read_buffers(region: Region, layout: list[tuple[int, int]]) -> list[memoryview]:
    """Read-only views of the buffers a layout describes, without copying."""
    view = memoryview(region.mapping).toreadonly()
    return [view[offset : offset + length] for offset, length in layout]


def loads(stream: bytes, region: Region | None, layout: list[tuple[int, int]], copy: bool = False) -> Any:
    """Rebuild an object from its stream and its buffers in ``region``.

    Without ``copy`` its arrays are read-only views of the region, valid until the region
    is written again; with it they are private copies.
    """
    buffers = read_buffers(region, layout) if layout else []
    if copy:
        buffers = [bytearray(view) for view in buffers]
    return pickle.loads(stream, buffers=buffers)
