"""IDX files that claim or hold too much: refused from the header, gzip inflated piecewise.

The gzip bomb here is real (3 GiB of zeros in 3 MiB, a valid stream), written a MiB at a
time without ever holding more than one MiB in memory; the refusals are checked with
tracemalloc, which sees NumPy's and zlib's buffers.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from test_data import make_set

from numbaconv.data import DataError
from numbaconv.data.fashion_mnist import load_dir
from numbaconv.data.idx import MAX_BYTES, MAX_BYTES_ENV, read_idx

MIB = 1 << 20
BOMB_MIB = 3 * 1024  # what the bomb inflates to, in MiB
PEAK_LIMIT = 8 * MIB  # the most memory a refusal may take

GOOD = bytes.fromhex("00000803000000020000000200000002") + bytes(range(8))


def idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def write_gzip_bomb(path, head: bytes, zero_mib: int) -> None:
    """Write a valid gzip stream of ``head`` followed by ``zero_mib`` MiB of zeros."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the gzip frame is ours
    zeros = bytes(MIB)
    crc = zlib.crc32(head)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # deflate, no name, mtime 0
        f.write(deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH))
        # After a full flush deflate starts afresh, so every MiB of zeros compresses to the
        # same self-contained bytes: compress it once, write it zero_mib times.
        block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
        for _ in range(zero_mib):
            f.write(block)
            crc = zlib.crc32(zeros, crc)
        f.write(deflate.flush())
        f.write(struct.pack("<II", crc, (len(head) + zero_mib * MIB) & 0xFFFFFFFF))


def refusal(path, **kwargs) -> tuple[str, int]:
    """read_idx(path) must raise DataError: its one-line message and the peak memory taken."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            read_idx(path, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message, peak


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    monkeypatch.delenv(MAX_BYTES_ENV, raising=False)


def test_bomb_builder_writes_a_valid_gzip_stream(tmp_path):
    head = idx_header(3, 1024, 1024)
    write_gzip_bomb(tmp_path / "small-bomb", head, 3)
    assert gzip.decompress((tmp_path / "small-bomb").read_bytes()) == head + bytes(3 * MIB)
    np.testing.assert_array_equal(read_idx(tmp_path / "small-bomb"), np.zeros((3, 1024, 1024)))


def test_bomb_declaring_its_size_is_refused_after_the_header(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_gzip_bomb(path, idx_header(BOMB_MIB, 1024, 1024), BOMB_MIB)  # a truthful header
    assert path.stat().st_size * 1000 < BOMB_MIB * MIB
    message, peak = refusal(path)
    declared = BOMB_MIB * MIB
    assert f"declares {BOMB_MIB}x1024x1024 = {declared} bytes" in message
    assert f"over the limit of {MAX_BYTES} (set {MAX_BYTES_ENV} to allow more)" in message
    assert peak < PEAK_LIMIT


def test_bomb_behind_a_small_header_is_refused_after_the_declared_payload(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_gzip_bomb(path, idx_header(10, 28, 28), BOMB_MIB)
    message, peak = refusal(path)
    assert "trailing bytes after 10x28x28 payload" in message
    assert "more than the 7840 bytes its header declares" in message
    assert peak < PEAK_LIMIT


def test_gzip_stream_longer_than_its_header(tmp_path):
    path = tmp_path / "extra.gz"
    path.write_bytes(gzip.compress(GOOD + b"\x00\x01\x02"))
    message, _ = refusal(path)
    assert "trailing bytes after 2x2x2 payload" in message


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    "shape", [(60_000, 1024, 1024), (0xFFFFFFFF,) * 255], ids=["60000x1024x1024", "255-dims"]
)
def test_header_declaring_too_much_is_refused_before_reading_on(tmp_path, gz, shape):
    head = idx_header(*shape)
    path = tmp_path / "huge"
    path.write_bytes(gzip.compress(head + bytes(100)) if gz else head + bytes(100))
    message, peak = refusal(path)
    assert f"declares {'x'.join(map(str, shape))} = {np.prod(shape, dtype=object)} bytes" in message
    assert "over the limit" in message
    assert peak < PEAK_LIMIT


def test_limit_from_parameter_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "good"
    path.write_bytes(GOOD)
    assert read_idx(path, max_bytes=8).shape == (2, 2, 2)
    message, _ = refusal(path, max_bytes=7)
    assert "declares 2x2x2 = 8 bytes, over the limit of 7" in message
    monkeypatch.setenv(MAX_BYTES_ENV, "7")
    assert "over the limit of 7" in refusal(path)[0]
    assert read_idx(path, max_bytes=8).shape == (2, 2, 2)  # the parameter wins
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(DataError, match=f"{MAX_BYTES_ENV}='lots' is not a whole number"):
        read_idx(path)
    with pytest.raises(ValueError, match="max_bytes"):
        read_idx(path, max_bytes=-1)


def test_limit_applies_to_a_data_directory(tmp_path, monkeypatch):
    make_set(tmp_path / "d", n_train=20)  # 20x28x28 = 15680 image bytes
    monkeypatch.setenv(MAX_BYTES_ENV, "15679")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: IDX header declares"):
        load_dir(tmp_path / "d")
    monkeypatch.setenv(MAX_BYTES_ENV, "15680")
    assert load_dir(tmp_path / "d").train_images.shape == (20, 28, 28)

