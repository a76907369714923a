"""The interleaved-samples kernels, for narrow images.

Where the padded-width grid's scratch columns are a large share (e.g. LeNet's 14-wide conv2
input with 10 outputs per row), LANES samples are interleaved pixel by pixel, so that one
output row of all of them is contiguous and holds real outputs only, and every kernel tap is
again a shifted slice (LANES times the flat offset). The input gradient is scattered from gy
instead of convolving its zero-padded copy. :func:`use_lanes` says where they pay.

Each parallel job owns a block of LANES samples of one group, so results do not depend on the
number of threads.
"""

import functools

import numpy as np
from numba import njit, prange

from .. import simd
from ..jobs import INT, INTS, Job, array
from ..layout import _move_square
from .common import FAST, _grouped_weights, _sum_partials, _taps, _zero_partials
from .tiles import _abt_lanes_acc, _add_lane_sums, shifted_products_acc

LANES = 32  # samples interleaved by the narrow-image kernels (rows of 32 x OW values)
WEIGHT_GRAD_ROWS = 5  # rows of LANES samples per pass of the weight-gradient tiles (1, 2, 10 slow)


@njit(cache=True)
def _interleave(src, n0, c0, n_chan, buf):
    """buf[c, p * LANES + l] = src[n0 + l, c0 + c] flattened at p, for c < n_chan; lanes
    past the batch are not written: a caller passes buf zeroed (np.zeros), for the kernels
    sum those lanes too.

    By squares of W samples x W pixels (W = simd.width) transposed in registers
    (:func:`..layout._move_square`): rows of a sample's plane in, runs of W lanes out."""
    w = simd.width(buf[0])
    n_batch, channels = src.shape[0], src.shape[1]
    size = src.shape[2] * src.shape[3]
    flat = src.reshape(src.size)
    square = np.empty(w * w, dtype=buf.dtype)
    for c in range(n_chan):
        for lane0 in range(0, min(LANES, n_batch - n0), w):
            for p0 in range(0, size, w):
                _move_square(flat, ((n0 + lane0) * channels + c0 + c) * size + p0,
                             channels * size, min(w, n_batch - n0 - lane0), min(w, size - p0),
                             buf[c], p0 * LANES + lane0, LANES, square)


@njit(cache=True)
def _deinterleave(buf, n0, c0, n_chan, dst):
    """The inverse of :func:`_interleave`: dst[n0 + l, c0 + c] from buf's lanes."""
    w = simd.width(buf[0])
    n_batch, channels = dst.shape[0], dst.shape[1]
    size = dst.shape[2] * dst.shape[3]
    flat = dst.reshape(dst.size)
    square = np.empty(w * w, dtype=buf.dtype)
    for c in range(n_chan):
        for lane0 in range(0, min(LANES, n_batch - n0), w):
            for p0 in range(0, size, w):
                _move_square(buf[c], p0 * LANES + lane0, LANES, min(w, size - p0),
                             min(w, n_batch - n0 - lane0), flat,
                             ((n0 + lane0) * channels + c0 + c) * size + p0, channels * size,
                             square)


@njit(cache=True, fastmath=FAST)
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
        shifted_products_acc(weights, buf, chan, offset, oh * stride_h * wp * LANES, out,
                             oh * row, row)
    _deinterleave(out, n0, g * c_out_g, c_out_g, y)


@njit(parallel=True, cache=True)
def conv2d_forward_lanes(xp, w, b, stride_h, dilation_h, dilation_w, groups, out_h, out_w,
                         job):
    """:func:`conv2d_forward` (column stride 1) for narrow images, without scratch columns;
    ``job``: :func:`forward_lanes_job` of the dtype.

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
    for block in prange(n_blocks * groups):
        g = np.int64(block % groups)
        job(xp, weights[g], b, chan, offset, stride_h, np.int64(block // groups * LANES), g, y)
    return y


@functools.cache
def forward_lanes_job(dtype) -> Job:
    """The job of :func:`conv2d_forward_lanes` for arrays of ``dtype``."""
    a1, a2, a4 = array(dtype, 1), array(dtype, 2), array(dtype, 4)
    return Job(_forward_lanes, (a4, a2, a1, INTS, INTS, INT, INT, INT, a4))


@njit(cache=True, fastmath=FAST)
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
    weight_grad_from_lanes(grads, buf, chan, offset, stride_h * wp * LANES, out_w, partial,
                           partial_bias)


@njit(inline="always")
def weight_grad_from_lanes(grads, buf, chan, offset, row_step, out_w, partial, partial_bias):
    """partial (C_out_g, K) += the weight gradient of a block of LANES samples from their
    gradient ``grads`` (C_out_g, out_h * out_w * LANES) and input ``buf`` (C_in_g, Hp * Wp *
    LANES), both interleaved, the taps' rows ``row_step`` apart; partial_bias (C_out_g,) =
    their bias gradient."""
    c_out_g = grads.shape[0]
    out_h = grads.shape[1] // (out_w * LANES)
    zero = grads.dtype.type(0)
    for m in range(c_out_g):  # from the interleaved copy, in L2 (empty lanes are zeros)
        total = zero
        for p in range(grads.shape[1]):
            total += grads[m, p]
        partial_bias[m] = total
    acc = np.zeros((c_out_g, chan.shape[0] * simd.width(grads[0])), dtype=grads.dtype)
    row = out_w * LANES
    for oh in range(0, out_h, WEIGHT_GRAD_ROWS):  # rows of a and the taps' rows in L1
        _abt_lanes_acc(grads, buf, chan, offset, acc, oh * row, oh * row_step,
                       min(WEIGHT_GRAD_ROWS, out_h - oh), row, row_step, row)
    _add_lane_sums(acc, partial)


@njit(parallel=True, cache=True)
def conv2d_weight_grad_lanes(gy, xp, kh_size, kw_size, stride_h, dilation_h, dilation_w,
                             groups, job):
    """:func:`conv2d_weight_grad` (column stride 1) on the interleaved layout of
    :func:`conv2d_forward_lanes`, ``(grad_w, grad_b)``; one partial sum per block of LANES
    samples. ``job``: :func:`weight_grad_lanes_job` of the dtype."""
    n_batch, c_in, hp, wp = xp.shape
    c_out = gy.shape[1]
    c_in_g = c_in // groups
    c_out_g = c_out // groups
    chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
    offset *= LANES
    n_blocks = (n_batch + LANES - 1) // LANES
    partial, partial_bias = _zero_partials(n_blocks, groups, c_out, chan.shape[0], xp)
    for block in prange(n_blocks * groups):
        blk, g = np.int64(block // groups), np.int64(block % groups)
        job(gy, xp, chan, offset, stride_h, blk * LANES, g, partial[blk, g],
            partial_bias[blk, 0, g * c_out_g:(g + 1) * c_out_g, 0])
    return _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size)


@functools.cache
def weight_grad_lanes_job(dtype) -> Job:
    """The job of :func:`conv2d_weight_grad_lanes` for arrays of ``dtype``."""
    a4 = array(dtype, 4)
    return Job(_weight_grad_lanes, (a4, a4, INTS, INTS, INT, INT, INT, array(dtype, 2),
                                    array(dtype, 1, "A")))


@njit(cache=True, fastmath=FAST)
def _input_grad_lanes(gy, wt, stride_h, dilation_h, dilation_w, n0, g, grad_xp):
    """grad_xp[n0:n0 + LANES, group g] for :func:`conv2d_input_grad_lanes`."""
    c_out_g = wt.shape[3]
    out_h, out_w = gy.shape[2], gy.shape[3]
    grads = np.zeros((c_out_g, out_h * out_w * LANES), dtype=gy.dtype)
    _interleave(gy, n0, g * c_out_g, c_out_g, grads)
    input_grad_from_lanes(grads, wt, stride_h, dilation_h, dilation_w, out_w, n0, g, grad_xp)


@njit(inline="always")
def input_grad_from_lanes(grads, wt, stride_h, dilation_h, dilation_w, out_w, n0, g, grad_xp):
    """grad_xp[n0:n0 + LANES, group g] from the block's gradient ``grads`` (C_out_g, out_h *
    out_w * LANES), interleaved, for :func:`conv2d_input_grad_lanes`: each of its rows
    scattered into the input rows it came from."""
    kh_size, kw_size, c_in_g, c_out_g = wt.shape
    hp, wp = grad_xp.shape[2], grad_xp.shape[3]
    out_h = grads.shape[1] // (out_w * LANES)
    chan = np.arange(c_out_g)  # the rows of grads, unshifted
    offset = np.zeros(c_out_g, dtype=np.int64)
    acc = np.zeros((c_in_g, hp * wp * LANES), dtype=grads.dtype)
    row = out_w * LANES
    for oh in range(out_h):
        for kh in range(kh_size):
            dst_row = (oh * stride_h + kh * dilation_h) * wp
            for kw in range(kw_size):
                shifted_products_acc(wt[kh, kw], grads, chan, offset, oh * row, acc,
                                     (dst_row + kw * dilation_w) * LANES, row)
    _deinterleave(acc, n0, g * c_in_g, c_in_g, grad_xp)


@njit(parallel=True, cache=True)
def conv2d_input_grad_lanes(gy, wt, hp, wp, stride_h, dilation_h, dilation_w, job):
    """Gradient of the padded input (N, C_in, hp, wp), column stride 1, for narrow images;
    ``job``: :func:`input_grad_lanes_job` of the dtype.

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
    for block in prange(n_blocks * groups):
        g = np.int64(block % groups)
        job(gy, wt[g], stride_h, dilation_h, dilation_w, np.int64(block // groups * LANES), g,
            grad_xp)
    return grad_xp


@functools.cache
def input_grad_lanes_job(dtype) -> Job:
    """The job of :func:`conv2d_input_grad_lanes` for arrays of ``dtype``."""
    a4 = array(dtype, 4)
    return Job(_input_grad_lanes, (a4, a4, INT, INT, INT, INT, INT, a4))


def use_lanes(padded_shape, itemsize, stride_w, groups, out_w):
    """Whether the interleaved-samples kernels pay: unit column stride, at least a fifth of
    the padded-width grid's columns scratch, no more lanes computed (the last block's empty
    ones included) than the padded-width grid would compute columns (small batches), and one
    block's interleaved input (LANES samples of one group) within 1 MiB, i.e. in L2."""
    n, c_in_g, hp, wp = padded_shape[0], padded_shape[1] // groups, padded_shape[2], padded_shape[3]
    return (stride_w == 1 and (wp - out_w) * 5 >= wp
            and -(-n // LANES) * LANES * out_w <= n * wp
            and c_in_g * hp * wp * LANES * itemsize <= 1 << 20)
