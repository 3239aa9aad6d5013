"""Shared regions: memory-mapped files that several processes map at once.

The coordinator creates regions (and alone unlinks them); workers open them by path.
Data loaded from tables is read straight into one, so the local engine's workers map it
where it lies.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from pathlib import Path

import numpy as np

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
    """A memory-mapped file that several processes share."""

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


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to the alignment of buffers in a region."""
    return -(-nbytes // ALIGN) * ALIGN


def shared_empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.memmap:
    """An uninitialised array in a shared region, removed when the array is freed.

    The local engine's workers map such an array where it lies, so loaded data is never
    copied for them.
    """
    region = Region.create(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    region.close()
    try:
        array = np.memmap(region.path, dtype=dtype, mode="r+", shape=shape)
    except BaseException:
        region.unlink()
        raise
    weakref.finalize(array, region.unlink)
    return array
