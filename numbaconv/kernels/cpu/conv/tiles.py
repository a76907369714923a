"""The register-tiled products every convolution kernel is built of.

Forward type, ``c[m, p] += sum_k a[m, k] * src[chan[k], base + offset[k] + p]``
(:func:`_shifted_matmul_acc`): seen as flat vectors, the input window under every output
pixel is the same plane shifted by a fixed offset per kernel tap, so the "im2col" matrix's
row ``k`` is ``plane[offset[k]:]``, a contiguous slice; tiles of 4 output rows x 4 SIMD
vectors (:mod:`numbaconv.kernels.cpu.simd`) of pixels keep their 16 sums in registers across
all taps. The padded-width and interleaved-samples kernels (forward, input gradient) use it.

Plain type, ``c[m, p] += sum_k a[m, k] * b[k, p]`` (:func:`_gemm_acc`): six-row tiles over
a panel of b per block of taps, for the unrolled, column and pointwise kernels and the dense
layers' product (:mod:`numbaconv.kernels.cpu.dense`).

Weight-gradient type, ``c[m, k] = sum_p a[m, p] * tap_k[p]`` (:func:`_abt_acc`,
:func:`_abt_lanes_acc`): tiles of 4 output channels x 4 taps summed over pixels.

No BLAS: the products run inside ``prange`` loops, where a BLAS call would start its own
threads on top of Numba's.
"""

import numpy as np
from numba import njit

from .. import simd
from .common import FAST

# The products below are compiled once per dtype, as functions of their own, and called by
# every kernel that needs them (not inlined into each, which cost seconds of compile time per
# kernel). Numba compiles a function again for each literal value a caller passes, so callers
# pass positions as int64 values, ZERO rather than 0.
ZERO = np.int64(0)
# The inner loops over taps index with unsigned integers: Numba then skips its wraparound of
# negative indexes, five scalar instructions per index per tap that crowded the 16
# multiply-adds out of the core's front end (the products ran 8-10% faster without them).
UINT = np.uint64
# Tiles of 16 and 24 sums fill the 32 vector registers of AVX-512; a CPU with 16 (AVX2) would
# spill them to memory at every tap, so there the products take their two-row tiles (8 sums)
# and the output-channel kernels their six-position ones (12).
WIDE = simd.REGISTERS >= 32


@njit(inline="always")
def _tile4(a, src, chan, offset, q, c, i, p, n0, n1, n2, n3, k0, k1):
    """c[i:i + 4, p:p + 4W] += a[i:i + 4, k0:k1] times the rows of taps k0:k1 at ``q`` (W =
    simd.width); only the first n0, n1, n2, n3 values of the four vectors are read and written.

    The 16 sums stay in vector registers across all K taps: per tap, four vector loads and
    four broadcast weights feed 16 multiply-adds, and ``c`` is read and written once."""
    w = simd.width(c[0])
    c0, c1, c2, c3 = c[i], c[i + 1], c[i + 2], c[i + 3]
    a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
    s00 = simd.load_first(c0, p, n0)
    s01 = simd.load_first(c0, p + w, n1)
    s02 = simd.load_first(c0, p + 2 * w, n2)
    s03 = simd.load_first(c0, p + 3 * w, n3)
    s10 = simd.load_first(c1, p, n0)
    s11 = simd.load_first(c1, p + w, n1)
    s12 = simd.load_first(c1, p + 2 * w, n2)
    s13 = simd.load_first(c1, p + 3 * w, n3)
    s20 = simd.load_first(c2, p, n0)
    s21 = simd.load_first(c2, p + w, n1)
    s22 = simd.load_first(c2, p + 2 * w, n2)
    s23 = simd.load_first(c2, p + 3 * w, n3)
    s30 = simd.load_first(c3, p, n0)
    s31 = simd.load_first(c3, p + w, n1)
    s32 = simd.load_first(c3, p + 2 * w, n2)
    s33 = simd.load_first(c3, p + 3 * w, n3)
    for k in range(UINT(k0), UINT(k1)):
        row = src[UINT(chan[k])]
        start = q + offset[k]
        x0 = simd.load_first(row, start, n0)
        x1 = simd.load_first(row, start + w, n1)
        x2 = simd.load_first(row, start + 2 * w, n2)
        x3 = simd.load_first(row, start + 3 * w, n3)
        v = simd.splat(c0, a0[k])
        s00 = simd.fma(v, x0, s00)
        s01 = simd.fma(v, x1, s01)
        s02 = simd.fma(v, x2, s02)
        s03 = simd.fma(v, x3, s03)
        v = simd.splat(c0, a1[k])
        s10 = simd.fma(v, x0, s10)
        s11 = simd.fma(v, x1, s11)
        s12 = simd.fma(v, x2, s12)
        s13 = simd.fma(v, x3, s13)
        v = simd.splat(c0, a2[k])
        s20 = simd.fma(v, x0, s20)
        s21 = simd.fma(v, x1, s21)
        s22 = simd.fma(v, x2, s22)
        s23 = simd.fma(v, x3, s23)
        v = simd.splat(c0, a3[k])
        s30 = simd.fma(v, x0, s30)
        s31 = simd.fma(v, x1, s31)
        s32 = simd.fma(v, x2, s32)
        s33 = simd.fma(v, x3, s33)
    simd.store_first(c0, p, s00, n0)
    simd.store_first(c0, p + w, s01, n1)
    simd.store_first(c0, p + 2 * w, s02, n2)
    simd.store_first(c0, p + 3 * w, s03, n3)
    simd.store_first(c1, p, s10, n0)
    simd.store_first(c1, p + w, s11, n1)
    simd.store_first(c1, p + 2 * w, s12, n2)
    simd.store_first(c1, p + 3 * w, s13, n3)
    simd.store_first(c2, p, s20, n0)
    simd.store_first(c2, p + w, s21, n1)
    simd.store_first(c2, p + 2 * w, s22, n2)
    simd.store_first(c2, p + 3 * w, s23, n3)
    simd.store_first(c3, p, s30, n0)
    simd.store_first(c3, p + w, s31, n1)
    simd.store_first(c3, p + 2 * w, s32, n2)
    simd.store_first(c3, p + 3 * w, s33, n3)


@njit(inline="always")
def _gemm_tile6(a, b, c, i, p, k0, k1):
    """c[i:i + 6, p:p + 4W] += a[i:i + 6, k0:k1] @ b[k0:k1, p:p + 4W], whole vectors:
    :func:`_tile6` for a plain product, with no taps' channels and offsets to look up per
    tap (:func:`_tile6` with arange taps and zero offsets ran 0.86-0.95x as fast). 24 sums in
    registers (of 32); per tap four vector loads and six broadcasts feed 24 multiply-adds (16
    per eight in four-row tiles: 64 x 256 by 256 x 64 in L1, 1.04-1.08x faster)."""
    w = simd.width(c[0])
    c0, c1, c2, c3, c4, c5 = c[i], c[i + 1], c[i + 2], c[i + 3], c[i + 4], c[i + 5]
    a0, a1, a2, a3, a4, a5 = a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5]
    s00 = simd.load_first(c0, p, w)
    s01 = simd.load_first(c0, p + w, w)
    s02 = simd.load_first(c0, p + 2 * w, w)
    s03 = simd.load_first(c0, p + 3 * w, w)
    s10 = simd.load_first(c1, p, w)
    s11 = simd.load_first(c1, p + w, w)
    s12 = simd.load_first(c1, p + 2 * w, w)
    s13 = simd.load_first(c1, p + 3 * w, w)
    s20 = simd.load_first(c2, p, w)
    s21 = simd.load_first(c2, p + w, w)
    s22 = simd.load_first(c2, p + 2 * w, w)
    s23 = simd.load_first(c2, p + 3 * w, w)
    s30 = simd.load_first(c3, p, w)
    s31 = simd.load_first(c3, p + w, w)
    s32 = simd.load_first(c3, p + 2 * w, w)
    s33 = simd.load_first(c3, p + 3 * w, w)
    s40 = simd.load_first(c4, p, w)
    s41 = simd.load_first(c4, p + w, w)
    s42 = simd.load_first(c4, p + 2 * w, w)
    s43 = simd.load_first(c4, p + 3 * w, w)
    s50 = simd.load_first(c5, p, w)
    s51 = simd.load_first(c5, p + w, w)
    s52 = simd.load_first(c5, p + 2 * w, w)
    s53 = simd.load_first(c5, p + 3 * w, w)
    for k in range(UINT(k0), UINT(k1)):
        row = b[k]
        x0 = simd.load_first(row, p, w)
        x1 = simd.load_first(row, p + w, w)
        x2 = simd.load_first(row, p + 2 * w, w)
        x3 = simd.load_first(row, p + 3 * w, w)
        v = simd.splat(c0, a0[k])
        s00 = simd.fma(v, x0, s00)
        s01 = simd.fma(v, x1, s01)
        s02 = simd.fma(v, x2, s02)
        s03 = simd.fma(v, x3, s03)
        v = simd.splat(c0, a1[k])
        s10 = simd.fma(v, x0, s10)
        s11 = simd.fma(v, x1, s11)
        s12 = simd.fma(v, x2, s12)
        s13 = simd.fma(v, x3, s13)
        v = simd.splat(c0, a2[k])
        s20 = simd.fma(v, x0, s20)
        s21 = simd.fma(v, x1, s21)
        s22 = simd.fma(v, x2, s22)
        s23 = simd.fma(v, x3, s23)
        v = simd.splat(c0, a3[k])
        s30 = simd.fma(v, x0, s30)
        s31 = simd.fma(v, x1, s31)
        s32 = simd.fma(v, x2, s32)
        s33 = simd.fma(v, x3, s33)
        v = simd.splat(c0, a4[k])
        s40 = simd.fma(v, x0, s40)
        s41 = simd.fma(v, x1, s41)
        s42 = simd.fma(v, x2, s42)
        s43 = simd.fma(v, x3, s43)
        v = simd.splat(c0, a5[k])
        s50 = simd.fma(v, x0, s50)
        s51 = simd.fma(v, x1, s51)
        s52 = simd.fma(v, x2, s52)
        s53 = simd.fma(v, x3, s53)
    simd.store_first(c0, p, s00, w)
    simd.store_first(c0, p + w, s01, w)
    simd.store_first(c0, p + 2 * w, s02, w)
    simd.store_first(c0, p + 3 * w, s03, w)
    simd.store_first(c1, p, s10, w)
    simd.store_first(c1, p + w, s11, w)
    simd.store_first(c1, p + 2 * w, s12, w)
    simd.store_first(c1, p + 3 * w, s13, w)
    simd.store_first(c2, p, s20, w)
    simd.store_first(c2, p + w, s21, w)
    simd.store_first(c2, p + 2 * w, s22, w)
    simd.store_first(c2, p + 3 * w, s23, w)
    simd.store_first(c3, p, s30, w)
    simd.store_first(c3, p + w, s31, w)
    simd.store_first(c3, p + 2 * w, s32, w)
    simd.store_first(c3, p + 3 * w, s33, w)
    simd.store_first(c4, p, s40, w)
    simd.store_first(c4, p + w, s41, w)
    simd.store_first(c4, p + 2 * w, s42, w)
    simd.store_first(c4, p + 3 * w, s43, w)
    simd.store_first(c5, p, s50, w)
    simd.store_first(c5, p + w, s51, w)
    simd.store_first(c5, p + 2 * w, s52, w)
    simd.store_first(c5, p + 3 * w, s53, w)


@njit(inline="always")
def _tile2(a, src, chan, offset, q, c, i, i1, p, n0, n1, n2, n3, k0, k1):
    """:func:`_tile4` for the two rows i and i1 (i1 == i: one row, computed and stored
    twice with the same values)."""
    w = simd.width(c[0])
    c0, c1 = c[i], c[i1]
    a0, a1 = a[i], a[i1]
    s00 = simd.load_first(c0, p, n0)
    s01 = simd.load_first(c0, p + w, n1)
    s02 = simd.load_first(c0, p + 2 * w, n2)
    s03 = simd.load_first(c0, p + 3 * w, n3)
    s10 = simd.load_first(c1, p, n0)
    s11 = simd.load_first(c1, p + w, n1)
    s12 = simd.load_first(c1, p + 2 * w, n2)
    s13 = simd.load_first(c1, p + 3 * w, n3)
    for k in range(UINT(k0), UINT(k1)):
        row = src[UINT(chan[k])]
        start = q + offset[k]
        x0 = simd.load_first(row, start, n0)
        x1 = simd.load_first(row, start + w, n1)
        x2 = simd.load_first(row, start + 2 * w, n2)
        x3 = simd.load_first(row, start + 3 * w, n3)
        v = simd.splat(c0, a0[k])
        s00 = simd.fma(v, x0, s00)
        s01 = simd.fma(v, x1, s01)
        s02 = simd.fma(v, x2, s02)
        s03 = simd.fma(v, x3, s03)
        v = simd.splat(c0, a1[k])
        s10 = simd.fma(v, x0, s10)
        s11 = simd.fma(v, x1, s11)
        s12 = simd.fma(v, x2, s12)
        s13 = simd.fma(v, x3, s13)
    simd.store_first(c0, p, s00, n0)
    simd.store_first(c0, p + w, s01, n1)
    simd.store_first(c0, p + 2 * w, s02, n2)
    simd.store_first(c0, p + 3 * w, s03, n3)
    simd.store_first(c1, p, s10, n0)
    simd.store_first(c1, p + w, s11, n1)
    simd.store_first(c1, p + 2 * w, s12, n2)
    simd.store_first(c1, p + 3 * w, s13, n3)


@njit(cache=True, fastmath=FAST)
def _shifted_matmul_acc(a, src, chan, offset, base, c, cbase, p_size):
    """c[m, cbase + p] += sum_k a[m, k] * src[chan[k], base + offset[k] + p], p < p_size.

    a (M, K), src (C, L), c (M, >= cbase + p_size), all C-contiguous. Tiles of 4 rows x 4
    vectors (:func:`_tile4`) keep their sums in registers across all K taps; the pixels past
    the last whole tile take one masked tile, and the rows past the last multiple of 4
    two-row tiles (:func:`_tile2`; a lone last row computed twice rather than a third
    variant compiled). A 4-row tile with repeated rows instead of the 2-row one was slower
    where LeNet has 6 rows (conv2's input gradient 1.09-1.19x, conv1's forward 1.03x).
    Without :data:`WIDE`, every row pair by the two-row tile.
    """
    m_size, k_size = a.shape[0], a.shape[1]
    w = simd.width(c[0])
    tile = 4 * w
    p_main = p_size - p_size % tile
    rest = p_size - p_main
    four = m_size - m_size % 4 if WIDE else 0  # the rows in four-row tiles
    for i in range(0, four, 4):
        for p in range(0, p_main, tile):
            _tile4(a, src, chan, offset, base + p, c, i, cbase + p, w, w, w, w, 0, k_size)
        if rest:
            _tile4(a, src, chan, offset, base + p_main, c, i, cbase + p_main, rest, rest - w,
                   rest - 2 * w, rest - 3 * w, 0, k_size)
    for i in range(four, m_size, 2):
        i1 = min(i + 1, m_size - 1)
        for p in range(0, p_main, tile):
            _tile2(a, src, chan, offset, base + p, c, i, i1, cbase + p, w, w, w, w, 0, k_size)
        if rest:
            _tile2(a, src, chan, offset, base + p_main, c, i, i1, cbase + p_main, rest,
                   rest - w, rest - 2 * w, rest - 3 * w, 0, k_size)


@njit(inline="always")
def _tile6(a, src, chan, offset, q, c, i, p, n0, n1, n2, n3, k0, k1):
    """:func:`_tile4` for the six rows i:i + 6: 24 sums in registers (of 32), and per tap
    four vector loads and six broadcast weights feed 24 multiply-adds (16 per eight loads in
    :func:`_tile4`)."""
    w = simd.width(c[0])
    c0, c1, c2, c3, c4, c5 = c[i], c[i + 1], c[i + 2], c[i + 3], c[i + 4], c[i + 5]
    a0, a1, a2, a3, a4, a5 = a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5]
    s00 = simd.load_first(c0, p, n0)
    s01 = simd.load_first(c0, p + w, n1)
    s02 = simd.load_first(c0, p + 2 * w, n2)
    s03 = simd.load_first(c0, p + 3 * w, n3)
    s10 = simd.load_first(c1, p, n0)
    s11 = simd.load_first(c1, p + w, n1)
    s12 = simd.load_first(c1, p + 2 * w, n2)
    s13 = simd.load_first(c1, p + 3 * w, n3)
    s20 = simd.load_first(c2, p, n0)
    s21 = simd.load_first(c2, p + w, n1)
    s22 = simd.load_first(c2, p + 2 * w, n2)
    s23 = simd.load_first(c2, p + 3 * w, n3)
    s30 = simd.load_first(c3, p, n0)
    s31 = simd.load_first(c3, p + w, n1)
    s32 = simd.load_first(c3, p + 2 * w, n2)
    s33 = simd.load_first(c3, p + 3 * w, n3)
    s40 = simd.load_first(c4, p, n0)
    s41 = simd.load_first(c4, p + w, n1)
    s42 = simd.load_first(c4, p + 2 * w, n2)
    s43 = simd.load_first(c4, p + 3 * w, n3)
    s50 = simd.load_first(c5, p, n0)
    s51 = simd.load_first(c5, p + w, n1)
    s52 = simd.load_first(c5, p + 2 * w, n2)
    s53 = simd.load_first(c5, p + 3 * w, n3)
    for k in range(UINT(k0), UINT(k1)):
        row = src[UINT(chan[k])]
        start = q + offset[k]
        x0 = simd.load_first(row, start, n0)
        x1 = simd.load_first(row, start + w, n1)
        x2 = simd.load_first(row, start + 2 * w, n2)
        x3 = simd.load_first(row, start + 3 * w, n3)
        v = simd.splat(c0, a0[k])
        s00 = simd.fma(v, x0, s00)
        s01 = simd.fma(v, x1, s01)
        s02 = simd.fma(v, x2, s02)
        s03 = simd.fma(v, x3, s03)
        v = simd.splat(c0, a1[k])
        s10 = simd.fma(v, x0, s10)
        s11 = simd.fma(v, x1, s11)
        s12 = simd.fma(v, x2, s12)
        s13 = simd.fma(v, x3, s13)
        v = simd.splat(c0, a2[k])
        s20 = simd.fma(v, x0, s20)
        s21 = simd.fma(v, x1, s21)
        s22 = simd.fma(v, x2, s22)
        s23 = simd.fma(v, x3, s23)
        v = simd.splat(c0, a3[k])
        s30 = simd.fma(v, x0, s30)
        s31 = simd.fma(v, x1, s31)
        s32 = simd.fma(v, x2, s32)
        s33 = simd.fma(v, x3, s33)
        v = simd.splat(c0, a4[k])
        s40 = simd.fma(v, x0, s40)
        s41 = simd.fma(v, x1, s41)
        s42 = simd.fma(v, x2, s42)
        s43 = simd.fma(v, x3, s43)
        v = simd.splat(c0, a5[k])
        s50 = simd.fma(v, x0, s50)
        s51 = simd.fma(v, x1, s51)
        s52 = simd.fma(v, x2, s52)
        s53 = simd.fma(v, x3, s53)
    simd.store_first(c0, p, s00, n0)
    simd.store_first(c0, p + w, s01, n1)
    simd.store_first(c0, p + 2 * w, s02, n2)
    simd.store_first(c0, p + 3 * w, s03, n3)
    simd.store_first(c1, p, s10, n0)
    simd.store_first(c1, p + w, s11, n1)
    simd.store_first(c1, p + 2 * w, s12, n2)
    simd.store_first(c1, p + 3 * w, s13, n3)
    simd.store_first(c2, p, s20, n0)
    simd.store_first(c2, p + w, s21, n1)
    simd.store_first(c2, p + 2 * w, s22, n2)
    simd.store_first(c2, p + 3 * w, s23, n3)
    simd.store_first(c3, p, s30, n0)
    simd.store_first(c3, p + w, s31, n1)
    simd.store_first(c3, p + 2 * w, s32, n2)
    simd.store_first(c3, p + 3 * w, s33, n3)
    simd.store_first(c4, p, s40, n0)
    simd.store_first(c4, p + w, s41, n1)
    simd.store_first(c4, p + 2 * w, s42, n2)
    simd.store_first(c4, p + 3 * w, s43, n3)
    simd.store_first(c5, p, s50, n0)
    simd.store_first(c5, p + w, s51, n1)
    simd.store_first(c5, p + 2 * w, s52, n2)
    simd.store_first(c5, p + 3 * w, s53, n3)


@njit(inline="always")
def six_row_tiles(rows):
    """Whether a weight-gradient type product with ``rows`` rows takes the six-row tiles
    (:func:`_abt6_lanes_acc`): six rows or more that are no multiple of 4, where the
    four-row tiles would leave a two-row remainder (LeNet's 6 channels), on a CPU with the
    registers for them (:data:`WIDE`). (At 8 and 16 rows its four-row tiles ran faster.)"""
    return WIDE and rows % 4 != 0 and rows >= 6


@njit(inline="always")
def shifted_products_acc(a, src, chan, offset, base, c, cbase, p_size):
    """:func:`_shifted_matmul_acc`, in six-row tiles (:func:`_shifted_matmul6_acc`) for six
    rows or more but eight on a CPU with the registers for them (:data:`WIDE`): the same sums
    in the same order. Their 24 sums take 4 loads, 6 broadcasts and the taps' indexes per 24
    multiply-adds, where the four-row tiles' 16 take 17 instructions more, which crowded the
    core's front end (LeNet's second layer, 16 rows x 150 taps: 6 + 6 + 4 rows 1.19x faster
    than four fours; 10 to 96 rows 1.12-1.20x; 8 rows alike)."""
    if WIDE and a.shape[0] >= 6 and a.shape[0] != 8:
        _shifted_matmul6_acc(a, src, chan, offset, base, c, cbase, p_size)
    else:
        _shifted_matmul_acc(a, src, chan, offset, base, c, cbase, p_size)


@njit(cache=True, fastmath=FAST)
def _shifted_matmul6_acc(a, src, chan, offset, base, c, cbase, p_size):
    """:func:`_shifted_matmul_acc` with the rows in tiles of six (:func:`_tile6`), those past
    the last multiple of 6 by :func:`_shifted_matmul_acc`; the same sums in the same order.
    Callers reach it through :func:`shifted_products_acc`, which says for which row counts
    (LeNet's first layer, 6 x 25 taps: 1.25x faster in cache than 4-row and 2-row tiles)."""
    m_size, k_size = a.shape[0], a.shape[1]
    w = simd.width(c[0])
    tile = 4 * w
    p_main = p_size - p_size % tile
    rest = p_size - p_main
    m_six = m_size - m_size % 6
    for i in range(0, m_six, 6):
        for p in range(0, p_main, tile):
            _tile6(a, src, chan, offset, base + p, c, i, cbase + p, w, w, w, w, 0, k_size)
        if rest:
            _tile6(a, src, chan, offset, base + p_main, c, i, cbase + p_main, rest, rest - w,
                   rest - 2 * w, rest - 3 * w, 0, k_size)
    if m_six < m_size:
        _shifted_matmul_acc(a[m_six:], src, chan, offset, base, c[m_six:], cbase, p_size)


@njit(inline="always")
def _gemm_rows(a, b, c, taps, no_offsets, p, k0, k1):
    """c[:, p:p + 4W] += a[:, k0:k1] @ b[k0:k1, p:p + 4W], whole vectors: the rows in tiles
    of six (:func:`_gemm_tile6`), those past the last multiple of 6 in pairs (:func:`_tile2`;
    a four-row tile for them ran 1-4% faster in the unrolled kernels' products and took 0.5 s
    more to compile); without :data:`WIDE`, all in pairs."""
    m_size = a.shape[0]
    w = simd.width(c[0])
    m_six = m_size - m_size % 6 if WIDE else 0
    for i in range(0, m_six, 6):
        _gemm_tile6(a, b, c, i, p, k0, k1)
    for i in range(m_six, m_size, 2):
        _tile2(a, b, taps, no_offsets, p, c, i, min(i + 1, m_size - 1), p, w, w, w, w, k0, k1)


@njit(cache=True, fastmath=FAST)
def _gemm_acc(a, b, c, p_size, k_block):
    """c[m, p] += sum_k a[m, k] * b[k, p] for p < p_size: a (M, K), b (K, >= p_size), c (M,
    >= p_size), b and c C-contiguous, a at any strides (the unrolled kernels' weights in
    place).

    The taps in blocks of ``k_block``: per block, one tile-wide panel of b (k_block x 4W
    values, L1-resident) serves every row of a before the next panel is read, where
    :func:`_shifted_matmul_acc` streams all of b once per 4 rows (1.5x faster where b is
    larger than L2's share, e.g. 256 x 2304 x 180). The rows in tiles of six
    (:func:`_gemm_rows`: on 64 x 256 by 256 x 64 in L1, 1.04-1.08x faster than tiles of
    four; ResNet-18's unrolled products 0.98-1.21x on one thread). Every tile's vectors are
    whole: the columns past the last whole tile are copied out with zeros after them,
    computed as a tile and copied back, so that the tiles' code is compiled once (with a
    second, masked copy for the last tile this function took 2 s more to compile, 3.5 s in
    all). Without :data:`WIDE`, every row pair by the two-row tile."""
    m_size, k_size = a.shape[0], a.shape[1]
    w = simd.width(c[0])
    tile = 4 * w
    taps = np.arange(k_size)
    no_offsets = np.zeros(k_size, dtype=np.int64)
    p_main = p_size - p_size % tile
    rest = p_size - p_main
    b_rest = np.zeros((k_size if rest else 0, tile), dtype=b.dtype)
    c_rest = np.zeros((m_size if rest else 0, tile), dtype=c.dtype)
    for i in range(b_rest.shape[0]):
        for j in range(rest):
            b_rest[i, j] = b[i, p_main + j]
    for i in range(c_rest.shape[0]):
        for j in range(rest):
            c_rest[i, j] = c[i, p_main + j]
    for k0 in range(0, k_size, k_block):
        k1 = min(k_size, k0 + k_block)
        for p in range(0, p_size, tile):  # one call site: the tiles' code compiled once
            src, dst, q = (b, c, p) if p < p_main else (b_rest, c_rest, 0)
            _gemm_rows(a, src, dst, taps, no_offsets, q, k0, k1)
    for i in range(c_rest.shape[0]):
        for j in range(rest):
            c[i, p_main + j] = c_rest[i, j]


# The weight gradient's product, c[m, k] = sum_p a[m, p] * tap_k[p], is a sum over pixels
# (the rows of a and of the taps are the long axis): tiles of 4 rows x 4 taps keep 16 vectors
# of partial sums in registers across many pixels. Their lanes are summed either once per
# tile (:func:`_abt_acc`, where the tile covers a long run of pixels) or only after all
# samples, from W partial sums per (m, k) kept in memory (:func:`_abt_lanes_acc`, where that
# memory stays in cache and the tiles cover only a few pixels each).

@njit(inline="always")
def _abt_step(x0, x1, x2, x3, a0, a1, a2, a3, px, pa, n, s):
    """The 16 sums ``s`` of :func:`_abt_tile` plus one vector of pixels: the taps' rows x_j
    (already shifted by their offsets) at px times the a rows at pa, the first n lanes."""
    v0 = simd.load_first(x0, px, n)
    v1 = simd.load_first(x1, px, n)
    v2 = simd.load_first(x2, px, n)
    v3 = simd.load_first(x3, px, n)
    g0 = simd.load_first(a0, pa, n)
    g1 = simd.load_first(a1, pa, n)
    g2 = simd.load_first(a2, pa, n)
    g3 = simd.load_first(a3, pa, n)
    return (simd.fma(g0, v0, s[0]), simd.fma(g0, v1, s[1]), simd.fma(g0, v2, s[2]),
            simd.fma(g0, v3, s[3]), simd.fma(g1, v0, s[4]), simd.fma(g1, v1, s[5]),
            simd.fma(g1, v2, s[6]), simd.fma(g1, v3, s[7]), simd.fma(g2, v0, s[8]),
            simd.fma(g2, v1, s[9]), simd.fma(g2, v2, s[10]), simd.fma(g2, v3, s[11]),
            simd.fma(g3, v0, s[12]), simd.fma(g3, v1, s[13]), simd.fma(g3, v2, s[14]),
            simd.fma(g3, v3, s[15]))


@njit(inline="always")
def _abt_tile(a, src, chan, offset, i, m_last, j, k_last, a_base, src_base, n_rows, a_step,
              src_step, length, s):
    """``s`` (16 vectors: row-major 4 x 4) plus the lane-wise products, over rows r < n_rows
    and pixels p < length, of a[i + di, a_base + r * a_step + p] and
    src[chan[j + dj], src_base + r * src_step + offset[j + dj] + p]. Rows past m_last and taps
    past k_last repeat the last one (their sums are duplicates).

    Per W pixels (W = simd.width), eight vector loads feed 16 multiply-adds; the last pixels
    of a row take one masked vector (lanes past the row are zeros)."""
    w = simd.width(a[0])
    a0, a1 = a[i], a[min(i + 1, m_last)]
    a2, a3 = a[min(i + 2, m_last)], a[min(i + 3, m_last)]
    j1, j2, j3 = min(j + 1, k_last), min(j + 2, k_last), min(j + 3, k_last)
    x0, x1 = src[chan[j], offset[j]:], src[chan[j1], offset[j1]:]
    x2, x3 = src[chan[j2], offset[j2]:], src[chan[j3], offset[j3]:]
    main = length - length % w
    for r in range(n_rows):
        pa = a_base + r * a_step
        px = src_base + r * src_step
        for p in range(0, main, w):
            s = _abt_step(x0, x1, x2, x3, a0, a1, a2, a3, px + p, pa + p, w, s)
        if main < length:
            s = _abt_step(x0, x1, x2, x3, a0, a1, a2, a3, px + main, pa + main,
                          length - main, s)
    return s


@njit(inline="always")
def _add_totals(c_row, j, k_last, s0, s1, s2, s3):
    """c_row[j + dj] += the total of s_dj, for the taps j + dj <= k_last (not duplicates)."""
    c_row[j] += simd.total(s0)
    if j + 1 <= k_last:
        c_row[j + 1] += simd.total(s1)
    if j + 2 <= k_last:
        c_row[j + 2] += simd.total(s2)
    if j + 3 <= k_last:
        c_row[j + 3] += simd.total(s3)


@njit(cache=True, fastmath=FAST)
def _abt_acc(a, src, chan, offset, c, a_base, src_base, n_rows, a_step, src_step, length):
    """c[m, k] += sum over rows r < n_rows and pixels p < length of
    a[m, a_base + r * a_step + p] * src[chan[k], src_base + r * src_step + offset[k] + p].

    a (M, ...), src (C, ...), c (M, K), all C-contiguous; :func:`_abt_tile` tiles, their
    lanes summed at the end of each."""
    m_last, k_last = a.shape[0] - 1, c.shape[1] - 1
    zero = simd.splat(a[0], 0)
    for i in range(0, m_last + 1, 4):
        for j in range(0, k_last + 1, 4):
            s = _abt_tile(a, src, chan, offset, i, m_last, j, k_last, a_base, src_base, n_rows,
                          a_step, src_step, length,
                          (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero,
                           zero, zero, zero, zero))
            _add_totals(c[i], j, k_last, s[0], s[1], s[2], s[3])
            if i + 1 <= m_last:
                _add_totals(c[i + 1], j, k_last, s[4], s[5], s[6], s[7])
            if i + 2 <= m_last:
                _add_totals(c[i + 2], j, k_last, s[8], s[9], s[10], s[11])
            if i + 3 <= m_last:
                _add_totals(c[i + 3], j, k_last, s[12], s[13], s[14], s[15])


@njit(cache=True, fastmath=FAST)
def _abt_lanes_acc(a, src, chan, offset, acc, a_base, src_base, n_rows, a_step, src_step,
                   length):
    """:func:`_abt_acc` without the lanes' sums: acc[m, k * W:(k + 1) * W] += the W lane
    sums of c[m, k] (acc (M, K * W); :func:`_add_lane_sums` finishes them). A tile's sums are
    read from acc and written back (duplicates write the same values twice)."""
    w = simd.width(acc[0])
    m_last, k_last = a.shape[0] - 1, acc.shape[1] // w - 1
    for i in range(0, m_last + 1, 4):
        r0, r1 = acc[i], acc[min(i + 1, m_last)]
        r2, r3 = acc[min(i + 2, m_last)], acc[min(i + 3, m_last)]
        for j in range(0, k_last + 1, 4):
            q0, q1 = j * w, min(j + 1, k_last) * w
            q2, q3 = min(j + 2, k_last) * w, min(j + 3, k_last) * w
            s = _abt_tile(a, src, chan, offset, i, m_last, j, k_last, a_base, src_base, n_rows,
                          a_step, src_step, length,
                          (simd.load_first(r0, q0, w), simd.load_first(r0, q1, w),
                           simd.load_first(r0, q2, w), simd.load_first(r0, q3, w),
                           simd.load_first(r1, q0, w), simd.load_first(r1, q1, w),
                           simd.load_first(r1, q2, w), simd.load_first(r1, q3, w),
                           simd.load_first(r2, q0, w), simd.load_first(r2, q1, w),
                           simd.load_first(r2, q2, w), simd.load_first(r2, q3, w),
                           simd.load_first(r3, q0, w), simd.load_first(r3, q1, w),
                           simd.load_first(r3, q2, w), simd.load_first(r3, q3, w)))
            simd.store_first(r0, q0, s[0], w)
            simd.store_first(r0, q1, s[1], w)
            simd.store_first(r0, q2, s[2], w)
            simd.store_first(r0, q3, s[3], w)
            simd.store_first(r1, q0, s[4], w)
            simd.store_first(r1, q1, s[5], w)
            simd.store_first(r1, q2, s[6], w)
            simd.store_first(r1, q3, s[7], w)
            simd.store_first(r2, q0, s[8], w)
            simd.store_first(r2, q1, s[9], w)
            simd.store_first(r2, q2, s[10], w)
            simd.store_first(r2, q3, s[11], w)
            simd.store_first(r3, q0, s[12], w)
            simd.store_first(r3, q1, s[13], w)
            simd.store_first(r3, q2, s[14], w)
            simd.store_first(r3, q3, s[15], w)


@njit(inline="always")
def _abt6_tile(a, src, chan, offset, acc, i, m_last, j, k_last, a_base, src_base, n_rows, a_step,
               src_step, length):
    """acc's lane sums (:func:`_abt_lanes_acc`) of rows i:i + 6 and taps j:j + 4 plus their
    products over rows r < n_rows and pixels p < length, as :func:`_abt_tile` takes them; rows
    past m_last and taps past k_last repeat the last one. Per W pixels, six vector loads of a
    and four of the taps feed 24 multiply-adds (16 per eight loads in :func:`_abt_tile`)."""
    w = simd.width(acc[0])
    a0, a1, a2 = a[i], a[min(i + 1, m_last)], a[min(i + 2, m_last)]
    a3, a4, a5 = a[min(i + 3, m_last)], a[min(i + 4, m_last)], a[min(i + 5, m_last)]
    r0, r1, r2 = acc[i], acc[min(i + 1, m_last)], acc[min(i + 2, m_last)]
    r3, r4, r5 = acc[min(i + 3, m_last)], acc[min(i + 4, m_last)], acc[min(i + 5, m_last)]
    j1, j2, j3 = min(j + 1, k_last), min(j + 2, k_last), min(j + 3, k_last)
    x0, x1 = src[chan[j], offset[j]:], src[chan[j1], offset[j1]:]
    x2, x3 = src[chan[j2], offset[j2]:], src[chan[j3], offset[j3]:]
    q0, q1, q2, q3 = j * w, j1 * w, j2 * w, j3 * w
    s00 = simd.load_first(r0, q0, w)
    s01 = simd.load_first(r0, q1, w)
    s02 = simd.load_first(r0, q2, w)
    s03 = simd.load_first(r0, q3, w)
    s10 = simd.load_first(r1, q0, w)
    s11 = simd.load_first(r1, q1, w)
    s12 = simd.load_first(r1, q2, w)
    s13 = simd.load_first(r1, q3, w)
    s20 = simd.load_first(r2, q0, w)
    s21 = simd.load_first(r2, q1, w)
    s22 = simd.load_first(r2, q2, w)
    s23 = simd.load_first(r2, q3, w)
    s30 = simd.load_first(r3, q0, w)
    s31 = simd.load_first(r3, q1, w)
    s32 = simd.load_first(r3, q2, w)
    s33 = simd.load_first(r3, q3, w)
    s40 = simd.load_first(r4, q0, w)
    s41 = simd.load_first(r4, q1, w)
    s42 = simd.load_first(r4, q2, w)
    s43 = simd.load_first(r4, q3, w)
    s50 = simd.load_first(r5, q0, w)
    s51 = simd.load_first(r5, q1, w)
    s52 = simd.load_first(r5, q2, w)
    s53 = simd.load_first(r5, q3, w)
    main = length - length % w
    for r in range(n_rows):
        pa = a_base + r * a_step
        px = src_base + r * src_step
        for p in range(0, main, w):
            g0 = simd.load_first(a0, pa + p, w)
            g1 = simd.load_first(a1, pa + p, w)
            g2 = simd.load_first(a2, pa + p, w)
            g3 = simd.load_first(a3, pa + p, w)
            g4 = simd.load_first(a4, pa + p, w)
            g5 = simd.load_first(a5, pa + p, w)
            v = simd.load_first(x0, px + p, w)
            s00 = simd.fma(g0, v, s00)
            s10 = simd.fma(g1, v, s10)
            s20 = simd.fma(g2, v, s20)
            s30 = simd.fma(g3, v, s30)
            s40 = simd.fma(g4, v, s40)
            s50 = simd.fma(g5, v, s50)
            v = simd.load_first(x1, px + p, w)
            s01 = simd.fma(g0, v, s01)
            s11 = simd.fma(g1, v, s11)
            s21 = simd.fma(g2, v, s21)
            s31 = simd.fma(g3, v, s31)
            s41 = simd.fma(g4, v, s41)
            s51 = simd.fma(g5, v, s51)
            v = simd.load_first(x2, px + p, w)
            s02 = simd.fma(g0, v, s02)
            s12 = simd.fma(g1, v, s12)
            s22 = simd.fma(g2, v, s22)
            s32 = simd.fma(g3, v, s32)
            s42 = simd.fma(g4, v, s42)
            s52 = simd.fma(g5, v, s52)
            v = simd.load_first(x3, px + p, w)
            s03 = simd.fma(g0, v, s03)
            s13 = simd.fma(g1, v, s13)
            s23 = simd.fma(g2, v, s23)
            s33 = simd.fma(g3, v, s33)
            s43 = simd.fma(g4, v, s43)
            s53 = simd.fma(g5, v, s53)
        if main < length:
            n = length - main
            g0 = simd.load_first(a0, pa + main, n)
            g1 = simd.load_first(a1, pa + main, n)
            g2 = simd.load_first(a2, pa + main, n)
            g3 = simd.load_first(a3, pa + main, n)
            g4 = simd.load_first(a4, pa + main, n)
            g5 = simd.load_first(a5, pa + main, n)
            v = simd.load_first(x0, px + main, n)
            s00 = simd.fma(g0, v, s00)
            s10 = simd.fma(g1, v, s10)
            s20 = simd.fma(g2, v, s20)
            s30 = simd.fma(g3, v, s30)
            s40 = simd.fma(g4, v, s40)
            s50 = simd.fma(g5, v, s50)
            v = simd.load_first(x1, px + main, n)
            s01 = simd.fma(g0, v, s01)
            s11 = simd.fma(g1, v, s11)
            s21 = simd.fma(g2, v, s21)
            s31 = simd.fma(g3, v, s31)
            s41 = simd.fma(g4, v, s41)
            s51 = simd.fma(g5, v, s51)
            v = simd.load_first(x2, px + main, n)
            s02 = simd.fma(g0, v, s02)
            s12 = simd.fma(g1, v, s12)
            s22 = simd.fma(g2, v, s22)
            s32 = simd.fma(g3, v, s32)
            s42 = simd.fma(g4, v, s42)
            s52 = simd.fma(g5, v, s52)
            v = simd.load_first(x3, px + main, n)
            s03 = simd.fma(g0, v, s03)
            s13 = simd.fma(g1, v, s13)
            s23 = simd.fma(g2, v, s23)
            s33 = simd.fma(g3, v, s33)
            s43 = simd.fma(g4, v, s43)
            s53 = simd.fma(g5, v, s53)
    simd.store_first(r0, q0, s00, w)
    simd.store_first(r0, q1, s01, w)
    simd.store_first(r0, q2, s02, w)
    simd.store_first(r0, q3, s03, w)
    simd.store_first(r1, q0, s10, w)
    simd.store_first(r1, q1, s11, w)
    simd.store_first(r1, q2, s12, w)
    simd.store_first(r1, q3, s13, w)
    simd.store_first(r2, q0, s20, w)
    simd.store_first(r2, q1, s21, w)
    simd.store_first(r2, q2, s22, w)
    simd.store_first(r2, q3, s23, w)
    simd.store_first(r3, q0, s30, w)
    simd.store_first(r3, q1, s31, w)
    simd.store_first(r3, q2, s32, w)
    simd.store_first(r3, q3, s33, w)
    simd.store_first(r4, q0, s40, w)
    simd.store_first(r4, q1, s41, w)
    simd.store_first(r4, q2, s42, w)
    simd.store_first(r4, q3, s43, w)
    simd.store_first(r5, q0, s50, w)
    simd.store_first(r5, q1, s51, w)
    simd.store_first(r5, q2, s52, w)
    simd.store_first(r5, q3, s53, w)


@njit(cache=True, fastmath=FAST)
def _abt6_lanes_acc(a, src, chan, offset, acc, a_base, src_base, n_rows, a_step, src_step,
                    length):
    """:func:`_abt_lanes_acc` in tiles of six rows by four taps (:func:`_abt6_tile`): for row
    counts that are no multiple of 4 (LeNet's first layer, 6 x 25 taps: its 4 x 4 tiles
    computed 224 sums for 150)."""
    w = simd.width(acc[0])
    m_last, k_last = a.shape[0] - 1, acc.shape[1] // w - 1
    for i in range(0, m_last + 1, 6):
        for j in range(0, k_last + 1, 4):
            _abt6_tile(a, src, chan, offset, acc, i, m_last, j, k_last, a_base, src_base,
                       n_rows, a_step, src_step, length)


@njit(inline="always")
def _add_lane_sums(acc, partial):
    """partial[m, k] += the total of acc[m, k * W:(k + 1) * W], acc from :func:`_abt_lanes_acc`."""
    w = simd.width(acc[0])
    for m in range(partial.shape[0]):
        for k in range(partial.shape[1]):
            partial[m, k] += simd.total(simd.load_first(acc[m], k * w, w))
