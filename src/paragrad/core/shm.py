"""Shared regions: memory that several processes map at once.

The coordinator creates regions (and alone releases them); workers open them by path.
Data loaded from tables is read straight into one, so the local engine's workers map it
where it lies.

On Linux a region is anonymous memory (``memfd_create``) that has no name in any
filesystem: workers open it through the creator's ``/proc/<pid>/fd/<n>``, and the kernel
frees it once the last process holding it is gone. So nothing is left behind whatever
kills the program, even a ``kill -9`` of its whole process group. Elsewhere a region is
a file in ``/dev/shm`` (or the temporary directory), registered with multiprocessing's
resource tracker, and each start removes the files of processes that are gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
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
    """Memory that several processes share, by path."""

    def __init__(
        self, path: str, size: int, mapping: mmap.mmap, fd: int | None = None, inode: int = 0
    ) -> None:
        self.path, self.size, self.mapping = path, size, mapping
        self._fd = fd  # a memfd region lives while its creator holds this (or anyone maps it)
        self.inode = inode  # tells two regions apart that had the same path one after the other

    @classmethod
    def create(cls, size: int) -> Region:
        """A new zero-filled region, named ``paragrad-<pid>`` after its creator: anonymous
        memory where the system has it, else a file (see the module's notes)."""
        size = max(int(size), 1)
        if anonymous_memory_shared():
            fd = os.memfd_create(region_prefix().rstrip("-"), os.MFD_CLOEXEC)
            try:
                return cls(f"/proc/{os.getpid()}/fd/{fd}", size, _sized(fd, size), fd, os.fstat(fd).st_ino)
            except BaseException:
                os.close(fd)
                raise
        remove_orphans()
        fd, path = tempfile.mkstemp(prefix=f"{region_prefix()}", dir=scratch_dir(size))
        try:
            region = cls(path, size, _sized(fd, size), inode=os.fstat(fd).st_ino)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        _track(path, register=True)
        return region

    @classmethod
    def open(cls, path: str, size: int) -> Region:
        fd = os.open(path, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, size)
            inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        return cls(path, size, mapping, inode=inode)

    @classmethod
    def reopen(cls, known: Region | None, path: str, size: int) -> Region:
        """The region at ``path``: ``known`` while it is still that region, else opened
        anew (``known`` closed)."""
        if known is not None and known.size == size and known.is_still_at(path):
            return known
        if known is not None:
            known.close()
        return cls.open(path, size)

    def is_still_at(self, path: str) -> bool:
        """Whether ``path`` still names this region: a creator's descriptor number, once
        released, may name another region later."""
        try:
            return os.stat(path).st_ino == self.inode
        except OSError:
            return False

    def close(self) -> None:
        """Unmap; arrays still viewing the region keep it mapped until they are gone."""
        try:
            self.mapping.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        """Let the region go: processes still mapping it keep it until they unmap."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
            return
        if self.path.startswith("/proc/"):
            return  # another process's region, opened here
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        _track(self.path, register=False)


def _sized(fd: int, size: int) -> mmap.mmap:
    """A mapping of ``size`` bytes of the file behind ``fd``, grown to that size."""
    os.ftruncate(fd, size)
    return mmap.mmap(fd, size)


def region_prefix(pid: int | None = None) -> str:
    """The file-name prefix of the regions a process creates."""
    return f"paragrad-{os.getpid() if pid is None else pid}-"


def is_region(path: str) -> bool:
    """Whether a path is one of this process's regions: private to this machine."""
    return path.startswith(f"/proc/{os.getpid()}/fd/") or Path(path).name.startswith(region_prefix())


def anonymous_memory_shared() -> bool:
    """Whether regions can be anonymous memory that workers open through ``/proc``: the
    system has ``memfd_create``, ``/proc`` is there, and other processes of the user may
    open this one's descriptors (not after ``setuid`` or with file capabilities, which
    make a process non-dumpable)."""
    if not hasattr(os, "memfd_create") or not os.path.isdir(f"/proc/{os.getpid()}/fd"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1)
    except (OSError, AttributeError):
        return False


PR_GET_DUMPABLE = 3
# The names mkstemp gives region files: the prefix, then 8 of [a-z0-9_].
REGION_FILE = re.compile(r"paragrad-(\d+)-[a-z0-9_]{8}")


def remove_orphans() -> None:
    """Remove this user's region files whose creating process is gone (a file region
    outlives a program killed with its resource tracker, as a ``kill -9`` of its process
    group does). Only names of the exact form regions are given are touched."""
    for directory in {str(SHM_DIR), tempfile.gettempdir()}:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            match = REGION_FILE.fullmatch(name)
            if match is None or _alive(int(match.group(1))):
                continue
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.stat(path).st_uid == os.getuid():
                    os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
