"""The column kernels: convolution as matrix products over im2col columns, for layers with
many channels on small maps (ResNet's 3x3 layers), where the flat grid's vectors would run
over the few pixels of one sample.

The receptive fields of a chunk of samples are copied into columns, ``cols (K, P)`` with
``K = C_in * KH * KW`` in weight order and the pixels of the chunk's samples one after the
other on the P axis (so a 1x1 map still fills whole vectors). Then, by the blocked register
tiles of :func:`.tiles._gemm_acc` and :func:`.tiles._abt_lanes_acc`:

    forward:       y      (C_out, P) = w (C_out, K) @ cols
    weight grad:   grad_w (C_out, K) = gy (C_out, P) @ cols.T
    input grad:    gcols  (K, P)     = w.T (K, C_out) @ gy, added back onto the input

Two layouts of a sample's P pixels, by the stride:

* stride 1, *wide*: the input is padded first, and a sample's pixels are its OH rows at the
  padded width Wp (``Wp - OW`` columns of each row are scratch, zero in gy). Each column row
  is then one contiguous run of the padded plane per sample (a vector copy), and the input
  gradient adds runs back the same way, onto the padded plane, cropped after;
* other strides, *exact*: OH x OW pixels per sample, gathered from the unpadded input (zeros
  where a field reaches into the padding) and scattered back by rows.

Every product is a term of the convolution's sum or a product with a zero of the padding, so
inf and NaN propagate as in the sums themselves (no finite check needed). Groups of 1 only
(:func:`use_columns`). Every parallel task owns what it writes (a block of outputs, a block of
the weight gradient's columns, a chunk of samples' input-gradient channels) and sums in a fixed
order, so results do not depend on the number of threads.
"""

import functools

import numpy as np
from numba import njit, prange

from .. import simd
from ..jobs import INT, INTS, Job, array
from .common import FAST
from .tiles import ZERO, _abt_acc, _abt_lanes_acc, _add_lane_sums, _gemm_acc

COLS_BYTES = 1 << 20  # one chunk's columns: 1 MiB, L2-resident while the product reads them
MIN_TASKS = 8  # split output channels (forward, input grad) until there are this many tasks
MIN_K = 256  # weights per output channel from which the column kernels pay, or else
MIN_C_OUT = 32  # output channels (ResNet's stem and 1x1 shortcuts; not LeNet's 6 and 16)
MIN_FLAT_WIDTH = 4  # outputs per row from which the flat kernels serve stride 1: they need no
# copy of the input (64 channels on 7x7 maps, forward 2.9 ms flat, 4.8 ms here; 512 channels
# on 3x3 maps, 155 ms flat, 46 ms here)
PARTIALS_BYTES = 8 << 20  # the flat weight gradient's partial sums from which these serve it
# (256 channels on 6x6 maps, 32 partial sums of 590,000 weights: 138 ms flat, 45 ms here)
K_BLOCK = 64  # taps per block of the products (:func:`.tiles._gemm_acc`)
PIXEL_RUN = 1024  # pixels per pass of the weight gradient's tiles: their rows stay in L1
LANES_BYTES = 1 << 20  # the most lane sums the weight gradient keeps (:func:`_weight_grad_task`)
GOOD_FILL = 0.9  # the share of a chunk's vector lanes holding pixels that is good enough


def use_columns(weight_shape, groups, stride, out_w):
    """Whether a convolution with outputs ``out_w`` wide takes the column kernels: groups of
    1, at least :data:`MIN_K` weights per output channel (ResNet-18's 3x3 layers: 576 and
    more) or :data:`MIN_C_OUT` output channels, and a stride or outputs narrower than
    :data:`MIN_FLAT_WIDTH`. (At ResNet-18's stem, 7x7 at stride 2 on 96x96, they take half
    the flat kernels' time, which compute every stride-1 output; LeNet's layers and maps at
    stride 1 stay on the flat and lanes kernels, which need no copy of the input, except for
    the weight gradient of many weights: :func:`weight_grad_by_columns`.)"""
    return (groups == 1 and many_channels(weight_shape)
            and (tuple(stride) != (1, 1) or out_w < MIN_FLAT_WIDTH))


def many_channels(weight_shape):
    """Whether a layer has :data:`MIN_K` weights per output channel or :data:`MIN_C_OUT`
    output channels: enough for the products of the column (and unrolled) kernels."""
    c_out, c_in_g, kh, kw = weight_shape
    return c_in_g * kh * kw >= MIN_K or c_out >= MIN_C_OUT


def weight_grad_by_columns(weight_shape, groups, itemsize, partial_sums):
    """Whether the weight gradient of a layer on the flat kernels' side of
    :func:`use_columns` takes :func:`conv2d_weight_grad_columns`: groups of 1 and
    ``partial_sums`` copies of the weights (the flat kernel's partial sums) over
    :data:`PARTIALS_BYTES`."""
    c_out, c_in_g, kh, kw = weight_shape
    return groups == 1 and partial_sums * c_out * c_in_g * kh * kw * itemsize > PARTIALS_BYTES


@njit(cache=True)
def _chunk_samples(k_size, pixels, itemsize, n_batch, tile):
    """Samples per chunk of columns (``pixels`` per sample). Its pixels fill the product's
    tiles (``tile`` pixels wide) as well as they can within twice COLS_BYTES of columns
    (at least one tile): the fewest samples that fill GOOD_FILL of the lanes, else the best
    fill (ResNet-18's 3x3 maps at 512 channels, 64-lane tiles of AVX-512: 12 samples, 108 of
    128 lanes)."""
    least = min(n_batch, -(-tile // pixels))
    most = min(n_batch, max(least, 2 * COLS_BYTES // (itemsize * k_size * pixels)))
    best, best_fill = least, 0.0
    for samples in range(least, most + 1):
        size = samples * pixels
        fill = size / (-(-size // tile) * tile)
        if fill >= GOOD_FILL:
            return samples
        if fill > best_fill:
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
    """dst[d0:d0 + n] = src[s0:s0 + n], by vectors (for long runs)."""
    w = simd.width(dst)
    for i in range(0, n, w):
        simd.store_first(dst, d0 + i, simd.load_first(src, s0 + i, n - i), n - i)


@njit(inline="always")
def _add(dst, d0, src, s0, n):
    """dst[d0:d0 + n] += src[s0:s0 + n], by vectors (for long runs)."""
    w = simd.width(dst)
    one = simd.splat(dst, 1)
    for i in range(0, n, w):
        simd.store_first(dst, d0 + i, simd.fma(one, simd.load_first(src, s0 + i, n - i),
                                               simd.load_first(dst, d0 + i, n - i)), n - i)


@njit(inline="always")
def _pitch(wide, x, out_w):
    """Pixels per output row in the columns: the padded width, or OW."""
    return x.shape[3] if wide else out_w


# ------------------------------------------------------------------------------- columns

@njit(cache=True)
def _columns_task(x, n0, n1, c0, c1, kh_size, kw_size, stride_h, stride_w, dilation_h,
                  dilation_w, top, left, out_h, out_w, wide, cols):
    """cols[k, (n - n0) * OH * pitch + oh * pitch + ow] = the input under output (oh, ow) and
    tap k = (c - c0, kh, kw) (weight order) for samples n0:n1 and channels c0:c1.

    ``wide`` (stride 1): x is the padded input, pitch its width, and each (tap, sample) one
    contiguous run of x's plane, zero past the last output. Else x is unpadded, pitch = OW,
    values gathered, zero where the field reaches into the padding (``top``, ``left``)."""
    height, width = x.shape[2], x.shape[3]
    pitch = _pitch(wide, x, out_w)
    per_sample = out_h * pitch
    for c in range(c0, c1):
        for kh in range(kh_size):
            oh_lo, oh_hi = _span(out_h, stride_h, kh * dilation_h, top, height)
            for kw in range(kw_size):
                row = cols[((c - c0) * kh_size + kh) * kw_size + kw]
                if wide:
                    run = (out_h - 1) * pitch + out_w
                    offset = kh * dilation_h * width + kw * dilation_w
                    for n in range(n0, n1):
                        base = (n - n0) * per_sample
                        _copy(row, base, x[n, c].reshape(height * width), offset, run)
                        row[base + run:base + per_sample] = 0
                    continue
                ow_lo, ow_hi = _span(out_w, stride_w, kw * dilation_w, left, width)
                col0 = kw * dilation_w - left
                for n in range(n0, n1):
                    plane = x[n, c]
                    for oh in range(out_h):
                        q = (n - n0) * per_sample + oh * out_w
                        if oh < oh_lo or oh >= oh_hi:
                            row[q:q + out_w] = 0
                            continue
                        src = plane[oh * stride_h + kh * dilation_h - top]
                        for ow in range(ow_lo):
                            row[q + ow] = 0
                        for ow in range(ow_lo, ow_hi):
                            row[q + ow] = src[col0 + ow * stride_w]
                        for ow in range(ow_hi, out_w):
                            row[q + ow] = 0


@functools.cache
def columns_job(dtype) -> Job:
    """:func:`_columns_task` for arrays of ``dtype``."""
    return Job(_columns_task, (array(dtype, 4),) + (INT,) * 15 + (array(dtype, 2),))


@njit(parallel=True, cache=True)
def _gy_columns(gy, pitch, chunk_size):
    """gy (N, C, OH, OW) on the columns' pixels, (chunks, C, chunk_size): pixel
    p = n * OH * pitch + oh * pitch + ow at [p // chunk_size, c, p % chunk_size], zeros at
    scratch columns (ow >= OW) and past the last pixel; and the bias gradient, gy summed over
    all but C (in float64)."""
    n_batch, c_out, out_h, out_w = gy.shape
    n_chunks = -(-(n_batch * out_h * pitch) // chunk_size)
    out = np.zeros((n_chunks, c_out, chunk_size), dtype=gy.dtype)
    grad_b = np.empty(c_out, dtype=gy.dtype)
    for c in prange(c_out):
        total = 0.0
        for n in range(n_batch):
            for oh in range(out_h):
                src = gy[n, c, oh]
                p = (n * out_h + oh) * pitch
                chunk, q = p // chunk_size, p % chunk_size
                if q + out_w <= chunk_size:
                    dst = out[chunk, c]
                    for ow in range(out_w):
                        dst[q + ow] = src[ow]
                else:
                    for ow in range(out_w):
                        out[(p + ow) // chunk_size, c, (p + ow) % chunk_size] = src[ow]
                for ow in range(out_w):
                    total += src[ow]
        grad_b[c] = total
    return out, grad_b


# ------------------------------------------------------------------------------- forward

@njit(cache=True, fastmath=FAST)
def _forward_task(cols, weights, b, n0, n1, m0, pitch, y, out):
    """y[n0:n1, m0:m0 + rows] = weights (rows, K) @ cols (K, >= the samples' pixels) + b;
    ``out`` is the task's scratch."""
    out_h, out_w = y.shape[2], y.shape[3]
    p_size = (n1 - n0) * out_h * pitch
    rows = weights.shape[0]
    for m in range(rows):  # start from the bias: no add afterwards
        out[m, :p_size] = b[m0 + m]
    _gemm_acc(weights, cols, out, p_size, K_BLOCK)
    for n in range(n0, n1):
        for m in range(rows):
            src = out[m]
            for oh in range(out_h):
                dst = y[n, m0 + m, oh]
                q = ((n - n0) * out_h + oh) * pitch
                for ow in range(out_w):
                    dst[ow] = src[q + ow]


@functools.cache
def forward_columns_job(dtype) -> Job:
    """The job of :func:`conv2d_forward_columns` for arrays of ``dtype``."""
    a1, a2, a4 = array(dtype, 1), array(dtype, 2), array(dtype, 4)
    return Job(_forward_task, (a2, a2, a1, INT, INT, INT, INT, a4, a2))


@njit(parallel=True, cache=True)
def conv2d_forward_columns(x, w, b, stride_h, stride_w, dilation_h, dilation_w, top, left,
                           out_h, out_w, wide, columns, job):
    """The convolution of x with w (C_out, C_in, KH, KW) plus b: y (N, C_out, out_h, out_w).
    ``wide`` (stride 1): x is the padded input; else x (N, C_in, H, W) unpadded, the padding
    ``top`` and ``left`` (and as much as out_h, out_w need below and right). ``columns``,
    ``job``: :func:`columns_job`, :func:`forward_columns_job` of the dtype.

    Each task makes the columns of a chunk of samples and multiplies them, where there are
    enough chunks; where there are few (small maps), the chunks' columns are made first, by
    blocks of channels, and tasks multiply blocks of output channels."""
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out, kh_size, kw_size = w.shape[0], w.shape[2], w.shape[3]
    khw = kh_size * kw_size
    k_size = c_in * khw
    weights = w.reshape(c_out, k_size)
    pitch = _pitch(wide, x, out_w)
    per_sample = out_h * pitch
    per_chunk = _chunk_samples(k_size, per_sample, x.itemsize, n_batch,
                               4 * simd.width(x[0, 0, 0]))
    pixels = per_chunk * per_sample
    n_chunks = -(-n_batch // per_chunk)
    rows, n_blocks = _row_blocks(c_out, n_chunks)
    y = np.empty((n_batch, c_out, out_h, out_w), dtype=x.dtype)
    if n_blocks == 1:
        for chunk in prange(n_chunks):
            n0 = chunk * per_chunk
            n1 = min(n_batch, n0 + per_chunk)
            cols = np.empty((k_size, pixels), dtype=x.dtype)
            columns(x, n0, n1, 0, c_in, kh_size, kw_size, stride_h, stride_w, dilation_h,
                    dilation_w, top, left, out_h, out_w, wide, cols)
            job(cols, weights, b, n0, n1, 0, pitch, y, np.empty((c_out, pixels), dtype=x.dtype))
        return y
    all_cols = np.empty((n_chunks, k_size, pixels), dtype=x.dtype)
    per_part, n_parts = _row_blocks(c_in, n_chunks)
    for task in prange(n_chunks * n_parts):
        chunk, part = task // n_parts, task % n_parts
        n0, c0 = chunk * per_chunk, part * per_part
        c1 = min(c_in, c0 + per_part)
        columns(x, n0, min(n_batch, n0 + per_chunk), c0, c1, kh_size, kw_size, stride_h,
                stride_w, dilation_h, dilation_w, top, left, out_h, out_w, wide,
                all_cols[chunk, c0 * khw:c1 * khw])
    for task in prange(n_chunks * n_blocks):
        chunk, block = task // n_blocks, task % n_blocks
        n0, m0 = chunk * per_chunk, block * rows
        m1 = min(c_out, m0 + rows)
        job(all_cols[chunk], weights[m0:m1], b, n0, min(n_batch, n0 + per_chunk), m0, pitch, y,
            np.empty((m1 - m0, pixels), dtype=x.dtype))
    return y


# -------------------------------------------------------------------------- weight gradient

@njit(cache=True, fastmath=FAST)
def _weight_grad_task(x, gy_p, taps, no_offsets, kh_size, kw_size, stride_h, stride_w,
                      dilation_h, dilation_w, top, left, out_h, out_w, wide, per_chunk, c0, c1,
                      n_start, n_stop, grad_w, acc, cols):
    """grad_w[:, c0 * KH * KW:c1 * KH * KW] = the sums over the pixels of samples
    n_start:n_stop of gy_p (C_out, N * OH * pitch) times the columns of channels c0:c1, made
    per_chunk samples at a time (acc (C_out, (c1 - c0) * KH * KW) and cols are the task's
    scratch)."""
    khw = kh_size * kw_size
    per_sample = out_h * _pitch(wide, x, out_w)
    # W lane sums per weight, kept in memory across chunks (no sums of lanes per tile), where
    # they stay in L2; else each tile's lanes summed at the end of its pass
    in_lanes = acc.size * simd.VECTOR_BYTES <= LANES_BYTES
    lanes = np.zeros((acc.shape[0], acc.shape[1] * simd.width(acc[0]) if in_lanes else 0),
                     dtype=acc.dtype)
    acc[:] = 0
    for n0 in range(n_start, n_stop, per_chunk):
        n1 = min(n_stop, n0 + per_chunk)
        _columns_task(x, n0, n1, c0, c1, kh_size, kw_size, stride_h, stride_w, dilation_h,
                      dilation_w, top, left, out_h, out_w, wide, cols)
        if in_lanes:
            _abt_lanes_acc(gy_p, cols, taps, no_offsets, lanes, n0 * per_sample, ZERO,
                           np.int64(1), ZERO, ZERO, (n1 - n0) * per_sample)
        else:
            _abt_acc(gy_p, cols, taps, no_offsets, acc, n0 * per_sample, ZERO, np.int64(1),
                     ZERO, ZERO, (n1 - n0) * per_sample)
    if in_lanes:
        _add_lane_sums(lanes, acc)
    for m in range(grad_w.shape[0]):
        _copy(grad_w[m], c0 * khw, acc[m], ZERO, (c1 - c0) * khw)


@functools.cache
def weight_grad_columns_job(dtype) -> Job:
    """The job of :func:`conv2d_weight_grad_columns` for arrays of ``dtype``."""
    a2, a4 = array(dtype, 2), array(dtype, 4)
    return Job(_weight_grad_task, (a4, a2, INTS, INTS) + (INT,) * 16 + (a2, a2, a2))


@njit(parallel=True, cache=True)
def conv2d_weight_grad_columns(gy, x, kh_size, kw_size, stride_h, stride_w, dilation_h,
                               dilation_w, top, left, wide, job):
    """Gradients of the weight, (C_out, C_in, kh_size, kw_size), and of the bias, (C_out,),
    of the convolution of :func:`conv2d_forward_columns` (x and ``wide`` as there) at gy
    (N, C_out, OH, OW): ``(grad_w, grad_b)``. ``job``: :func:`weight_grad_columns_job`.

    Each task owns a block of input channels, i.e. of the weight gradient's columns, and
    sums over every pixel of the batch. Where there are fewer than MIN_TASKS blocks (the
    stem's one input channel), the samples are split too: each part of them sums its own
    gradient, and the parts are added in order."""
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out, out_h, out_w = gy.shape[1], gy.shape[2], gy.shape[3]
    khw = kh_size * kw_size
    pitch = _pitch(wide, x, out_w)
    per_sample = out_h * pitch
    per_part = max(1, c_in // MIN_TASKS)  # channels per task
    n_parts = -(-c_in // per_part)
    k_part = per_part * khw
    per_chunk = max(1, min(n_batch, COLS_BYTES // (x.itemsize * k_part * per_sample)))
    if c_out * k_part * simd.VECTOR_BYTES <= LANES_BYTES:  # lane sums kept: short passes
        per_chunk = max(1, min(per_chunk, PIXEL_RUN // per_sample))
    gy_p, grad_b = _gy_columns(gy, pitch, n_batch * per_sample)
    taps = np.arange(k_part)
    no_offsets = np.zeros(k_part, dtype=np.int64)
    n_chunks = -(-n_batch // per_chunk)
    sample_parts = min(n_chunks, -(-MIN_TASKS // n_parts))
    chunks_per_part = -(-n_chunks // sample_parts)
    sample_parts = -(-n_chunks // chunks_per_part)
    grads = np.empty((sample_parts, c_out, c_in * khw), dtype=x.dtype)
    for task in prange(n_parts * sample_parts):
        part, sample_part = task // sample_parts, task % sample_parts
        c0 = part * per_part
        c1 = min(c_in, c0 + per_part)
        n_start = sample_part * chunks_per_part * per_chunk
        job(x, gy_p[0], taps, no_offsets, kh_size, kw_size, stride_h, stride_w, dilation_h,
            dilation_w, top, left, out_h, out_w, wide, per_chunk, c0, c1, n_start,
            min(n_batch, n_start + chunks_per_part * per_chunk), grads[sample_part],
            np.empty((c_out, (c1 - c0) * khw), dtype=x.dtype),
            np.empty(((c1 - c0) * khw, per_chunk * per_sample), dtype=x.dtype))
    grad_w = grads[0]
    for sample_part in range(1, sample_parts):  # in order: no dependence on the threads
        grad_w += grads[sample_part]
    return grad_w.reshape(c_out, c_in, kh_size, kw_size), grad_b


# --------------------------------------------------------------------------- input gradient

@njit(cache=True)
def _add_columns(gcols, c0, n0, n1, kh_size, kw_size, stride_h, stride_w, dilation_h,
                 dilation_w, top, left, out_h, out_w, wide, grad_x):
    """grad_x[n, c] += the columns gcols (rows (c - c0, kh, kw), pixels of samples n0:n1 as
    :func:`_columns_task` lays them out) of channels c0:c0 + len(gcols) / (KH * KW): the
    inverse placement of :func:`_columns_task`. ``wide``: grad_x is the padded input's
    gradient and each (tap, sample) one run; else positions in the padding are dropped."""
    height, width = grad_x.shape[2], grad_x.shape[3]
    khw = kh_size * kw_size
    pitch = _pitch(wide, grad_x, out_w)
    per_sample = out_h * pitch
    for r in range(gcols.shape[0]):
        c, tap = c0 + r // khw, r % khw
        kh, kw = tap // kw_size, tap % kw_size
        row = gcols[r]
        if wide:
            run = (out_h - 1) * pitch + out_w
            offset = kh * dilation_h * width + kw * dilation_w
            for n in range(n0, n1):
                _add(grad_x[n, c].reshape(height * width), offset, row, (n - n0) * per_sample,
                     run)
            continue
        oh_lo, oh_hi = _span(out_h, stride_h, kh * dilation_h, top, height)
        ow_lo, ow_hi = _span(out_w, stride_w, kw * dilation_w, left, width)
        col0 = kw * dilation_w - left
        for n in range(n0, n1):
            plane = grad_x[n, c]
            for oh in range(oh_lo, oh_hi):
                dst = plane[oh * stride_h + kh * dilation_h - top]
                q = (n - n0) * per_sample + oh * out_w
                for ow in range(ow_lo, ow_hi):
                    dst[col0 + ow * stride_w] += row[q + ow]


@njit(cache=True, fastmath=FAST)
def _input_grad_task(gy_p, weights_t, kh_size, kw_size, stride_h, stride_w, dilation_h,
                     dilation_w, top, left, out_h, out_w, wide, chunk, c0, per_chunk, grad_x,
                     gcols):
    """grad_x[n0:n1, c0:c0 + len(weights_t) / (KH * KW)] of the samples of ``chunk``
    (per_chunk samples each): zeroed, then the columns weights_t (rows, C_out) @ gy_p[chunk]
    added back (gcols (rows, pixels) is scratch)."""
    n0 = chunk * per_chunk
    n1 = min(grad_x.shape[0], n0 + per_chunk)
    c1 = c0 + weights_t.shape[0] // (kh_size * kw_size)
    p_size = (n1 - n0) * out_h * _pitch(wide, grad_x, out_w)
    grad_x[n0:n1, c0:c1] = 0
    gcols[:, :p_size] = 0
    _gemm_acc(weights_t, gy_p[chunk], gcols, p_size, K_BLOCK)
    _add_columns(gcols, c0, n0, n1, kh_size, kw_size, stride_h, stride_w, dilation_h,
                 dilation_w, top, left, out_h, out_w, wide, grad_x)


@functools.cache
def input_grad_columns_job(dtype) -> Job:
    """The job of :func:`conv2d_input_grad_columns` for arrays of ``dtype``."""
    a2, a3, a4 = array(dtype, 2), array(dtype, 3), array(dtype, 4)
    return Job(_input_grad_task, (a3, a2) + (INT,) * 14 + (a4, a2))


@njit(parallel=True, cache=True)
def conv2d_input_grad_columns(gy, w, height, width, stride_h, stride_w, dilation_h, dilation_w,
                              top, left, wide, job):
    """Gradient of the input of :func:`conv2d_forward_columns` at gy (N, C_out, OH, OW):
    (N, C_in, height, width), the padded input's where ``wide``. ``job``:
    :func:`input_grad_columns_job` of the dtype.

    Tasks own a chunk of samples and a block of input channels (the weights' rows of those
    channels), so each adds its columns onto input planes no other task touches."""
    n_batch, c_out, out_h, out_w = gy.shape
    c_in, kh_size, kw_size = w.shape[1], w.shape[2], w.shape[3]
    khw = kh_size * kw_size
    pitch = width if wide else out_w
    per_sample = out_h * pitch
    per_chunk = _chunk_samples(c_in * khw, per_sample, gy.itemsize, n_batch,
                               4 * simd.width(gy[0, 0, 0]))
    n_chunks = -(-n_batch // per_chunk)
    per_part, n_parts = _row_blocks(c_in, n_chunks)
    gy_p, _ = _gy_columns(gy, pitch, per_chunk * per_sample)
    weights_t = np.ascontiguousarray(w.reshape(c_out, c_in * khw).T)
    grad_x = np.empty((n_batch, c_in, height, width), dtype=gy.dtype)
    for task in prange(n_chunks * n_parts):
        chunk, part = task // n_parts, task % n_parts
        c0 = part * per_part
        c1 = min(c_in, c0 + per_part)
        job(gy_p, weights_t[c0 * khw:c1 * khw], kh_size, kw_size, stride_h, stride_w,
            dilation_h, dilation_w, top, left, out_h, out_w, wide, np.int64(chunk),
            np.int64(c0), np.int64(per_chunk), grad_x,
            np.empty(((c1 - c0) * khw, per_chunk * per_sample), dtype=gy.dtype))
    return grad_x
