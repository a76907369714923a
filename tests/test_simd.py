"""The SIMD vector intrinsics (numbaconv/kernels/cpu/simd.py) the register-tiled products use."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from numbaconv.kernels.cpu import simd


@njit
def _width(row):
    return simd.width(row)


@njit
def _fma_rows(a, b, c, out, start, count):
    """out[start:start + count] = a * b + c there (one masked vector), the rest untouched."""
    w = simd.width(out)
    for i in range(start, start + count, w):
        n = start + count - i
        x = simd.load_first(a, i, n)
        y = simd.load_first(b, i, n)
        z = simd.load_first(c, i, n)
        simd.store_first(out, i, simd.fma(x, y, z), n)


@njit
def _splat_add(row, value, out):
    """out[:W] = value * row[:W] + row[:W] through whole vectors (a full mask)."""
    w = simd.width(row)
    v = simd.load_first(row, 0, w)
    simd.store_first(out, 0, simd.fma(simd.splat(row, value), v, v), w)


@njit
def _total(row, count):
    return simd.total(simd.load_first(row, 0, count))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 5, 8, 16])
def test_total_sums_the_lanes(dtype, count):
    row = np.arange(1, 17, dtype=dtype) * 0.5  # sums exact in either dtype
    assert _total(row, count) == row[:min(count, _width(row))].sum()


def test_total_of_a_non_vector_is_a_typing_error():
    with pytest.raises(TypingError, match="total needs a vector"):
        njit(lambda x: simd.total(x))(1.0)


@njit
def _transpose(block):
    simd.transpose(block)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_transposes_the_leading_square_in_place(dtype):
    width = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    block = np.arange(width * width + 3, dtype=dtype)
    _transpose(block)
    expected = np.arange(width * width, dtype=dtype).reshape(width, width).T.reshape(-1)
    np.testing.assert_array_equal(block[:width * width], expected)
    np.testing.assert_array_equal(block[width * width:], np.arange(3) + width * width)


@njit
def _move_transposed(src, first, row_stride, dst, out_first, out_stride):
    simd.move_transposed(src, first, row_stride, dst, out_first, out_stride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_move_transposed_writes_the_square_s_columns_and_nothing_else(dtype):
    width = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    row_stride, out_stride = width + 5, width + 3  # rows and columns apart, not W
    src = np.arange(7 + width * row_stride, dtype=dtype)
    dst = np.full(11 + width * out_stride, -1, dtype=dtype)
    _move_transposed(src, 7, row_stride, dst, 11, out_stride)
    square = src[7:7 + width * row_stride].reshape(width, row_stride)[:, :width]
    written = dst[11:11 + width * out_stride].reshape(width, out_stride)
    np.testing.assert_array_equal(written[:, :width], square.T)
    untouched = np.ones(dst.shape, dtype=bool)
    untouched[11:11 + width * out_stride] = np.tile(np.arange(out_stride) >= width, width)
    np.testing.assert_array_equal(dst[untouched], -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_width_is_one_register(dtype):
    width = {True: 64, False: 32}[simd.has_avx512()] // np.dtype(dtype).itemsize
    assert _width(np.zeros(3, dtype)) == width == simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    assert simd.REGISTERS == (32 if simd.has_avx512() else 16)


def test_avx512_is_read_from_the_features_numba_compiles_for(monkeypatch):
    from numba.core import config

    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,+avx512f")
    assert simd.has_avx512()
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
    assert not simd.has_avx512()
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    monkeypatch.setattr(config, "CPU_NAME", "generic")
    assert not simd.has_avx512()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("start, count", [(0, 40), (3, 17), (5, 1), (7, 0), (0, 16)])
def test_masked_fma_touches_exactly_its_lanes(dtype, start, count):
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(64).astype(dtype) for _ in range(3))
    out = np.full(64, -7.0, dtype)
    _fma_rows(a, b, c, out, start, count)
    expected = np.full(64, -7.0, dtype)
    part = slice(start, start + count)
    expected[part] = (a[part].astype(np.float64) * b[part] + c[part]).astype(dtype)
    np.testing.assert_allclose(out, expected, rtol=1e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-14)  # one rounding (fma) against two
    assert (out[start + count:] == -7).all() and (out[:start] == -7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_vector_load_store_and_splat(dtype):
    row = np.arange(1, 21, dtype=dtype)
    out = np.zeros(20, dtype)
    _splat_add(row, 2, out)
    w = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    np.testing.assert_array_equal(out[:w], 3 * row[:w])
    assert (out[w:] == 0).all()


def test_non_contiguous_or_integer_rows_are_typing_errors():
    with pytest.raises(TypingError, match="C-contiguous float"):
        _width(np.zeros(8, np.float32)[::2])
    with pytest.raises(TypingError, match="C-contiguous float"):
        _width(np.zeros(8, np.int64))


@njit
def _pair_ops(row, out_pairs, out_sums, start, count):
    """evens/odds of row[start:start + 2 * count], their lane sums and products into
    out_sums[:count], the pairs swapped into out_pairs[start:start + 2 * count]."""
    evens, odds = simd.evens_odds(row, start, count)
    simd.store_first(out_sums, 0, simd.add(evens, odds), count)
    simd.store_first(out_sums, count, simd.mul(evens, odds), count)
    simd.store_pairs(out_pairs, start, odds, evens, count)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("start, count", [(0, 1), (3, 5), (1, 8), (0, 16), (2, 0), (5, -1)])
def test_pairs_read_and_write_exactly_their_lanes(dtype, start, count):
    rng = np.random.default_rng(count + 7)
    count = min(count, _width(np.zeros(1, dtype)))  # at most one vector of pairs
    row = rng.standard_normal(40).astype(dtype)
    out_pairs = np.full(40, -7.0, dtype)
    out_sums = np.full(40, -7.0, dtype)
    _pair_ops(row, out_pairs, out_sums, start, count)
    n = max(count, 0)
    evens, odds = row[start:start + 2 * n:2], row[start + 1:start + 2 * n:2]
    expected_pairs = np.full(40, -7.0, dtype)
    expected_pairs[start:start + 2 * n:2], expected_pairs[start + 1:start + 2 * n:2] = odds, evens
    np.testing.assert_array_equal(out_pairs, expected_pairs)
    np.testing.assert_array_equal(out_sums[:n], evens + odds)
    np.testing.assert_array_equal(out_sums[n:2 * n], evens * odds)
    assert (out_sums[2 * n:] == -7.0).all()


@njit
def _copy(src, src_index, dst, dst_index, count):
    simd.copy_run(src, src_index, dst, dst_index, count)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [0, 1, 7, 16, 28, 33])
def test_copy_run_copies_exactly_its_run(dtype, count):
    src = np.arange(50, dtype=dtype)
    dst = np.full(60, -1.0, dtype)
    _copy(src, 3, dst, 5, count)
    expected = np.full(60, -1.0, dtype)
    expected[5:5 + count] = src[3:3 + count]
    np.testing.assert_array_equal(dst, expected)


def test_lane_ops_of_mismatched_vectors_are_typing_errors():
    @njit
    def mixed(a, b):
        return simd.add(simd.load_first(a, 0, 1), simd.load_first(b, 0, 1))

    with pytest.raises(TypingError, match="add needs two vectors of one type"):
        mixed(np.zeros(4, np.float32), np.zeros(4, np.float64))


@njit
def _prefetch_then_store(row, line_values):
    """Claims every line of row for writing, then writes 2 * index into each value."""
    for i in range(0, row.size, line_values):
        simd.prefetch_write(row, i)
    for i in range(row.size):
        row[i] = 2 * i


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prefetch_write_changes_no_value(dtype):
    row = np.arange(100, dtype=dtype)
    before = row.copy()
    njit(lambda r: simd.prefetch_write(r, 37))(row)  # a line in the middle, alone
    np.testing.assert_array_equal(row, before)
    _prefetch_then_store(row, 64 // row.itemsize)  # a cache line at a time
    np.testing.assert_array_equal(row, 2 * np.arange(100, dtype=dtype))
    asm = _prefetch_then_store.inspect_asm(_prefetch_then_store.signatures[-1])
    assert "prefetch" in asm  # the hint reached the machine code


def test_prefetch_write_of_a_non_float_row_is_a_typing_error():
    with pytest.raises(TypingError, match="C-contiguous float"):
        njit(lambda r: simd.prefetch_write(r, 0))(np.zeros(4, np.int64))
