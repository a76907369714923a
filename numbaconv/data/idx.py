"""Reading and writing IDX files of unsigned bytes (the MNIST format), gzip-compressed or raw.

An IDX file is a 4-byte magic number ``00 00 08 <ndim>`` (0x08: unsigned byte), then
``ndim`` big-endian uint32 sizes, then ``prod(sizes)`` bytes of C-ordered data.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_file

GZIP_MAGIC = b"\x1f\x8b"
UBYTE_CODE = 0x08


class DataError(Exception):
    """A data file or directory is missing, truncated or corrupt; the message names it."""


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file of unsigned bytes; gzip is detected by its magic bytes, not the name.

    Returns a writeable C-contiguous ``uint8`` array of the shape the header gives.
    Raises :class:`DataError` naming ``path`` if the file cannot be read, the gzip stream
    is corrupt, the header is not IDX/0x08, or the payload length differs from the header.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    return _parse(path, data)


def _parse(path: Path, data: bytes) -> np.ndarray:
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (must start 0x0000)")
    if data[2] != UBYTE_CODE:
        raise DataError(f"{path}: IDX dtype code 0x{data[2]:02x} is not 0x08 (unsigned byte)")
    ndim = data[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header has ndim 0")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(
            f"{path}: truncated header: ndim {ndim} needs {offset} bytes, file has {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    payload = len(data) - offset
    dims = "x".join(map(str, shape))
    if payload < expected:
        raise DataError(
            f"{path}: truncated payload: header size {dims} needs {expected} bytes, "
            f"file has {payload}"
        )
    if payload > expected:
        raise DataError(f"{path}: {payload - expected} trailing bytes after {dims} payload")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=offset).reshape(shape).copy()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a ``uint8`` array of 1 to 255 dimensions as IDX, atomically.

    The file is gzip-compressed (deterministically: no timestamp, no name) when ``path``
    ends in ``.gz``, raw otherwise.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx needs a uint8 array, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx needs 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, UBYTE_CODE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(array).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    with atomic_file(path) as f:
        f.write(data)
