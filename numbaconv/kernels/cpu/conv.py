"""Numba CPU kernels for 2-D convolution (cross-correlation), forward and backward.

The public wrappers in :mod:`numbaconv.functional` check and normalise every argument; the
kernels trust their inputs. Inputs arrive already padded and C-contiguous:

    xp : (N, C_in, Hp, Wp)            the zero-padded input
    w  : (C_out, C_in // groups, KH, KW)
    y  : (N, C_out, OH, OW)

Both kernels are matrix products whose second factor is never built. Seen as flat vectors of
``Hp * Wp`` values, the input window under every output pixel is the same plane shifted by a
fixed offset per kernel tap ``k = (c_in, kh, kw)``: ``kh * dilation_h * Wp + kw * dilation_w``.
So the "im2col" matrix's row ``k`` is simply ``plane[offset[k]:]``, a contiguous slice. Outputs
are computed on that flat grid, ``Wp`` wide (the ``Wp - OW`` extra columns per row are scratch),
at stride 1; a strided convolution keeps every stride-th row and column of it.

The products are register tiles of SIMD vectors (:mod:`.simd`) along the long pixel axis: 4
output rows x 4 vectors of pixels summed over all taps (forward), 4 output channels x 4 taps
summed over pixels (weight gradient, which either copies gy onto the flat grid or, for layers
with few weights, reads gy's rows where they are: :func:`weight_grad_from_rows`). No BLAS:
they run inside ``prange`` loops, where a BLAS call would start its own threads on top of
Numba's. (They live in this module because ``cache=True`` does not notice edits to other
modules.) The gradient of the input is itself a convolution, of the
gradient with the flipped, transposed kernel, and runs through :func:`forward`.

Narrow images (where the scratch columns are a large share, e.g. LeNet's 14-wide conv2 input
with 10 outputs per row) take the ``*_lanes`` kernels instead: LANES samples interleaved pixel
by pixel, so that one output row of all of them is contiguous and holds real outputs only, and
the input gradient is scattered from gy instead of convolving its zero-padded copy.
:func:`use_lanes` chooses; :func:`forward` and :func:`weight_grad` dispatch.

Parallel loops only ever write to memory that one iteration owns (a block of an output plane
or of LANES samples, or one batch chunk's partial weight gradient, summed afterwards in a fixed
order), so results do not depend on the number of threads.
"""

import numpy as np
from numba import njit, prange

from . import simd

_FAST = {"reassoc", "contract"}  # reorder sums so they vectorise; NaN and inf still propagate
OUT_BUFFER = 65536  # elements of one block's output rows: 256 KiB of float32, L2-resident
WEIGHT_GRAD_CHUNKS = 32  # batch chunks with their own weight-gradient sums
WEIGHT_GRAD_ROWS = 5  # rows of LANES samples per pass of the weight-gradient tiles (1, 2, 10 slow)
ROWS_ACC_BYTES = 16384  # the most lane sums (bytes) for which the weight gradient reads gy's rows
LANES = 32  # samples interleaved by the narrow-image kernels (rows of 32 x OW values)
TASKS = 64  # parallel tasks of the forward (each with its scratch block): a few per thread


@njit(inline="always")
def _tile4(a, src, chan, offset, q, c, i, p, n0, n1, n2, n3):
    """c[i:i + 4, p:p + 4W] += a[i:i + 4] times the taps' rows at ``q`` (W = simd.width); only
    the first n0, n1, n2, n3 values of the four vectors are read and written.

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
    for k in range(a.shape[1]):
        row = src[chan[k]]
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
def _tile2(a, src, chan, offset, q, c, i, i1, p, n0, n1, n2, n3):
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
    for k in range(a.shape[1]):
        row = src[chan[k]]
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


@njit(inline="always")
def _shifted_matmul_acc(a, src, chan, offset, base, c, cbase, p_size):
    """c[m, cbase + p] += sum_k a[m, k] * src[chan[k], base + offset[k] + p], p < p_size.

    a (M, K), src (C, L), c (M, >= cbase + p_size), all C-contiguous. Tiles of 4 rows x 4
    vectors (:func:`_tile4`) keep their sums in registers across all K taps; the pixels past
    the last whole tile take one masked tile, and the rows past the last multiple of 4
    two-row tiles (:func:`_tile2`; a lone last row computed twice rather than a third
    variant compiled). A 4-row tile with repeated rows instead of the 2-row one was slower
    where LeNet has 6 rows (conv2's input gradient 1.09-1.19x, conv1's forward 1.03x).
    """
    m_size = a.shape[0]
    w = simd.width(c[0])
    tile = 4 * w
    p_main = p_size - p_size % tile
    rest = p_size - p_main
    for i in range(0, m_size - 3, 4):
        for p in range(0, p_main, tile):
            _tile4(a, src, chan, offset, base + p, c, i, cbase + p, w, w, w, w)
        if rest:
            _tile4(a, src, chan, offset, base + p_main, c, i, cbase + p_main, rest, rest - w,
                   rest - 2 * w, rest - 3 * w)
    for i in range(m_size - m_size % 4, m_size, 2):
        i1 = min(i + 1, m_size - 1)
        for p in range(0, p_main, tile):
            _tile2(a, src, chan, offset, base + p, c, i, i1, cbase + p, w, w, w, w)
        if rest:
            _tile2(a, src, chan, offset, base + p_main, c, i, i1, cbase + p_main, rest,
                   rest - w, rest - 2 * w, rest - 3 * w)


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


@njit(inline="always")
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


@njit(inline="always")
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
def _add_lane_sums(acc, partial):
    """partial[m, k] += the total of acc[m, k * W:(k + 1) * W], acc from :func:`_abt_lanes_acc`."""
    w = simd.width(acc[0])
    for m in range(partial.shape[0]):
        for k in range(partial.shape[1]):
            partial[m, k] += simd.total(simd.load_first(acc[m], k * w, w))


@njit(cache=True)
def _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp):
    """Per kernel tap k = (c_in, kh, kw), in weight order: its channel and flat offset."""
    k_size = c_in_g * kh_size * kw_size
    chan = np.empty(k_size, dtype=np.int64)
    offset = np.empty(k_size, dtype=np.int64)
    k = 0
    for ci in range(c_in_g):
        for kh in range(kh_size):
            for kw in range(kw_size):
                chan[k] = ci
                offset[k] = kh * dilation_h * wp + kw * dilation_w
                k += 1
    return chan, offset


@njit(cache=True)
def _grouped_weights(w, groups):
    """w (C_out, C_in_g, KH, KW) as (groups, C_out_g, K)."""
    c_out = w.shape[0]
    c_out_g = c_out // groups
    k_size = w.shape[1] * w.shape[2] * w.shape[3]
    return w.reshape(groups, c_out_g, k_size).copy()


@njit(cache=True)
def _block_rows(m_size, dense_h, wp):
    """Rows of the flat stride-1 grid per block: m_size such rows fit OUT_BUFFER."""
    return max(1, min(dense_h, OUT_BUFFER // (m_size * wp)))


@njit(inline="always")
def block_sums(xflat, weights, b, chan, offset, base, length, n, g, out):
    """out[m, :length] = the bias plus the sums of the flat stride-1 grid from position
    ``base`` of sample n, group g (xflat (N, C_in, Hp * Wp), weights (C_out_g, K)): the
    convolution's outputs of a block of rows, ``Wp`` per row."""
    c_out_g, c_in_g = weights.shape[0], chan[-1] + 1
    for m in range(c_out_g):  # start from the bias: no add afterwards
        out[m, :length] = b[g * c_out_g + m]
    _shifted_matmul_acc(weights, xflat[n, g * c_in_g:(g + 1) * c_in_g], chan, offset, base, out,
                        0, length)


@njit(cache=True, fastmath=_FAST)
def _forward_block(xflat, weights, b, chan, offset, stride_h, stride_w, wp, n, g, row0, n_rows,
                   dense_w, y, out):
    """The outputs of sample n, group g, from stride-1 rows row0:row0 + n_rows, for
    :func:`conv2d_forward`; ``out`` (C_out_g, >= the rows' flat length) is scratch."""
    c_out_g = weights.shape[0]
    out_w = y.shape[3]
    block_sums(xflat, weights, b, chan, offset, row0 * wp, (n_rows - 1) * wp + dense_w, n, g,
               out)
    for m in range(c_out_g):
        src = out[m]
        for r in range(n_rows):
            if (row0 + r) % stride_h:
                continue
            dst = y[n, g * c_out_g + m, (row0 + r) // stride_h]
            base = r * wp
            if stride_w == 1:  # a contiguous copy, vectorised
                for ow in range(out_w):
                    dst[ow] = src[base + ow]
            else:
                for ow in range(out_w):
                    dst[ow] = src[base + ow * stride_w]


# The parallel kernels below call one function per job: a prange body is compiled through
# Numba's parfor passes, which cost seconds more on a large inlined body than on a call.

@njit(parallel=True, cache=True)
def conv2d_forward(xp, w, b, stride_h, stride_w, dilation_h, dilation_w, groups, out_h, out_w):
    """Convolution of a padded input; returns y of shape (N, C_out, out_h, out_w)."""
    n_batch, c_in, hp, wp = xp.shape
    c_out, c_in_g, kh_size, kw_size = w.shape
    weights = _grouped_weights(w, groups)
    chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
    dense_h = (out_h - 1) * stride_h + 1  # stride-1 rows spanned by the outputs
    dense_w = (out_w - 1) * stride_w + 1
    rows = _block_rows(weights.shape[1], dense_h, wp)
    n_blocks = (dense_h + rows - 1) // rows
    xflat = xp.reshape(n_batch, c_in, hp * wp)
    y = np.empty((n_batch, c_out, out_h, out_w), dtype=xp.dtype)
    n_jobs = n_batch * groups * n_blocks
    n_tasks = min(n_jobs, TASKS)
    for task in prange(n_tasks):  # one scratch block per task, not per job
        out = np.empty((c_out // groups, rows * wp), dtype=xp.dtype)
        for job in range(task * n_jobs // n_tasks, (task + 1) * n_jobs // n_tasks):
            n = job // (groups * n_blocks)
            g = job // n_blocks % groups
            row0 = job % n_blocks * rows
            _forward_block(xflat, weights[g], b, chan, offset, stride_h, stride_w, wp, n, g,
                           row0, min(rows, dense_h - row0), dense_w, y, out)
    return y


@njit(cache=True, fastmath=_FAST)
def _weight_grad_chunk(gy, xflat, chan, offset, stride_h, stride_w, wp, n_start, n_stop, g,
                       rows, dense_h, dense_w, partial, partial_bias):
    """partial (C_out_g, K) += the weight gradient of samples n_start:n_stop, group g, and
    partial_bias (C_out_g,) += their bias gradient, for :func:`conv2d_weight_grad`."""
    c_out_g = partial_bias.shape[0]
    c_in_g = chan[-1] + 1
    out_w = gy.shape[3]
    zero = xflat.dtype.type(0)
    grads = np.zeros((c_out_g, rows * wp), dtype=xflat.dtype)
    for n in range(n_start, n_stop):
        src = xflat[n, g * c_in_g:(g + 1) * c_in_g]
        for row0 in range(0, dense_h, rows):
            n_rows = min(rows, dense_h - row0)
            # at stride 1 every position the product reads is rewritten below for each block
            # or never written (scratch columns, padding rows): zero from the start
            if stride_h > 1 or stride_w > 1:
                grads.fill(0)
            for m in range(c_out_g):
                dst = grads[m]
                total = zero
                for r in range(n_rows):
                    if (row0 + r) % stride_h:
                        continue
                    grad_row = gy[n, g * c_out_g + m, (row0 + r) // stride_h]
                    base = r * wp
                    if stride_w == 1:  # a contiguous copy, vectorised
                        for ow in range(out_w):
                            value = grad_row[ow]
                            dst[base + ow] = value
                            total += value
                    else:
                        for ow in range(out_w):
                            value = grad_row[ow]
                            dst[base + ow * stride_w] = value
                            total += value
                partial_bias[m] += total
            _abt_acc(grads, src, chan, offset, partial, 0, row0 * wp, 1, 0, 0,
                     (n_rows - 1) * wp + dense_w)


@njit(cache=True, fastmath=_FAST)
def _weight_grad_rows(gy, xflat, chan, offset, stride_h, wp, n_start, n_stop, g, partial,
                      partial_bias):
    """:func:`_weight_grad_chunk` at column stride 1 straight from gy's rows (no copy onto the
    flat grid); the lanes' sums of all the chunk's samples kept in an L1-sized buffer."""
    c_out_g = partial_bias.shape[0]
    c_in_g = chan[-1] + 1
    out_h, out_w = gy.shape[2], gy.shape[3]
    acc = np.zeros((c_out_g, chan.shape[0] * simd.width(xflat[0, 0])), dtype=xflat.dtype)
    zero = xflat.dtype.type(0)
    for n in range(n_start, n_stop):
        a = gy[n, g * c_out_g:(g + 1) * c_out_g].reshape(c_out_g, out_h * out_w)
        for m in range(c_out_g):
            total = zero
            for p in range(out_h * out_w):
                total += a[m, p]
            partial_bias[m] += total
        _abt_lanes_acc(a, xflat[n, g * c_in_g:(g + 1) * c_in_g], chan, offset, acc, 0, 0, out_h,
                       out_w, stride_h * wp, out_w)
    _add_lane_sums(acc, partial)


@njit(parallel=True, cache=True)
def conv2d_weight_grad(gy, xp, kh_size, kw_size, stride_h, stride_w, dilation_h, dilation_w,
                       groups):
    """Gradients of the weight, (C_out, C_in // groups, kh_size, kw_size), and of the bias,
    (C_out,): ``(grad_w, grad_b)``.

    grad_w[co, k] = sum over samples and pixels p of gy[n, co, p] * plane[offset[k] + p], with
    gy laid out on the same flat stride-1 grid as the forward pass (zero where no output is).
    grad_b is summed from the gy rows as they are copied there (no pass of its own).
    """
    n_batch, c_in, hp, wp = xp.shape
    c_out, out_h, out_w = gy.shape[1], gy.shape[2], gy.shape[3]
    c_in_g = c_in // groups
    c_out_g = c_out // groups
    chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
    dense_h = (out_h - 1) * stride_h + 1
    dense_w = (out_w - 1) * stride_w + 1
    rows = _block_rows(c_out_g, dense_h, wp)
    xflat = xp.reshape(n_batch, c_in, hp * wp)
    n_chunks = min(n_batch, WEIGHT_GRAD_CHUNKS)
    partial, partial_bias = _zero_partials(n_chunks, groups, c_out, chan.shape[0], xp)
    for job in prange(n_chunks * groups):
        chunk, g = job // groups, job % groups
        _weight_grad_chunk(gy, xflat, chan, offset, stride_h, stride_w, wp,
                           chunk * n_batch // n_chunks, (chunk + 1) * n_batch // n_chunks, g,
                           rows, dense_h, dense_w, partial[chunk, g],
                           partial_bias[chunk, 0, g * c_out_g:(g + 1) * c_out_g, 0])
    return _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size)


@njit(parallel=True, cache=True)
def conv2d_weight_grad_rows(gy, xp, kh_size, kw_size, stride_h, dilation_h, dilation_w, groups):
    """:func:`conv2d_weight_grad` (column stride 1) for layers with few weights (where
    :func:`weight_grad_from_rows` says so): the products read gy's rows where they are."""
    n_batch, c_in, hp, wp = xp.shape
    c_out = gy.shape[1]
    c_in_g = c_in // groups
    c_out_g = c_out // groups
    chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
    xflat = xp.reshape(n_batch, c_in, hp * wp)
    n_chunks = min(n_batch, WEIGHT_GRAD_CHUNKS)
    partial, partial_bias = _zero_partials(n_chunks, groups, c_out, chan.shape[0], xp)
    for job in prange(n_chunks * groups):
        chunk, g = job // groups, job % groups
        _weight_grad_rows(gy, xflat, chan, offset, stride_h, wp, chunk * n_batch // n_chunks,
                          (chunk + 1) * n_batch // n_chunks, g, partial[chunk, g],
                          partial_bias[chunk, 0, g * c_out_g:(g + 1) * c_out_g, 0])
    return _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size)


@njit(cache=True)
def _zero_partials(n_parts, groups, c_out, k_size, like):
    """Zeroed partial sums, in ``like``'s dtype, of n_parts weight gradients (parts, groups,
    C_out_g, K) and bias gradients (parts, 1, C_out, 1)."""
    return (np.zeros((n_parts, groups, c_out // groups, k_size), dtype=like.dtype),
            np.zeros((n_parts, 1, c_out, 1), dtype=like.dtype))


@njit(cache=True)
def _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size):
    """``(grad_w, grad_b)`` from the partial sums of :func:`_zero_partials`."""
    c_out = partial_bias.shape[2]
    return (_sum_chunks(partial, c_out).reshape(c_out, c_in_g, kh_size, kw_size),
            _sum_chunks(partial_bias, c_out).reshape(c_out))


@njit(cache=True)
def _sum_chunks(partial, c_out):
    """(C_out, K): the chunks' weight gradients (chunks, groups, C_out_g, K) summed in a
    fixed order (explicit loops compile faster than array expressions); bias gradients come
    as (chunks, 1, C_out, 1)."""
    n_chunks, groups, k_size = partial.shape[0], partial.shape[1], partial.shape[3]
    c_out_g = c_out // groups
    grad_w = np.empty((c_out, k_size), dtype=partial.dtype)
    for co in range(c_out):
        g, m = co // c_out_g, co % c_out_g
        for k in range(k_size):
            total = partial[0, g, m, k]
            for chunk in range(1, n_chunks):
                total += partial[chunk, g, m, k]
            grad_w[co, k] = total
    return grad_w


@njit(inline="always")
def _interleave(src, n0, c0, n_chan, buf):
    """buf[c, p * LANES + l] = src[n0 + l, c0 + c] flattened at p, for c < n_chan (lanes past
    the batch get zeros).

    By squares of W samples x W pixels (W = simd.width), transposed in registers: rows of a
    sample's plane in, runs of W lanes out, every access a vector."""
    w = simd.width(buf[0])
    size = src.shape[2] * src.shape[3]
    planes = src.reshape(src.shape[0], src.shape[1], size)
    block = np.empty(w * w, dtype=buf.dtype)
    for c in range(n_chan):
        dst = buf[c]
        for lane0 in range(0, LANES, w):
            for p0 in range(0, size, w):
                count = min(w, size - p0)
                for lane in range(w):
                    n = n0 + lane0 + lane
                    if n < src.shape[0]:
                        values = simd.load_first(planes[n, c0 + c], p0, count)
                    else:
                        values = simd.load_first(block, 0, 0)  # zeros
                    simd.store_first(block, lane * w, values, w)
                simd.transpose(block)
                for q in range(count):
                    simd.store_first(dst, (p0 + q) * LANES + lane0,
                                     simd.load_first(block, q * w, w), w)


@njit(inline="always")
def _deinterleave(buf, n0, c0, n_chan, dst):
    """The inverse of :func:`_interleave`: dst[n0 + l, c0 + c] from buf's lanes."""
    w = simd.width(buf[0])
    size = dst.shape[2] * dst.shape[3]
    planes = dst.reshape(dst.shape[0], dst.shape[1], size)
    block = np.empty(w * w, dtype=buf.dtype)
    for c in range(n_chan):
        src = buf[c]
        for lane0 in range(0, min(LANES, dst.shape[0] - n0), w):
            for p0 in range(0, size, w):
                count = min(w, size - p0)
                for q in range(w):
                    simd.store_first(block, q * w,
                                     simd.load_first(src, (p0 + q) * LANES + lane0,
                                                     w if q < count else 0), w)
                simd.transpose(block)
                for lane in range(min(w, dst.shape[0] - n0 - lane0)):
                    simd.store_first(planes[n0 + lane0 + lane, c0 + c], p0,
                                     simd.load_first(block, lane * w, w), count)


@njit(cache=True, fastmath=_FAST)
def _forward_lanes(xp, weights, b, chan, offset, stride_h, n0, g, y):
    """y[n0:n0 + LANES, group g] for :func:`conv2d_forward_lanes`."""
    c_out_g, k_size = weights.shape
    c_in_g = chan[-1] + 1
    hp, wp = xp.shape[2], xp.shape[3]
    out_h, out_w = y.shape[2], y.shape[3]
    buf = np.zeros((c_in_g, hp * wp * LANES), dtype=xp.dtype)
    _interleave(xp, n0, g * c_in_g, c_in_g, buf)
    out = np.empty((c_out_g, out_h * out_w * LANES), dtype=xp.dtype)
    for m in range(c_out_g):  # start from the bias: no add in the copy-out
        out[m].fill(b[g * c_out_g + m])
    row = out_w * LANES
    for oh in range(out_h):
        _shifted_matmul_acc(weights, buf, chan, offset, oh * stride_h * wp * LANES, out,
                            oh * row, row)
    _deinterleave(out, n0, g * c_out_g, c_out_g, y)


@njit(parallel=True, cache=True)
def conv2d_forward_lanes(xp, w, b, stride_h, dilation_h, dilation_w, groups, out_h, out_w):
    """:func:`conv2d_forward` (column stride 1) for narrow images, without scratch columns.

    LANES samples are interleaved pixel by pixel, so that one output row of all of them,
    ``out_w * LANES`` values, is contiguous and every kernel tap is again a shifted slice
    (``LANES`` times the flat offset): the product runs over real outputs only.
    """
    n_batch, c_in, hp, wp = xp.shape
    c_out, c_in_g, kh_size, kw_size = w.shape
    weights = _grouped_weights(w, groups)
    chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
    offset *= LANES
    n_blocks = (n_batch + LANES - 1) // LANES
    y = np.empty((n_batch, c_out, out_h, out_w), dtype=xp.dtype)
    for job in prange(n_blocks * groups):
        g = job % groups
        _forward_lanes(xp, weights[g], b, chan, offset, stride_h, job // groups * LANES, g, y)
    return y


@njit(cache=True, fastmath=_FAST)
def _weight_grad_lanes(gy, xp, chan, offset, stride_h, n0, g, partial, partial_bias):
    """partial (C_out_g, K) += the weight gradient of samples n0:n0 + LANES, group g;
    partial_bias (C_out_g,) = their bias gradient."""
    c_in_g = chan[-1] + 1
    c_out_g = gy.shape[1] * c_in_g // xp.shape[1]
    hp, wp = xp.shape[2], xp.shape[3]
    out_h, out_w = gy.shape[2], gy.shape[3]
    buf = np.zeros((c_in_g, hp * wp * LANES), dtype=xp.dtype)
    _interleave(xp, n0, g * c_in_g, c_in_g, buf)
    grads = np.zeros((c_out_g, out_h * out_w * LANES), dtype=xp.dtype)
    _interleave(gy, n0, g * c_out_g, c_out_g, grads)
    zero = gy.dtype.type(0)
    for m in range(c_out_g):  # from the interleaved copy, in L2 (empty lanes are zeros)
        total = zero
        for p in range(grads.shape[1]):
            total += grads[m, p]
        partial_bias[m] = total
    acc = np.zeros((c_out_g, chan.shape[0] * simd.width(grads[0])), dtype=xp.dtype)
    row = out_w * LANES
    for oh in range(0, out_h, WEIGHT_GRAD_ROWS):  # rows of a and the taps' rows in L1
        _abt_lanes_acc(grads, buf, chan, offset, acc, oh * row, oh * stride_h * wp * LANES,
                       min(WEIGHT_GRAD_ROWS, out_h - oh), row, stride_h * wp * LANES, row)
    _add_lane_sums(acc, partial)


@njit(parallel=True, cache=True)
def conv2d_weight_grad_lanes(gy, xp, kh_size, kw_size, stride_h, dilation_h, dilation_w,
                             groups):
    """:func:`conv2d_weight_grad` (column stride 1) on the interleaved layout of
    :func:`conv2d_forward_lanes`, ``(grad_w, grad_b)``; one partial sum per block of LANES
    samples."""
    n_batch, c_in, hp, wp = xp.shape
    c_out = gy.shape[1]
    c_in_g = c_in // groups
    c_out_g = c_out // groups
    chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
    offset *= LANES
    n_blocks = (n_batch + LANES - 1) // LANES
    partial, partial_bias = _zero_partials(n_blocks, groups, c_out, chan.shape[0], xp)
    for job in prange(n_blocks * groups):
        blk, g = job // groups, job % groups
        _weight_grad_lanes(gy, xp, chan, offset, stride_h, blk * LANES, g, partial[blk, g],
                           partial_bias[blk, 0, g * c_out_g:(g + 1) * c_out_g, 0])
    return _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size)


@njit(cache=True, fastmath=_FAST)
def _input_grad_lanes(gy, wt, stride_h, dilation_h, dilation_w, n0, g, grad_xp):
    """grad_xp[n0:n0 + LANES, group g] for :func:`conv2d_input_grad_lanes`."""
    kh_size, kw_size, c_in_g, c_out_g = wt.shape
    hp, wp = grad_xp.shape[2], grad_xp.shape[3]
    out_h, out_w = gy.shape[2], gy.shape[3]
    grads = np.zeros((c_out_g, out_h * out_w * LANES), dtype=gy.dtype)
    _interleave(gy, n0, g * c_out_g, c_out_g, grads)
    chan = np.arange(c_out_g)  # the rows of grads, unshifted
    offset = np.zeros(c_out_g, dtype=np.int64)
    acc = np.zeros((c_in_g, hp * wp * LANES), dtype=gy.dtype)
    row = out_w * LANES
    for oh in range(out_h):
        for kh in range(kh_size):
            dst_row = (oh * stride_h + kh * dilation_h) * wp
            for kw in range(kw_size):
                _shifted_matmul_acc(wt[kh, kw], grads, chan, offset, oh * row, acc,
                                    (dst_row + kw * dilation_w) * LANES, row)
    _deinterleave(acc, n0, g * c_in_g, c_in_g, grad_xp)


@njit(parallel=True, cache=True)
def conv2d_input_grad_lanes(gy, wt, hp, wp, stride_h, dilation_h, dilation_w):
    """Gradient of the padded input (N, C_in, hp, wp), column stride 1, for narrow images.

    On the interleaved layout of :func:`conv2d_forward_lanes`, each row of gy is scattered
    into the input rows it came from: per kernel tap, a product of the (C_in_g, C_out_g)
    weight slice with the row, added at the tap's shift. Unlike a convolution of the padded
    gradient, it multiplies no padding zeros. wt: the weight as (groups, KH, KW, C_in_g,
    C_out_g), one contiguous matrix per group and tap.
    """
    n_batch = gy.shape[0]
    groups, c_in_g = wt.shape[0], wt.shape[3]
    n_blocks = (n_batch + LANES - 1) // LANES
    grad_xp = np.empty((n_batch, c_in_g * groups, hp, wp), dtype=gy.dtype)
    for job in prange(n_blocks * groups):
        g = job % groups
        _input_grad_lanes(gy, wt[g], stride_h, dilation_h, dilation_w, job // groups * LANES, g,
                          grad_xp)
    return grad_xp


@njit(parallel=True, cache=True)
def conv2d_backward_direct(gy, xp, w, stride_h, stride_w, dilation_h, dilation_w, groups):
    """(grad_xp, grad_w, grad_b) by plain loops over the real windows only.

    For inputs holding inf or NaN: the fast kernels multiply scratch zeros with every input
    value, and ``0 * inf`` would put NaN where PyTorch has none.
    """
    n_batch, c_in, hp, wp = xp.shape
    c_out, c_in_g, kh_size, kw_size = w.shape
    out_h, out_w = gy.shape[2], gy.shape[3]
    c_out_g = c_out // groups
    grad_w = np.zeros_like(w)
    for job in prange(c_out * c_in_g):
        co = job // c_in_g
        ci = job % c_in_g
        cx = (co // c_out_g) * c_in_g + ci
        for kh in range(kh_size):
            for kw in range(kw_size):
                for n in range(n_batch):
                    for oh in range(out_h):
                        ih = oh * stride_h + kh * dilation_h
                        for ow in range(out_w):
                            grad_w[co, ci, kh, kw] += gy[n, co, oh, ow] * xp[
                                n, cx, ih, ow * stride_w + kw * dilation_w]
    grad_xp = np.zeros_like(xp)
    for job in prange(n_batch * c_in):
        n = job // c_in
        cx = job % c_in
        ci = cx % c_in_g
        for co in range((cx // c_in_g) * c_out_g, (cx // c_in_g + 1) * c_out_g):
            for kh in range(kh_size):
                for kw in range(kw_size):
                    weight = w[co, ci, kh, kw]
                    for oh in range(out_h):
                        ih = oh * stride_h + kh * dilation_h
                        for ow in range(out_w):
                            grad_xp[n, cx, ih, ow * stride_w + kw * dilation_w] += \
                                weight * gy[n, co, oh, ow]
    grad_b = np.zeros(c_out, dtype=gy.dtype)
    for co in prange(c_out):
        for n in range(n_batch):
            for oh in range(out_h):
                for ow in range(out_w):
                    grad_b[co] += gy[n, co, oh, ow]
    return grad_xp, grad_w, grad_b


@njit(parallel=True, cache=True)
def _place_planes(src, out_h, out_w, src_r0, n_rows, dst_r0, row_step, src_c0, n_cols, dst_c0,
                  col_step):
    """(out, finite) for :func:`place`: one plane per parallel task, zeroed and filled while
    it is in cache, and whether the placed values are all finite."""
    n_batch, channels = src.shape[0], src.shape[1]
    out = np.empty((n_batch, channels, out_h, out_w), dtype=src.dtype)
    flat = out.reshape(n_batch * channels, out_h * out_w)
    bad = np.zeros(n_batch * channels, dtype=np.bool_)
    zero = src.dtype.type(0)
    for plane in prange(n_batch * channels):
        n, c = plane // channels, plane % channels
        dst = flat[plane]
        for p in range(out_h * out_w):
            dst[p] = zero
        not_finite = False
        for i in range(n_rows):
            row = src[n, c, src_r0 + i, src_c0:src_c0 + n_cols]
            base = (dst_r0 + i * row_step) * out_w + dst_c0
            if col_step == 1:  # a contiguous copy, vectorised
                dst_row = dst[base:base + n_cols]
                for j in range(n_cols):
                    value = row[j]
                    dst_row[j] = value
                    not_finite |= (value - value) != (value - value)  # inf and NaN: NaN
            else:
                for j in range(n_cols):
                    value = row[j]
                    dst[base + j * col_step] = value
                    not_finite |= (value - value) != (value - value)
        bad[plane] = not_finite
    return out, not bad.any()


PLACE_IN_PARALLEL = 1 << 20  # output values from which place() runs _place_planes; below, NumPy


def place(src, out_h, out_w, rows, cols, check_finite=False):
    """An (N, C, out_h, out_w) array of zeros with ``src[:, :, rows[1], cols[1]]`` at
    ``[:, :, rows[0], cols[0]]`` (destination and source slices as :func:`_placement` gives
    them; the padded input, or grad_y spread onto a stride grid), and, with ``check_finite``,
    whether those values are all finite (else None).

    Large arrays take one parallel pass (a serial zero-fill and copy of the 64-channel
    layer's 27 MB input cost about 6 ms); small ones NumPy's."""
    (dst_rows, src_rows), (dst_cols, src_cols) = rows, cols
    n_rows = max(0, src_rows.stop - src_rows.start)
    n_cols = max(0, src_cols.stop - src_cols.start)
    if src.shape[0] * src.shape[1] * out_h * out_w >= PLACE_IN_PARALLEL:
        out, finite = _place_planes(np.ascontiguousarray(src), out_h, out_w, src_rows.start,
                                    n_rows, dst_rows.start, dst_rows.step or 1,
                                    src_cols.start, n_cols, dst_cols.start,
                                    dst_cols.step or 1)
        return out, finite if check_finite else None
    out = np.zeros(src.shape[:2] + (out_h, out_w), dtype=src.dtype)
    values = src[:, :, src_rows, src_cols]
    out[:, :, dst_rows, dst_cols] = values
    return out, bool(np.isfinite(values).all()) if check_finite else None


def pad(x, padding, check_finite=False):
    """(xp, finite): ``x`` zero-padded by ``((top, bottom), (left, right))``, C-contiguous,
    and with ``check_finite`` whether x is all finite (else None)."""
    (top, bottom), (left, right) = padding
    if top == bottom == left == right == 0:
        xp = np.ascontiguousarray(x)
        return xp, bool(np.isfinite(xp).all()) if check_finite else None
    height, width = x.shape[2], x.shape[3]
    return place(x, height + top + bottom, width + left + right,
                 (slice(top, top + height, 1), slice(0, height)),
                 (slice(left, left + width, 1), slice(0, width)), check_finite)


def use_lanes(padded_shape, itemsize, stride_w, groups, out_w):
    """Whether the interleaved-samples kernels pay: unit column stride, at least a fifth of
    the padded-width grid's columns scratch, no more lanes computed (the last block's empty
    ones included) than the padded-width grid would compute columns (small batches), and one
    block's interleaved input (LANES samples of one group) within 1 MiB, i.e. in L2."""
    n, c_in_g, hp, wp = padded_shape[0], padded_shape[1] // groups, padded_shape[2], padded_shape[3]
    return (stride_w == 1 and (wp - out_w) * 5 >= wp
            and -(-n // LANES) * LANES * out_w <= n * wp
            and c_in_g * hp * wp * LANES * itemsize <= 1 << 20)


def forward(xp, w, b, stride, dilation, groups, out_h, out_w):
    """:func:`conv2d_forward` or, where :func:`use_lanes` says so, :func:`conv2d_forward_lanes`."""
    if use_lanes(xp.shape, xp.itemsize, stride[1], groups, out_w):
        return conv2d_forward_lanes(xp, w, b, stride[0], *dilation, groups, out_h, out_w)
    return conv2d_forward(xp, w, b, *stride, *dilation, groups, out_h, out_w)


def weight_grad_from_rows(weight_shape, stride_w, groups):
    """Whether a layer's weight gradient takes :func:`conv2d_weight_grad_rows` (outside the
    narrow-image kernels): unit column stride and few enough weights per group that their
    lane sums (W per weight) stay in L1 (LeNet's first layer: 6 x 25)."""
    c_out, c_in_g, kh, kw = weight_shape
    return stride_w == 1 and c_out // groups * c_in_g * kh * kw * simd.VECTOR_BYTES <= \
        ROWS_ACC_BYTES


def weight_grad(gy, xp, kernel, stride, dilation, groups):
    """``(grad_w, grad_b)`` by :func:`conv2d_weight_grad_lanes` where :func:`use_lanes` says
    so, else by :func:`conv2d_weight_grad_rows` where :func:`weight_grad_from_rows` does, else
    by :func:`conv2d_weight_grad`."""
    if use_lanes(xp.shape, xp.itemsize, stride[1], groups, gy.shape[3]):
        return conv2d_weight_grad_lanes(gy, xp, *kernel, stride[0], *dilation, groups)
    weight_shape = (gy.shape[1], xp.shape[1] // groups) + tuple(kernel)
    if weight_grad_from_rows(weight_shape, stride[1], groups):
        return conv2d_weight_grad_rows(gy, xp, *kernel, stride[0], *dilation, groups)
    return conv2d_weight_grad(gy, xp, *kernel, *stride, *dilation, groups)


def transposed_weights(w, groups):
    """The kernel that maps an output gradient back to the input: per group, w with its two
    channel axes swapped and flipped in both spatial axes. Shape (C_in, C_out // groups, KH, KW).
    """
    c_out, c_in_g, kh, kw = w.shape
    c_out_g = c_out // groups
    wt = w.reshape(groups, c_out_g, c_in_g, kh, kw).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(wt[..., ::-1, ::-1].reshape(groups * c_in_g, c_out_g, kh, kw))


def _placement(offset, stride, count, length):
    """Where ``count`` values go when value ``o`` goes to ``offset + o * stride`` and only
    positions in ``[0, length)`` are kept: (destination slice, source slice)."""
    first = max(0, -(offset // stride))  # the first o with offset + o * stride >= 0
    last = min(count, (length - 1 - offset) // stride + 1) if length > offset else 0
    if last <= first:
        return slice(0, 0), slice(0, 0)
    return slice(offset + first * stride, offset + (last - 1) * stride + 1, stride), \
        slice(first, last)


def conv2d_input_grad(gy, w, input_shape, padding, stride, dilation, groups):
    """Gradient of the (unpadded) input, shape ``input_shape`` (N, C_in, H, W); padding
    ``((top, bottom), (left, right))``.

    By :func:`conv2d_input_grad_lanes` where :func:`use_lanes` says so (on the padded grid,
    then cropped); else as a stride-1 convolution of gy with :func:`transposed_weights`: gy
    spread onto the stride grid (zeros between) inside a frame of the dilated kernel's
    reach, shifted by the padding and cut to the H + reach rows (W + reach columns) whose
    windows cover the input, so that the convolution computes the input's rows and columns
    only (none of the padding's).
    """
    n_batch, c_out, out_h, out_w = gy.shape
    c_in, height, width = input_shape[1], input_shape[2], input_shape[3]
    kh, kw = w.shape[2], w.shape[3]
    (top, bottom), (left, right) = padding
    hp, wp = height + top + bottom, width + left + right
    if use_lanes((n_batch, c_in, hp, wp), gy.itemsize, stride[1], groups, out_w):
        c_out_g, c_in_g = c_out // groups, w.shape[1]
        wt = w.reshape(groups, c_out_g, c_in_g, kh, kw).transpose(0, 3, 4, 2, 1)
        grad_xp = conv2d_input_grad_lanes(gy, np.ascontiguousarray(wt), hp, wp, stride[0],
                                          *dilation)
        return np.ascontiguousarray(grad_xp[:, :, top:top + height, left:left + width])
    reach_h, reach_w = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
    dst_rows, src_rows = _placement(reach_h - top, stride[0], out_h, height + reach_h)
    dst_cols, src_cols = _placement(reach_w - left, stride[1], out_w, width + reach_w)
    spread, _ = place(gy, height + reach_h, width + reach_w, (dst_rows, src_rows),
                      (dst_cols, src_cols))
    return forward(spread, transposed_weights(w, groups), np.zeros(c_in, gy.dtype), (1, 1),
                   dilation, groups, height, width)
