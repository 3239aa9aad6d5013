"""Atomic file output: write to a temporary file beside the target, flush, fsync, rename.

A temporary's name carries the writer's process id (``.NAME.PID.XXXX.tmp``), so the
temporaries of writers killed mid-write can be told from those still being written and
removed at the next start (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from paragrad.errors import OutputError

# Errors of the disk, not of the path: the message says the old file is kept.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
# What a file system that cannot sync a directory answers.
_NO_DIRECTORY_SYNC = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield a file object whose contents replace ``path`` only if the block succeeds.

    A crash or an exception at any moment leaves either the old file or none at the
    destination, never a partial one. A write the disk refuses (full, over quota) raises
    :class:`~paragrad.errors.OutputError` naming the file.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            _fsync(handle.fileno(), target)
        os.replace(tmp_name, target)
    except BaseException as exc:
        _give_up(tmp_name, target, exc)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync: bool = True) -> None:
    """Replace ``path`` by ``data`` as :func:`atomic_write` does, in plain system calls.

    Each call lets other threads run, so a writer in the background holds the interpreter
    lock only for the few steps between them, not while the disk works. With ``sync=False``
    the bytes are not waited for on the device: the file is whole for any process that reads
    it (the writer may be killed at any moment), but a power cut may lose or damage it.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    tmp_name = os.path.join(directory, f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
    try:
        try:
            write_all(fd, data)
            if sync:
                _fsync(fd, target)
        finally:
            os.close(fd)
        os.replace(tmp_name, target)
    except BaseException as exc:
        _give_up(tmp_name, target, exc)
        raise


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, taking up after a short write (a signal, say)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync(fd: int, target: Path) -> None:
    """fsync ``fd``, written for ``target``; a refusal other than a full disk's (those say
    the old file is kept, below) is an OutputError naming ``target``."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in _FULL:
            raise
        raise OutputError(f"{target}: could not be synced to the device ({exc.strerror})") from None


def sync_to_device(path: str | os.PathLike) -> None:
    """Wait for the device to hold the file ``path`` (a directory: its entries, the renames
    into it), as written so far by anyone. A file system that cannot sync a directory
    (some network and FUSE ones refuse; Windows cannot open one) leaves that to itself; any
    other failure is an :class:`~paragrad.errors.OutputError` naming ``path``."""
    directory = os.path.isdir(path)
    if directory and os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if directory and exc.errno in _NO_DIRECTORY_SYNC:
            return
        raise OutputError(f"{path}: could not be synced to the device ({exc.strerror})") from None


def _give_up(tmp_name: str, target: Path, exc: BaseException) -> None:
    """After a failed write: remove the temporary; a disk that refused it is an OutputError."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp_name)
    if isinstance(exc, OSError) and exc.errno in _FULL:
        kept = "the file there before is kept" if target.exists() else "nothing was written"
        raise OutputError(f"{target}: could not be written ({exc.strerror}); {kept}") from None


def _writer_gone(name: str) -> bool:
    """Whether the temporary ``name`` (``.NAME.PID.XXXX.tmp``) was left by a writer that is
    gone; one without a process id comes from a version that wrote none, long gone."""
    parts = name[: -len(".tmp")].split(".")
    if len(parts) < 3 or not parts[-2].isdigit():
        return True
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process
    return False


def remove_stale_temporaries(directory: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporaries of atomic writes of files matching the pattern ``name`` in
    ``directory`` whose writers are gone (killed mid-write); the paths removed."""
    removed: list[Path] = []
    folder = Path(directory)
    if not folder.is_dir():
        return removed
    for temporary in folder.glob(f".{name}.*.tmp"):
        if _writer_gone(temporary.name):
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
                removed.append(temporary)
    return removed
