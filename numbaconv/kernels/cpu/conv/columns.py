"""The column kernels: convolution as matrix products over im2col columns, for layers with
many channels on small maps (ResNet's 3x3 layers), where the flat grid's vectors would run
mostly over padding columns or over the few pixels of one sample.

The receptive fields of a chunk of samples are copied into columns, ``cols (K, P)`` with
``K = C_in * KH * KW`` in weight order and ``P = samples x OH x OW`` (samples one after the
other, so a 1x1 map still fills whole vectors), zeros where a field reaches into the padding.
Then, by the register tiles of :func:`.tiles._shifted_matmul_acc`:

    forward:       y      (C_out, P) = w (C_out, K) @ cols
    weight grad:   grad_w (C_out, K) = gy (C_out, P) @ cols.T  (the columns built transposed)
    input grad:    gcols  (K, P)     = w.T (K, C_out) @ gy, added onto the input (col2im)

Inputs are the unpadded x (N, C_in, H, W) and the padding's top and left; every product is
a term of the convolution's sum (no scratch positions), so inf and NaN propagate as they do
in the sums themselves. Groups of 1 only (:func:`use_columns`).

Every parallel task owns what it writes (a block of outputs, a block of weight-gradient
columns, a chunk of samples' input-gradient channels) and sums in a fixed order, so results
do not depend on the number of threads.
"""

import functools

import numpy as np
from numba import njit, prange

from .. import simd
from ..jobs import INT, INTS, Job, array
from .common import FAST
from .tiles import ZERO, _abt_acc, _gemm_acc

COLS_BYTES = 1 << 20  # one chunk's columns: 1 MiB, L2-resident while the product reads them
MIN_TASKS = 8  # split output channels (forward, input grad) until there are this many tasks
MIN_K = 256  # the fewest weights per output channel for which the column kernels pay
K_BLOCK = 64  # taps per block of the products (:func:`.tiles._gemm_acc`)
GOOD_FILL = 0.9  # the share of a chunk's vector lanes holding pixels that is good enough


def use_columns(weight_shape, groups):
    """Whether a convolution takes the column kernels: groups of 1 and at least
    :data:`MIN_K` weights per output channel (ResNet-18's 3x3 layers: 576 and more)."""
    c_in_g, kh, kw = weight_shape[1], weight_shape[2], weight_shape[3]
    return groups == 1 and c_in_g * kh * kw >= MIN_K


@njit(cache=True)
def _chunk_samples(k_size, ohw, itemsize, n_batch, tile):
    """Samples per chunk of columns. Its pixels fill the product's tiles (``tile`` pixels
    wide) as well as they can: the fewest samples that fill GOOD_FILL of the lanes, within
    twice COLS_BYTES of columns, else the best fill within COLS_BYTES (at least one tile)."""
    least = min(n_batch, -(-tile // ohw))
    most = min(n_batch, max(least, 2 * COLS_BYTES // (itemsize * k_size * ohw)))
    best, best_fill = least, 0.0
    for samples in range(least, most + 1):
        pixels = samples * ohw
        fill = pixels / (-(-pixels // tile) * tile)
        if fill >= GOOD_FILL:
            return samples
        if fill > best_fill and samples * ohw * k_size * itemsize <= COLS_BYTES:
            best, best_fill = samples, fill
    return best


@njit(cache=True)
def _row_blocks(rows, n_chunks):
    """(rows per block, blocks): blocks of a multiple of 4 rows, enough of them that
    n_chunks x blocks reaches MIN_TASKS where there are rows for it (at least 16 a block)."""
    blocks = max(1, min(-(-MIN_TASKS // n_chunks), rows // 16))
    per_block = -(-rows // blocks)
    per_block = -(-per_block // 4) * 4
    return per_block, -(-rows // per_block)


@njit(inline="always")
def _span(o_size, stride, tap, pad, size):
    """The outputs o in [lo, hi) whose input position o * stride + tap - pad is in [0, size)."""
    lo = 0
    if tap < pad:
        lo = min(o_size, -(-(pad - tap) // stride))
    last = size - 1 + pad - tap  # o * stride <= last
    hi = min(o_size, last // stride + 1) if last >= 0 else 0
    return lo, max(lo, hi)


@njit(inline="always")
def _copy(dst, d0, src, s0, n):
    """dst[d0:d0 + n] = src[s0:s0 + n], by vectors."""
    w = simd.width(dst)
    for i in range(0, n, w):
        simd.store_first(dst, d0 + i, simd.load_first(src, s0 + i, n - i), n - i)


@njit(inline="always")
def _fill_zeros(dst, d0, n):
    """dst[d0:d0 + n] = 0, by vectors."""
    w = simd.width(dst)
    zeros = simd.splat(dst, 0)
    for i in range(0, n, w):
        simd.store_first(dst, d0 + i, zeros, n - i)


@njit(inline="always")
def _add(dst, d0, src, s0, n):
    """dst[d0:d0 + n] += src[s0:s0 + n], by vectors."""
    w = simd.width(dst)
    one = simd.splat(dst, 1)
    for i in range(0, n, w):
        simd.store_first(dst, d0 + i, simd.fma(one, simd.load_first(src, s0 + i, n - i),
                                               simd.load_first(dst, d0 + i, n - i)), n - i)


@njit(cache=True)
def _im2col(x, n0, n1, c0, c1, kh_size, kw_size, stride_h, stride_w, dilation_h, dilation_w,
            top, left, out_h, out_w, cols):
    """cols[k, (n - n0) * OH * OW + oh * OW + ow] = x[n, c, oh * sh + kh * dh - top,
    ow * sw + kw * dw - left], zero outside x, for samples n0:n1 and channels c0:c1;
    k = (c - c0, kh, kw) in weight order. Runs of a row are copied by vectors."""
    height, width = x.shape[2], x.shape[3]
    ohw = out_h * out_w
    for c in range(c0, c1):
        for kh in range(kh_size):
            oh_lo, oh_hi = _span(out_h, stride_h, kh * dilation_h, top, height)
            for kw in range(kw_size):
                ow_lo, ow_hi = _span(out_w, stride_w, kw * dilation_w, left, width)
                row = cols[((c - c0) * kh_size + kh) * kw_size + kw]
                col0 = kw * dilation_w - left
                for n in range(n0, n1):
                    base = (n - n0) * ohw
                    plane = x[n, c]
                    _fill_zeros(row, base, oh_lo * out_w)
                    for oh in range(oh_lo, oh_hi):
                        q = base + oh * out_w
                        src = plane[oh * stride_h + kh * dilation_h - top]
                        _fill_zeros(row, q, ow_lo)
                        if stride_w == 1:
                            _copy(row, q + ow_lo, src, col0 + ow_lo, ow_hi - ow_lo)
                        else:
                            for ow in range(ow_lo, ow_hi):
                                row[q + ow] = src[col0 + ow * stride_w]
                        _fill_zeros(row, q + ow_hi, out_w - ow_hi)
                    _fill_zeros(row, base + oh_hi * out_w, (out_h - oh_hi) * out_w)


# ------------------------------------------------------------------------------- forward

@njit(cache=True)
def _columns_task(x, n0, n1, c0, c1, kh_size, kw_size, stride_h, stride_w, dilation_h,
                  dilation_w, top, left, out_h, out_w, cols):
    """:func:`_im2col` as a job: the columns of samples n0:n1, channels c0:c1."""
    _im2col(x, n0, n1, c0, c1, kh_size, kw_size, stride_h, stride_w, dilation_h, dilation_w,
            top, left, out_h, out_w, cols)


@functools.cache
def columns_job(dtype) -> Job:
    """:func:`_columns_task` for arrays of ``dtype``."""
    return Job(_columns_task, (array(dtype, 4),) + (INT,) * 14 + (array(dtype, 2),))


@njit(cache=True, fastmath=FAST)
def _forward_task(cols, weights, b, n0, n1, m0, y, out):
    """y[n0:n1, m0:m0 + rows] = weights (rows, K) @ cols (K, >= the samples' pixels) + b;
    ``out`` is the task's scratch."""
    ohw = y.shape[2] * y.shape[3]
    p_size = (n1 - n0) * ohw
    rows = weights.shape[0]
    for m in range(rows):  # start from the bias: no add afterwards
        out[m, :p_size] = b[m0 + m]
    _gemm_acc(weights, cols, out, p_size, K_BLOCK)
    for n in range(n0, n1):
        for m in range(rows):
            _copy(y[n, m0 + m].reshape(ohw), ZERO, out[m], (n - n0) * ohw, ohw)


@functools.cache
def forward_columns_job(dtype) -> Job:
    """The job of :func:`conv2d_forward_columns` for arrays of ``dtype``."""
    a1, a2, a4 = array(dtype, 1), array(dtype, 2), array(dtype, 4)
    return Job(_forward_task, (a2, a2, a1, INT, INT, INT, a4, a2))


@njit(parallel=True, cache=True)
def conv2d_forward_columns(x, w, b, stride_h, stride_w, dilation_h, dilation_w, top, left,
                           out_h, out_w, columns, job):
    """The convolution of x (N, C_in, H, W), padded by ``top`` and ``left`` (and as much
    as out_h, out_w need below and right), with w (C_out, C_in, KH, KW) plus b: y (N, C_out,
    out_h, out_w). ``columns``, ``job``: :func:`columns_job`, :func:`forward_columns_job` of
    the dtype.

    Each task makes the columns of a chunk of samples and multiplies them, where there are
    enough chunks; where there are few (small maps), the chunks' columns are made first, by
    blocks of channels, and tasks multiply blocks of output channels."""
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out, kh_size, kw_size = w.shape[0], w.shape[2], w.shape[3]
    k_size = c_in * kh_size * kw_size
    weights = w.reshape(c_out, k_size)
    ohw = out_h * out_w
    per_chunk = _chunk_samples(k_size, ohw, x.itemsize, n_batch, 4 * simd.width(x[0, 0, 0]))
    pixels = per_chunk * ohw
    n_chunks = -(-n_batch // per_chunk)
    rows, n_blocks = _row_blocks(c_out, n_chunks)
    y = np.empty((n_batch, c_out, out_h, out_w), dtype=x.dtype)
    if n_blocks == 1:
        for chunk in prange(n_chunks):
            n0 = chunk * per_chunk
            n1 = min(n_batch, n0 + per_chunk)
            cols = np.empty((k_size, pixels), dtype=x.dtype)
            columns(x, n0, n1, 0, c_in, kh_size, kw_size, stride_h, stride_w, dilation_h,
                    dilation_w, top, left, out_h, out_w, cols)
            job(cols, weights, b, n0, n1, 0, y,
                np.empty((c_out, pixels), dtype=x.dtype))
        return y
    all_cols = np.empty((n_chunks, k_size, pixels), dtype=x.dtype)
    khw = kh_size * kw_size
    per_part, n_parts = _row_blocks(c_in, n_chunks)
    for task in prange(n_chunks * n_parts):
        chunk, part = task // n_parts, task % n_parts
        n0, c0 = chunk * per_chunk, part * per_part
        c1 = min(c_in, c0 + per_part)
        columns(x, n0, min(n_batch, n0 + per_chunk), c0, c1, kh_size, kw_size, stride_h,
                stride_w, dilation_h, dilation_w, top, left, out_h, out_w,
                all_cols[chunk, c0 * khw:c1 * khw])
    for task in prange(n_chunks * n_blocks):
        chunk, block = task // n_blocks, task % n_blocks
        n0, m0 = chunk * per_chunk, block * rows
        m1 = min(c_out, m0 + rows)
        job(all_cols[chunk], weights[m0:m1], b, n0,
            min(n_batch, n0 + per_chunk), m0, y, np.empty((m1 - m0, pixels), dtype=x.dtype))
    return y


# -------------------------------------------------------------------------- weight gradient

@njit(parallel=True, cache=True)
def _transposed(gy, chunk_size):
    """gy (N, C, OH, OW) as (chunks, C, chunk_size): pixel p = n * OH * OW + oh * OW + ow of
    channel c at [p // chunk_size, c, p % chunk_size], zeros past the last pixel; and the
    bias gradient, gy summed over all but C (in float64)."""
    n_batch, c_out = gy.shape[0], gy.shape[1]
    ohw = gy.shape[2] * gy.shape[3]
    n_chunks = -(-(n_batch * ohw) // chunk_size)
    out = np.zeros((n_chunks, c_out, chunk_size), dtype=gy.dtype)
    grad_b = np.empty(c_out, dtype=gy.dtype)
    for c in prange(c_out):
        total = 0.0
        for n in range(n_batch):
            plane = gy[n, c].reshape(ohw)
            p = n * ohw
            chunk, q = p // chunk_size, p % chunk_size
            if q + ohw <= chunk_size:  # the whole plane in one chunk: a vector copy
                _copy(out[chunk, c], q, plane, ZERO, ohw)
            else:
                for i in range(ohw):
                    out[(p + i) // chunk_size, c, (p + i) % chunk_size] = plane[i]
            for i in range(ohw):
                total += plane[i]
        grad_b[c] = total
    return out, grad_b


@njit(cache=True, fastmath=FAST)
def _weight_grad_task(x, gy_t, taps, no_offsets, kh_size, kw_size, stride_h, stride_w,
                      dilation_h, dilation_w, top, left, out_h, out_w, per_chunk, c0, c1, grad_w,
                      acc, cols):
    """grad_w[:, c0 * KH * KW:c1 * KH * KW] = the sums over all pixels of gy_t (C_out,
    N * OH * OW) times the columns of channels c0:c1, made per_chunk samples at a time (acc
    (C_out, (c1 - c0) * KH * KW) and cols are the task's scratch)."""
    n_batch = x.shape[0]
    khw = kh_size * kw_size
    ohw = out_h * out_w
    acc[:] = 0
    for n0 in range(0, n_batch, per_chunk):
        n1 = min(n_batch, n0 + per_chunk)
        _im2col(x, n0, n1, c0, c1, kh_size, kw_size, stride_h, stride_w, dilation_h,
                dilation_w, top, left, out_h, out_w, cols)
        _abt_acc(gy_t, cols, taps, no_offsets, acc, n0 * ohw, ZERO, np.int64(1), ZERO, ZERO,
                 (n1 - n0) * ohw)
    for m in range(grad_w.shape[0]):
        _copy(grad_w[m], c0 * khw, acc[m], ZERO, (c1 - c0) * khw)


@functools.cache
def weight_grad_columns_job(dtype) -> Job:
    """The job of :func:`conv2d_weight_grad_columns` for arrays of ``dtype``."""
    a2, a4 = array(dtype, 2), array(dtype, 4)
    return Job(_weight_grad_task, (a4, a2, INTS, INTS) + (INT,) * 13 + (a2, a2, a2))


@njit(parallel=True, cache=True)
def conv2d_weight_grad_columns(gy, x, kh_size, kw_size, stride_h, stride_w, dilation_h,
                               dilation_w, top, left, job):
    """Gradients of the weight, (C_out, C_in, kh_size, kw_size), and of the bias, (C_out,),
    of the convolution of :func:`conv2d_forward_columns` at gy (N, C_out, OH, OW):
    ``(grad_w, grad_b)``. ``job``: :func:`weight_grad_columns_job` of the dtype.

    Each task owns a block of input channels, i.e. of the weight gradient's columns, and
    sums over every pixel of the batch: no partial gradients are kept or added."""
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out, out_h, out_w = gy.shape[1], gy.shape[2], gy.shape[3]
    khw = kh_size * kw_size
    ohw = out_h * out_w
    per_part = max(1, c_in // MIN_TASKS)  # channels per task
    n_parts = -(-c_in // per_part)
    k_part = per_part * khw
    per_chunk = max(1, min(n_batch, COLS_BYTES // (x.itemsize * k_part * ohw)))
    gy_t, grad_b = _transposed(gy, n_batch * ohw)
    taps = np.arange(k_part)
    no_offsets = np.zeros(k_part, dtype=np.int64)
    grad_w = np.empty((c_out, c_in * khw), dtype=x.dtype)
    for part in prange(n_parts):
        c0 = part * per_part
        c1 = min(c_in, c0 + per_part)
        job(x, gy_t[0], taps, no_offsets, kh_size, kw_size, stride_h, stride_w, dilation_h,
            dilation_w, top, left, out_h, out_w, per_chunk, c0, c1, grad_w,
            np.empty((c_out, (c1 - c0) * khw), dtype=x.dtype),
            np.empty(((c1 - c0) * khw, per_chunk * ohw), dtype=x.dtype))
    return grad_w.reshape(c_out, c_in, kh_size, kw_size), grad_b


# --------------------------------------------------------------------------- input gradient

@njit(cache=True)
def _col2im(gcols, c0, n0, n1, kh_size, kw_size, stride_h, stride_w, dilation_h, dilation_w,
            top, left, out_h, out_w, grad_x):
    """grad_x[n, c] += the columns gcols (rows (c - c0, kh, kw), pixels (n - n0) * OH * OW
    + ...) of channels c0:c0 + len(gcols) / (KH * KW): the inverse placement of
    :func:`_im2col` (positions in the padding dropped)."""
    height, width = grad_x.shape[2], grad_x.shape[3]
    ohw = out_h * out_w
    khw = kh_size * kw_size
    for r in range(gcols.shape[0]):
        c, tap = c0 + r // khw, r % khw
        kh, kw = tap // kw_size, tap % kw_size
        oh_lo, oh_hi = _span(out_h, stride_h, kh * dilation_h, top, height)
        ow_lo, ow_hi = _span(out_w, stride_w, kw * dilation_w, left, width)
        row = gcols[r]
        col0 = kw * dilation_w - left
        for n in range(n0, n1):
            plane = grad_x[n, c]
            base = (n - n0) * ohw
            for oh in range(oh_lo, oh_hi):
                dst = plane[oh * stride_h + kh * dilation_h - top]
                q = base + oh * out_w
                if stride_w == 1:
                    _add(dst, col0 + ow_lo, row, q + ow_lo, ow_hi - ow_lo)
                else:
                    for ow in range(ow_lo, ow_hi):
                        dst[col0 + ow * stride_w] += row[q + ow]


@njit(cache=True, fastmath=FAST)
def _input_grad_task(gy_t, weights_t, kh_size, kw_size, stride_h, stride_w, dilation_h,
                     dilation_w, top, left, out_h, out_w, chunk, c0, per_chunk, grad_x, gcols):
    """grad_x[n0:n1, c0:c0 + len(weights_t) / (KH * KW)] of the samples of ``chunk``
    (per_chunk samples each): zeroed, then the columns weights_t (rows, C_out) @ gy_t[chunk]
    added back (gcols (rows, PC) is scratch)."""
    n0 = chunk * per_chunk
    n1 = min(grad_x.shape[0], n0 + per_chunk)
    c1 = c0 + weights_t.shape[0] // (kh_size * kw_size)
    p_size = (n1 - n0) * out_h * out_w
    grad_x[n0:n1, c0:c1] = 0
    gcols[:, :p_size] = 0
    _gemm_acc(weights_t, gy_t[chunk], gcols, p_size, K_BLOCK)
    _col2im(gcols, c0, n0, n1, kh_size, kw_size, stride_h, stride_w, dilation_h, dilation_w,
            top, left, out_h, out_w, grad_x)


@functools.cache
def input_grad_columns_job(dtype) -> Job:
    """The job of :func:`conv2d_input_grad_columns` for arrays of ``dtype``."""
    a2, a3, a4 = array(dtype, 2), array(dtype, 3), array(dtype, 4)
    return Job(_input_grad_task, (a3, a2) + (INT,) * 13 + (a4, a2))


@njit(parallel=True, cache=True)
def conv2d_input_grad_columns(gy, w, height, width, stride_h, stride_w, dilation_h, dilation_w,
                              top, left, job):
    """Gradient of the input x (N, C_in, height, width) of :func:`conv2d_forward_columns` at
    gy (N, C_out, OH, OW). ``job``: :func:`input_grad_columns_job` of the dtype.

    Tasks own a chunk of samples and a block of input channels (the weights' rows of those
    channels), so each adds its columns onto input planes no other task touches."""
    n_batch, c_out, out_h, out_w = gy.shape
    c_in, kh_size, kw_size = w.shape[1], w.shape[2], w.shape[3]
    khw = kh_size * kw_size
    ohw = out_h * out_w
    per_chunk = _chunk_samples(c_in * khw, ohw, gy.itemsize, n_batch,
                               4 * simd.width(gy[0, 0, 0]))
    n_chunks = -(-n_batch // per_chunk)
    per_part, n_parts = _row_blocks(c_in, n_chunks)
    gy_t, _ = _transposed(gy, per_chunk * ohw)
    weights_t = np.ascontiguousarray(w.reshape(c_out, c_in * khw).T)
    grad_x = np.empty((n_batch, c_in, height, width), dtype=gy.dtype)
    for task in prange(n_chunks * n_parts):
        chunk, part = task // n_parts, task % n_parts
        c0 = part * per_part
        c1 = min(c_in, c0 + per_part)
        job(gy_t, weights_t[c0 * khw:c1 * khw], kh_size, kw_size,
            stride_h, stride_w, dilation_h, dilation_w, top, left, out_h, out_w,
            np.int64(chunk), np.int64(c0), np.int64(per_chunk), grad_x,
            np.empty(((c1 - c0) * khw, per_chunk * ohw), dtype=gy.dtype))
    return grad_x
