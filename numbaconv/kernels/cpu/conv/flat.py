"""The padded-width kernels: the convolution's outputs on the flat stride-1 grid.

Inputs arrive padded and C-contiguous: xp (N, C_in, Hp, Wp), w (C_out, C_in // groups, KH,
KW), y (N, C_out, OH, OW). Outputs are computed on the flat grid ``Wp`` wide (the ``Wp - OW``
extra columns per row are scratch), at stride 1; a strided convolution keeps every stride-th
row and column of it. The forward is the product of :func:`.tiles._shifted_matmul_acc` per
block of output rows; the weight gradient either copies gy onto the flat grid
(:func:`conv2d_weight_grad`) or, for layers with few weights, reads gy's rows where they are
(:func:`conv2d_weight_grad_rows`, where :func:`weight_grad_from_rows` says so).

Parallel loops only ever write to memory that one iteration owns (a block of an output plane,
or one batch chunk's partial weight gradient), so results do not depend on the number of
threads.
"""

import functools

import numpy as np
from numba import njit, prange

from .. import simd
from ..jobs import INT, INTS, Job, array
from .common import FAST, _grouped_weights, _sum_partials, _taps, _zero_partials
from .tiles import (
    ZERO,
    _abt6_lanes_acc,
    _abt_acc,
    _abt_lanes_acc,
    _add_lane_sums,
    shifted_products_acc,
    six_row_tiles,
)

OUT_BUFFER = 65536  # elements of one block's output rows: 256 KiB of float32, L2-resident
WEIGHT_GRAD_CHUNKS = 32  # batch chunks with their own weight-gradient sums
ROWS_ACC_BYTES = 16384  # the most lane sums (bytes) for which the weight gradient reads gy's rows
TASKS = 64  # parallel tasks of the forward (each with its scratch block): a few per thread


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
    src = xflat[n, g * c_in_g:(g + 1) * c_in_g]
    shifted_products_acc(weights, src, chan, offset, base, out, ZERO, length)


@njit(cache=True, fastmath=FAST)
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
            if stride_w == 1:
                simd.copy_run(src, base, dst, 0, out_w)
            else:
                for ow in range(out_w):
                    dst[ow] = src[base + ow * stride_w]


# The parallel kernels below call one function per job, passed in as a Job (see
# numbaconv.kernels.cpu.jobs): compiled once on its own, not linked into the kernel.

@njit(parallel=True, cache=True)
def conv2d_forward(xp, w, b, stride_h, stride_w, dilation_h, dilation_w, groups, out_h, out_w,
                   job):
    """Convolution of a padded input; returns y of shape (N, C_out, out_h, out_w).
    ``job``: :func:`forward_job` of the dtype."""
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
        for j in range(task * n_jobs // n_tasks, (task + 1) * n_jobs // n_tasks):
            n = np.int64(j // (groups * n_blocks))
            g = np.int64(j // n_blocks % groups)
            row0 = np.int64(j % n_blocks * rows)
            job(xflat, weights[g], b, chan, offset, stride_h, stride_w, wp, n, g, row0,
                min(rows, dense_h - row0), dense_w, y, out)
    return y


@functools.cache
def forward_job(dtype) -> Job:
    """The job of :func:`conv2d_forward` for arrays of ``dtype``."""
    a2, a4 = array(dtype, 2), array(dtype, 4)
    return Job(_forward_block, (array(dtype, 3), a2, array(dtype, 1), INTS, INTS, INT, INT, INT,
                                INT, INT, INT, INT, INT, a4, a2))


@njit(cache=True, fastmath=FAST)
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
            _abt_acc(grads, src, chan, offset, partial, ZERO, row0 * wp, np.int64(1), ZERO,
                     ZERO, (n_rows - 1) * wp + dense_w)


@njit(inline="always")
def rows_sample_acc(a, src, chan, offset, out_h, out_w, row_step, acc, partial_bias):
    """The weight gradient of one sample and group at column stride 1 from its gradient's
    rows ``a`` (C_out_g, out_h * out_w) where they are and its input planes ``src`` (C_in_g,
    Hp * Wp), the taps' rows ``row_step`` apart: partial_bias (C_out_g,) += the sums of a's
    rows, acc (C_out_g, K * W) += the lane sums of :func:`.tiles._abt_lanes_acc`."""
    c_out_g = a.shape[0]
    zero = a.dtype.type(0)
    for m in range(c_out_g):
        total = zero
        for p in range(out_h * out_w):
            total += a[m, p]
        partial_bias[m] += total
    if six_row_tiles(c_out_g):
        _abt6_lanes_acc(a, src, chan, offset, acc, ZERO, ZERO, out_h, out_w, row_step, out_w)
    else:
        _abt_lanes_acc(a, src, chan, offset, acc, ZERO, ZERO, out_h, out_w, row_step, out_w)


@njit(cache=True, fastmath=FAST)
def _weight_grad_rows(gy, xflat, chan, offset, stride_h, wp, n_start, n_stop, g, partial,
                      partial_bias):
    """:func:`_weight_grad_chunk` at column stride 1 straight from gy's rows (no copy onto the
    flat grid); the lanes' sums of all the chunk's samples kept in an L1-sized buffer."""
    c_out_g = partial_bias.shape[0]
    c_in_g = chan[-1] + 1
    out_h, out_w = gy.shape[2], gy.shape[3]
    acc = np.zeros((c_out_g, chan.shape[0] * simd.width(xflat[0, 0])), dtype=xflat.dtype)
    for n in range(n_start, n_stop):
        rows_sample_acc(gy[n, g * c_out_g:(g + 1) * c_out_g].reshape(c_out_g, out_h * out_w),
                        xflat[n, g * c_in_g:(g + 1) * c_in_g], chan, offset, out_h, out_w,
                        stride_h * wp, acc, partial_bias)
    _add_lane_sums(acc, partial)


@njit(parallel=True, cache=True)
def conv2d_weight_grad(gy, xp, kh_size, kw_size, stride_h, stride_w, dilation_h, dilation_w,
                       groups, job):
    """Gradients of the weight, (C_out, C_in // groups, kh_size, kw_size), and of the bias,
    (C_out,): ``(grad_w, grad_b)``; ``job``: :func:`weight_grad_job` of the dtype.

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
    for part in prange(n_chunks * groups):
        chunk, g = np.int64(part // groups), np.int64(part % groups)
        job(gy, xflat, chan, offset, stride_h, stride_w, wp, chunk * n_batch // n_chunks,
            (chunk + 1) * n_batch // n_chunks, g, rows, dense_h, dense_w, partial[chunk, g],
            partial_bias[chunk, 0, g * c_out_g:(g + 1) * c_out_g, 0])
    return _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size)


@functools.cache
def weight_grad_job(dtype) -> Job:
    """The job of :func:`conv2d_weight_grad` for arrays of ``dtype``."""
    return Job(_weight_grad_chunk, (array(dtype, 4), array(dtype, 3), INTS, INTS) + (INT,) * 9
               + (array(dtype, 2), array(dtype, 1, "A")))


@njit(parallel=True, cache=True)
def conv2d_weight_grad_rows(gy, xp, kh_size, kw_size, stride_h, dilation_h, dilation_w, groups,
                            job):
    """:func:`conv2d_weight_grad` (column stride 1) for layers with few weights (where
    :func:`weight_grad_from_rows` says so): the products read gy's rows where they are.
    ``job``: :func:`weight_grad_rows_job` of the dtype."""
    n_batch, c_in, hp, wp = xp.shape
    c_out = gy.shape[1]
    c_in_g = c_in // groups
    c_out_g = c_out // groups
    chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
    xflat = xp.reshape(n_batch, c_in, hp * wp)
    n_chunks = min(n_batch, WEIGHT_GRAD_CHUNKS)
    partial, partial_bias = _zero_partials(n_chunks, groups, c_out, chan.shape[0], xp)
    for part in prange(n_chunks * groups):
        chunk, g = np.int64(part // groups), np.int64(part % groups)
        job(gy, xflat, chan, offset, stride_h, wp, chunk * n_batch // n_chunks,
            (chunk + 1) * n_batch // n_chunks, g, partial[chunk, g],
            partial_bias[chunk, 0, g * c_out_g:(g + 1) * c_out_g, 0])
    return _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size)


@functools.cache
def weight_grad_rows_job(dtype) -> Job:
    """The job of :func:`conv2d_weight_grad_rows` for arrays of ``dtype``."""
    return Job(_weight_grad_rows, (array(dtype, 4), array(dtype, 3), INTS, INTS) + (INT,) * 5
               + (array(dtype, 2), array(dtype, 1, "A")))


def weight_grad_from_rows(weight_shape, stride_w, groups):
    """Whether a layer's weight gradient takes :func:`conv2d_weight_grad_rows` (outside the
    narrow-image kernels): unit column stride and few enough weights per group that their
    lane sums (W per weight) stay in L1 (LeNet's first layer: 6 x 25)."""
    c_out, c_in_g, kh, kw = weight_shape
    return stride_w == 1 and c_out // groups * c_in_g * kh * kw * simd.VECTOR_BYTES <= \
        ROWS_ACC_BYTES
