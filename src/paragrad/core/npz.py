"""The bytes of an ``.npz`` file, built in one pass: a zip archive of ``.npy`` entries,
stored uncompressed, as :func:`numpy.savez` writes it and :func:`numpy.load` reads it.

A run that checkpoints every round writes a small file every few milliseconds; building it
with :func:`numpy.savez` costs more than the round's own bookkeeping (a zip writer, a
header dictionary per array, a file object per entry). Here each entry is its ``.npy``
header, written as numpy writes it, and the array's bytes, with a CRC-32 the reader checks.
Archives past the plain zip format's limits (4 GiB, 65535 entries) are left to :func:`numpy.savez`.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from numpy.lib import format as npy_format

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, before the entry's name
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory entry, before the name
_END = struct.Struct("<IHHHHIIH")  # end of the central directory
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the zip format's first day
_ATTRIBUTES = 0o600 << 16  # a plain file readable by its owner, as zipfile writes one
_LIMIT = 0xFFFFFFFF  # sizes and offsets past it need the zip64 extensions
_MAGIC = npy_format.magic(1, 0)


def npy_header(array: np.ndarray) -> bytes:
    """The ``.npy`` format 1.0 header of ``array`` in C order (magic, length, dictionary)."""
    descr = npy_format.dtype_to_descr(array.dtype)
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {array.shape!r}, }}"
    # Padded with spaces and a newline so that the data starts 64-byte aligned.
    padding = -(len(_MAGIC) + 2 + len(text) + 1) % npy_format.ARRAY_ALIGN
    encoded = (text + " " * padding + "\n").encode("latin1")
    return _MAGIC + struct.pack("<H", len(encoded)) + encoded


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive of ``arrays`` (plain dtypes, no objects), entry ``name.npy`` each."""
    if len(arrays) >= 0xFFFF:  # past the plain format's entry count
        return _savez(arrays)
    parts: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise ValueError(f"{name}: arrays of Python objects are not written")
        header, data = npy_header(array), array.tobytes()  # in C order, as the header says
        entry = (name + ".npy").encode()
        crc, size = zlib.crc32(data, zlib.crc32(header)), len(header) + len(data)
        if offset + _LOCAL.size + len(entry) + size >= _LIMIT:
            return _savez(arrays)
        local = _LOCAL.pack(0x04034B50, 20, 0, 0, 0, _DOS_DATE, crc, size, size, len(entry), 0)
        parts += [local, entry, header, data]
        sizes = (crc, size, size, len(entry), 0, 0, 0, 0, _ATTRIBUTES, offset)
        central += [_CENTRAL.pack(0x02014B50, 20, 20, 0, 0, 0, _DOS_DATE, *sizes), entry]
        offset += _LOCAL.size + len(entry) + size
    directory = b"".join(central)
    count = len(arrays)
    return b"".join([*parts, directory, _END.pack(0x06054B50, 0, 0, count, count, len(directory), offset, 0)])


def _savez(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()
