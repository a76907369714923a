"""Reading and writing IDX files of unsigned bytes (the MNIST format), gzip-compressed or raw.

An IDX file is a 4-byte magic number ``00 00 08 <ndim>`` (0x08: unsigned byte), then
``ndim`` big-endian uint32 sizes, then ``prod(sizes)`` bytes of C-ordered data.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..atomic import atomic_file

GZIP_MAGIC = b"\x1f\x8b"
UBYTE_CODE = 0x08
# The most payload bytes read_idx accepts from a header: 1 GiB, 20x Fashion-MNIST's largest
# file (47 MB) yet far below what a gzip bomb inflates to. $NUMBACONV_MAX_IDX_BYTES overrides.
MAX_BYTES = 1 << 30
MAX_BYTES_ENV = "NUMBACONV_MAX_IDX_BYTES"
CHUNK = 1 << 20


class DataError(Exception):
    """A data file or directory is missing, truncated or corrupt; the message names it."""


def max_idx_bytes() -> int:
    """:func:`read_idx`'s payload limit: ``$NUMBACONV_MAX_IDX_BYTES``, else :data:`MAX_BYTES`."""
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return MAX_BYTES
    if not value.isdigit():
        raise DataError(f"{MAX_BYTES_ENV}={value!r} is not a whole number of bytes")
    return int(value)


def read_idx(path: str | os.PathLike[str], max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes; gzip is detected by its magic bytes, not the name.

    Returns a writeable C-contiguous ``uint8`` array of the shape the header gives.
    The header is read first: one declaring more than ``max_bytes`` of payload (default
    :func:`max_idx_bytes`) is refused before anything else is read or inflated, and a gzip
    stream is inflated piece by piece, no further than the declared size and one piece more.
    Raises :class:`DataError` naming ``path`` if the file cannot be read, the gzip stream
    is corrupt, the header is not IDX/0x08 or declares too much, or the payload length
    differs from the header.
    """
    path = Path(path)
    limit = max_idx_bytes() if max_bytes is None else max_bytes
    if limit < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    try:
        file = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    with file:
        with _read_errors(path, "cannot read"):
            compressed = file.read(2) == GZIP_MAGIC
            file.seek(0)
        if not compressed:
            return _read_stream(path, file, limit, os.fstat(file.fileno()).st_size)
        with gzip.GzipFile(fileobj=file) as stream:
            return _read_stream(path, stream, limit, None)


@contextlib.contextmanager
def _read_errors(path: Path, what: str):
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: {what} ({exc})") from exc


def _read_stream(path: Path, stream: BinaryIO, limit: int, file_size: int | None) -> np.ndarray:
    """Parse IDX from ``stream``; ``file_size`` is its length when known (raw files), else None."""
    what = "cannot read" if file_size is not None else "corrupt gzip stream"
    with _read_errors(path, what):
        head = stream.read(4)
        if len(head) < 4:
            raise DataError(f"{path}: {len(head)} bytes is too short for an IDX header")
        if head[0] != 0 or head[1] != 0:
            raise DataError(f"{path}: bad IDX magic number 0x{head.hex()} (must start 0x0000)")
        if head[2] != UBYTE_CODE:
            raise DataError(f"{path}: IDX dtype code 0x{head[2]:02x} is not 0x08 (unsigned byte)")
        ndim = head[3]
        if ndim == 0:
            raise DataError(f"{path}: IDX header has ndim 0")
        offset = 4 + 4 * ndim
        sizes = stream.read(4 * ndim)
        if len(sizes) < 4 * ndim:
            raise DataError(
                f"{path}: truncated header: ndim {ndim} needs {offset} bytes, "
                f"file has {4 + len(sizes)}"
            )
        shape = tuple(int.from_bytes(sizes[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
        expected = math.prod(shape)
        dims = "x".join(map(str, shape))
        if expected > limit:
            raise DataError(
                f"{path}: IDX header declares {dims} = {expected} bytes, over the limit of "
                f"{limit} (set {MAX_BYTES_ENV} to allow more)"
            )
        payload = None if file_size is None else file_size - offset
        if payload is not None and payload > expected:
            raise DataError(f"{path}: {payload - expected} trailing bytes after {dims} payload")
        data = np.empty(expected if payload is None else min(payload, expected), dtype=np.uint8)
        filled = _fill(stream, memoryview(data))
        if filled < expected:
            raise DataError(
                f"{path}: truncated payload: header size {dims} needs {expected} bytes, "
                f"file has {filled}"
            )
        # One byte more tells whether the stream goes on, inflating no more than one piece.
        if stream.read(1):
            raise DataError(
                f"{path}: trailing bytes after {dims} payload (the stream holds more than the "
                f"{expected} bytes its header declares)"
            )
    return data.reshape(shape)


def _fill(stream: BinaryIO, out: memoryview) -> int:
    """Read from ``stream`` into ``out`` until it is full or the stream ends; bytes read."""
    filled = 0
    while filled < len(out):
        piece = stream.read(min(CHUNK, len(out) - filled))
        if not piece:
            break
        out[filled : filled + len(piece)] = piece
        filled += len(piece)
    return filled


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
