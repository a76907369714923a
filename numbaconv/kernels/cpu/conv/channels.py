"""The output-channel kernels: a convolution with the output channels along the vectors,
for layers with many output channels (ResNet's 3x3 layers, its stem).

A tile of :data:`TILE_PIXELS` outputs x two vectors of output channels (2W: 32 float32 or 16
float64 with AVX-512, 16 or 8 with AVX2) keeps its sums in registers across all taps: per
tap, two weight vectors are loaded and each of the tile's input values is broadcast into two
multiply-adds. A tile is 12 outputs (24 sums) where the CPU has 32 vector registers, 6 (12
sums, the shape of BLIS's AVX2 product) where it has 16. Every weight load serves the tile's
pixels and every input load 2W channels, with no copy of the input and no vector
lanes left empty on a small map (where the flat kernels' pixel vectors run past a row, and
the column kernels copy every tap's input). Kernel tap k reads the padded input at a fixed
offset from an output's position (:func:`grid_taps`); a tile's outputs are consecutive
along an output row (stride 1, 2 or 4), or at stride 1 consecutive positions of the flat grid
of :mod:`.flat` (output (oh, ow) at ``oh * Wp + ow``, ``Wp - OW`` padding columns a row,
which the forward's rows share: :func:`shared_padding_width`), whichever computes fewer
positions (:func:`tiles_by_rows`):

    x      (N, C_in, H, W)       the input, unpadded: the forward pads each sample itself
    xflat  (N, C_in * Hp * Wp)   the padded input, flat per sample (the weight gradient's)
    packed (C_out / 2W, K, 2W)   the weights, each block's 2W channels contiguous per tap
    y      (N, C_out, OH, OW)

Each tile keeps its sums in a slot of the task's scratch (2W values a position), from the
bias on; the taps are added a chunk at a time over every tile (:data:`WEIGHTS_CHUNK_BYTES` of
weights, which stay in L1), and the finished slots are spread to y's planes (a tile
along a row as soon as it is final; on the flat grid, at the end, positions in the padding's
columns dropped). A forward task owns a sample, which it pads into a scratch of its own,
and one or more blocks of channels, so results do not depend on the number of threads.

The weight gradient turns the tile around: TILE_PIXELS taps x two vectors of output
channels, summed over every output of every sample, row by row, from gy laid out
channels-last in blocks of 2W channels (gyt (N, C_out / 2W, OH * OW * 2W)) and the taps'
input values broadcast. Its tasks own a block of channels and a run of taps.

Every product either kernel sums is one of the convolution's own, in the order of the taps
(forward) or the samples and outputs (weight gradient), so inf and NaN propagate as in the
sums themselves.
"""

import functools

import numpy as np
from numba import njit, prange

from .. import buffers, simd
from ..jobs import INT, INTS, Job, array
from ..layout import _move_square
from .common import FAST
from .place import pad_rows
from .tiles import UINT, WIDE

TILE_PIXELS = 12 if WIDE else 6  # positions (the weight gradient's taps) per tile: 24 (12)
# sums, two weight vectors and a broadcast in 32 (16) vector registers; more spill
WEIGHTS_CHUNK_BYTES = 8 << 10  # the forward's taps in chunks whose weights (2W values a tap)
# stay in L1 while every tile of the sample uses them (a block's weights for all taps, 36-72
# KiB at ResNet's 64-128 channels, streamed from L2 for every tile)
MIN_C_OUT = 32  # output channels from which these kernels pay (LeNet's 6 and 16 stay flat; at
# DenseNet's 32 on 8x8 maps, batch 256, 160 input channels, forward 27 -> 19 ms, backward 61 -> 35)
MIN_K = 32  # weights per output channel, likewise (ResNet's stem has 49)
CLAIM_MAX_BYTES = 1 << 17  # a block's lines of y the forward claims ahead of its spread, at
# most: they stay in L2 until then (a 56x56 map's 32 channels, 401 KB, ran 1-3% slower claimed)
FORWARD_TASKS = 16  # the forward's tasks at least: below as many samples, a sample's blocks
# of channels are shared among tasks (each pads the sample again)


def block_channels(itemsize) -> int:
    """Output channels per block: two vectors."""
    return 2 * simd.VECTOR_BYTES // itemsize


def channels_fit(weight_shape, groups, itemsize):
    """Groups of 1, whole blocks of :func:`block_channels` output channels, at least
    :data:`MIN_C_OUT` of them and :data:`MIN_K` weights each."""
    c_out, c_in_g, kh, kw = weight_shape
    return (groups == 1 and c_out >= MIN_C_OUT and c_out % block_channels(itemsize) == 0
            and c_in_g * kh * kw >= MIN_K)


def use_channel_vectors(weight_shape, groups, stride, out_h, out_w, padded_w, itemsize):
    """Whether a convolution at stride 1 takes these kernels: where the channels fit
    (:func:`channels_fit`) and its flat grid (``padded_w`` wide) holds a tile."""
    return (tuple(stride) == (1, 1) and channels_fit(weight_shape, groups, itemsize)
            and (out_h - 1) * padded_w + out_w >= TILE_PIXELS)


def use_strided_channel_vectors(weight_shape, groups, stride, out_w, itemsize):
    """Whether a convolution at stride 2 or 4 takes the forward (by tiles along each output
    row) and the weight gradient of these kernels: where the channels fit and a row holds a
    tile (ResNet's stem, 7x7/2 onto 48x48 at 96x96 input, and its 64 -> 128 layers onto
    12x12; AlexNet's and NiN's 11x11/4 stems, onto 15x15 at 65x65 and 67x67 input: forward
    11.1 -> 8.4 ms, weight gradient 18.0 -> 9.5 ms at batch 128 on 1 thread against the
    column kernels). Its input gradient stays on the column kernels."""
    return (tuple(stride) in ((2, 2), (4, 4)) and channels_fit(weight_shape, groups, itemsize)
            and out_w >= TILE_PIXELS)


@njit(inline="always")
def _broadcast_fma(xs, i, w0, w1, s0, s1):
    """(s0 + xs[i] * w0, s1 + xs[i] * w1), each rounded once."""
    v = simd.splat(xs, xs[i])
    return simd.fma(v, w0, s0), simd.fma(v, w1, s1)


@njit(inline="always")
def _store_pairs(sums, o, pairs):
    """sums[o:o + 2W * len(pairs)] = the pairs of vectors, one after the other."""
    w = simd.width(sums)
    for v0, v1 in pairs:
        simd.store_first(sums, o, v0, w)
        simd.store_first(sums, o + w, v1, w)
        o += 2 * w


@njit(inline="always")
def _load_six(sums, o):
    """The six pairs of vectors at sums[o:o + 12W], one after the other (12 vectors)."""
    w = simd.width(sums)
    return (simd.load_first(sums, o, w), simd.load_first(sums, o + w, w),
            simd.load_first(sums, o + 2 * w, w), simd.load_first(sums, o + 3 * w, w),
            simd.load_first(sums, o + 4 * w, w), simd.load_first(sums, o + 5 * w, w),
            simd.load_first(sums, o + 6 * w, w), simd.load_first(sums, o + 7 * w, w),
            simd.load_first(sums, o + 8 * w, w), simd.load_first(sums, o + 9 * w, w),
            simd.load_first(sums, o + 10 * w, w), simd.load_first(sums, o + 11 * w, w))


@njit(inline="always")
def _last_six(sums, o):
    """:func:`_load_six` of a tile's last six pairs, at sums[o + 12W:], where tiles have
    them (:data:`WIDE`); without, the first six again, which nothing uses (LLVM drops
    them)."""
    return _load_six(sums, o + 12 * simd.width(sums) if WIDE else o)


@njit(cache=True, fastmath=FAST)
def add_tile(xs, weights, taps, k0, k1, p0, step, sums, o):
    """sums[(o + j) * 2W:(o + j + 1) * 2W] += the sums over taps k0 <= k < k1 of
    weights[k * 2W:(k + 1) * 2W] * xs[taps[k] + p0 + j * step], in the order of the taps, for
    the TILE_PIXELS outputs j (xs: a sample's flat input; taps: each tap's channel plane
    start plus its offset; ``step``: the stride along a row, passed as a constant so that
    each j * step is one). Without :data:`WIDE` only the first six sums are read and
    written."""
    w = simd.width(xs)
    o *= 2 * w
    s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51 = _load_six(sums, o)
    s60, s61, s70, s71, s80, s81, s90, s91, sa0, sa1, sb0, sb1 = _last_six(sums, o)
    q = UINT(k0 * 2 * w)
    for k in range(UINT(k0), UINT(k1)):
        i = UINT(taps[k] + p0)
        w0 = simd.load_first(weights, q, w)
        w1 = simd.load_first(weights, q + UINT(w), w)
        q += UINT(2 * w)
        s00, s01 = _broadcast_fma(xs, i, w0, w1, s00, s01)
        s10, s11 = _broadcast_fma(xs, i + UINT(step), w0, w1, s10, s11)
        s20, s21 = _broadcast_fma(xs, i + UINT(2 * step), w0, w1, s20, s21)
        s30, s31 = _broadcast_fma(xs, i + UINT(3 * step), w0, w1, s30, s31)
        s40, s41 = _broadcast_fma(xs, i + UINT(4 * step), w0, w1, s40, s41)
        s50, s51 = _broadcast_fma(xs, i + UINT(5 * step), w0, w1, s50, s51)
        if WIDE:
            s60, s61 = _broadcast_fma(xs, i + UINT(6 * step), w0, w1, s60, s61)
            s70, s71 = _broadcast_fma(xs, i + UINT(7 * step), w0, w1, s70, s71)
            s80, s81 = _broadcast_fma(xs, i + UINT(8 * step), w0, w1, s80, s81)
            s90, s91 = _broadcast_fma(xs, i + UINT(9 * step), w0, w1, s90, s91)
            sa0, sa1 = _broadcast_fma(xs, i + UINT(10 * step), w0, w1, sa0, sa1)
            sb0, sb1 = _broadcast_fma(xs, i + UINT(11 * step), w0, w1, sb0, sb1)
    _store_pairs(sums, o, ((s00, s01), (s10, s11), (s20, s21), (s30, s31), (s40, s41),
                           (s50, s51)))
    if WIDE:
        _store_pairs(sums, o + 12 * w, ((s60, s61), (s70, s71), (s80, s81), (s90, s91),
                                        (sa0, sa1), (sb0, sb1)))


@njit(inline="always")
def spread(sums, o, count, y, n, c0, oh, ow, square):
    """y[n, c0:c0 + 2W, oh, ow:ow + count] = the sums of ``count`` (<= W) consecutive
    outputs of a row, at positions o, o + 1, ... of the scratch ``sums`` (2W channels each),
    by two W x W squares transposed in registers (:func:`..layout._move_square`; ``square``,
    W * W values, is its scratch for a part of a square)."""
    w = simd.width(square)
    channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    flat = y.reshape(y.size)
    for half in range(0, 2 * w, w):
        _move_square(sums, o * 2 * w + half, 2 * w, count, w, flat,
                     ((n * channels + c0 + half) * out_h + oh) * out_w + ow, out_h * out_w,
                     square)


@njit(inline="always")
def _claim_lines(region, first, count):
    """Prefetches lines first:first + count of ``region``'s cache lines (those that exist)
    for writing (:func:`.simd.prefetch_write`)."""
    step = buffers.LINE // region.itemsize
    for line in range(first, min(first + count, -(-region.size // step))):
        simd.prefetch_write(region, line * step)


@njit(inline="always")
def _row_tile(t, per_row, out_w):
    """Output row and first column of tile t of the row tiles, ``per_row`` a row (the last
    one of a row ending at the row's end, recomputing a few outputs of the one before)."""
    return t // per_row, min(t % per_row * TILE_PIXELS, out_w - TILE_PIXELS)


@njit(cache=True, fastmath=FAST)
def _forward_task(x, packed, b, taps, n, block0, block1, top, left, hp, wp, stride, by_rows,
                  y, sums, xs):
    """y[n, blocks block0:block1 of 2W channels] for :func:`conv2d_forward_channels`;
    ``sums`` (2W values for each of TILE_PIXELS positions of every tile) and ``xs``
    (C_in * hp * wp values and wp more) are scratch.

    Sample n is padded into ``xs`` once, where the task's blocks read it from L2 (a pass of
    its own over the batch wrote and read the padded batch through memory: ResNet's 64 ->
    64 3x3 layer on 24x24, batch 64, 1 thread, 19.3 -> 17.8 ms; its 64 -> 128 at stride 2
    onto 12x12, 2 threads, 6.2 -> 4.5 ms, where the unrolled kernels had served). Every tile
    of a block starts from the bias in its own slot of ``sums`` and adds the taps a chunk at
    a time (:data:`WEIGHTS_CHUNK_BYTES`), each chunk over all the tiles: the same sums in
    the same order as all the taps at once. Tiles along the rows are spread to y as soon as
    the last chunk finishes each, so that y's cache misses overlap the next tiles' products
    (the spread takes about 10% of a task at ResNet's 24x24 maps; so placed, those tasks ran
    1.02-1.07x faster than with every spread at the end); the flat grid's rows, which cross
    tiles, are spread at the end (placed per tile they ran the same). During the chunk
    before the last, each tile claims a share of the block's lines of y (prefetched for
    writing), so that the spread's stores find them in cache rather than wait on memory
    (up to :data:`CLAIM_MAX_BYTES`; ResNet's 64-channel layer on 24x24, batch 64, 1 thread,
    forward 23.3 -> 21.6 ms, input gradient 22.6 -> 21.2; its 128-channel layer on 12x12,
    forward 20.6 -> 19.6)."""
    c_in = x.shape[1]
    pad_rows(x, n, 0, c_in, top, left, 0, hp, wp, xs[:c_in * hp * wp].reshape(1, c_in, hp * wp))
    for i in range(c_in * hp * wp, xs.size):  # the zeros the last row's taps read on into
        xs[i] = 0
    out_h, out_w = y.shape[2], y.shape[3]
    w = simd.width(xs)
    block_size = 2 * w
    per_row = -(-out_w // TILE_PIXELS)
    length = (out_h - 1) * wp + out_w  # the flat grid's positions
    n_tiles = sums.size // (TILE_PIXELS * block_size)
    chunk = max(1, WEIGHTS_CHUNK_BYTES // (block_size * xs.itemsize))
    # the chunk before the last (the only one where all taps fit in one) claims y's lines
    claim_k0 = max(0, -(-taps.size // chunk) - 2) * chunk
    plane = out_h * out_w
    lines = -(-block_size * plane * y.itemsize // buffers.LINE)
    per_tile = -(-lines // n_tiles) if lines * buffers.LINE <= CLAIM_MAX_BYTES else 0
    square = np.empty(w * w, dtype=y.dtype)
    for block in range(block0, block1):
        weights = packed[block].reshape(packed.shape[1] * block_size)
        c0 = block * block_size
        y_block = y[n].reshape(y.shape[1] * plane)[c0 * plane:(c0 + block_size) * plane]
        bias0 = simd.load_first(b, c0, w)
        bias1 = simd.load_first(b, c0 + w, w)
        for o in range(0, sums.size, block_size):
            simd.store_first(sums, o, bias0, w)
            simd.store_first(sums, o + w, bias1, w)
        for k0 in range(0, taps.size, chunk):
            k1 = min(taps.size, k0 + chunk)
            for t in range(n_tiles):
                o = t * TILE_PIXELS
                if k0 == claim_k0:
                    _claim_lines(y_block, t * per_tile, per_tile)
                if not by_rows:  # stride 1, along the flat grid (rows Wp apart), the last
                    # tile ending at the grid's end: no tile reads past the padded sample
                    add_tile(xs, weights, taps, k0, k1, min(o, length - TILE_PIXELS), 1, sums, o)
                    continue
                oh, ow = _row_tile(t, per_row, out_w)
                if stride == 1:
                    add_tile(xs, weights, taps, k0, k1, oh * wp + ow, 1, sums, o)
                elif stride == 2:
                    add_tile(xs, weights, taps, k0, k1, 2 * (oh * wp + ow), 2, sums, o)
                else:
                    add_tile(xs, weights, taps, k0, k1, 4 * (oh * wp + ow), 4, sums, o)
                if k1 == taps.size:  # the tile is final
                    for i in range(0, TILE_PIXELS, w):
                        spread(sums, o + i, min(w, TILE_PIXELS - i), y, n, c0, oh, ow + i,
                               square)
        if not by_rows:
            # the last tile's slot to its positions, length - TILE_PIXELS on (ascending: the
            # slot lies at or after them)
            last = (n_tiles - 1) * TILE_PIXELS * block_size
            first = (length - TILE_PIXELS) * block_size
            for i in range(TILE_PIXELS * block_size):
                sums[first + i] = sums[last + i]
            for oh in range(out_h):  # positions in the padding's columns are dropped
                for ow in range(0, out_w, w):
                    spread(sums, oh * wp + ow, min(w, out_w - ow), y, n, c0, oh, ow, square)


@functools.cache
def forward_channels_job(dtype) -> Job:
    """The job of :func:`conv2d_forward_channels` for arrays of ``dtype``."""
    a1 = array(dtype, 1)
    return Job(_forward_task, (array(dtype, 4), array(dtype, 3), a1, INTS) + (INT,) * 9
               + (array(dtype, 4), a1, a1))


@njit(parallel=True, cache=True)
def conv2d_forward_channels(x, packed, b, taps, top, left, hp, wp, stride, by_rows, per_task,
                            y, job):
    """Writes the convolution's outputs y (N, C_out, OH, OW) at ``stride`` (1, 2 or 4, both
    axes) from x (N, C_in, H, W) zero-padded by ``top`` rows and ``left`` columns to hp
    rows wp apart (:func:`shared_padding_width`), with the weights :func:`pack` packs and
    the :func:`grid_taps` of that padded input, by tiles along the output rows or
    (``by_rows`` 0, stride 1) along the flat grid. Each task owns a sample and ``per_task``
    blocks of channels; ``job``: :func:`forward_channels_job` of the dtype."""
    n_batch, out_h, out_w = y.shape[0], y.shape[2], y.shape[3]
    n_blocks, block_size = packed.shape[0], packed.shape[2]
    if by_rows:
        n_tiles = out_h * -(-out_w // TILE_PIXELS)
    else:
        n_tiles = -(-((out_h - 1) * wp + out_w) // TILE_PIXELS)
    positions = n_tiles * TILE_PIXELS  # a slot of TILE_PIXELS positions per tile
    groups = -(-n_blocks // per_task)
    for task in prange(n_batch * groups):
        group = task % groups
        job(x, packed, b, taps, np.int64(task // groups), np.int64(group * per_task),
            np.int64(min(n_blocks, (group + 1) * per_task)), top, left, hp, wp, stride,
            by_rows, y, np.empty(positions * block_size, dtype=x.dtype),
            np.empty(x.shape[1] * hp * wp + wp, dtype=x.dtype))


def pack(w):
    """w (C_out, C_in, KH, KW) as (C_out / 2W, K, 2W): blocks of :func:`block_channels`
    output channels, contiguous per tap k = (c, kh, kw)."""
    c_out, c_in, kh, kw = w.shape
    size = block_channels(w.itemsize)
    return np.ascontiguousarray(w.reshape(c_out // size, size, c_in * kh * kw).transpose(0, 2, 1))


def grid_taps(c_in, kernel, hp, wp, dilation):
    """Per tap k = (c, kh, kw), in weight order, its position in a sample's flat input padded
    to (hp, wp): ``c * hp * wp + kh * dilation_h * wp + kw * dilation_w``."""
    c, rows, cols = np.meshgrid(np.arange(c_in), np.arange(kernel[0]) * dilation[0],
                                np.arange(kernel[1]) * dilation[1], indexing="ij")
    return (c * hp * wp + rows * wp + cols).reshape(-1).astype(np.int64)


# ------------------------------------------------------------------------------ weight gradient

TASKS = 16  # the weight gradient's parallel tasks, at least: a few per thread
GY_SAMPLES_BYTES = 1 << 18  # gy's block of channels for the samples a tile sums at once:
# 256 KiB, L2-resident while every tap group of the task reads it


@njit(inline="always")
def channels_last_rows(gy, n, c0, oh0, oh1, dst, square):
    """dst[p * 2W:(p + 1) * 2W] = gy[n, c0:c0 + 2W] at output p = (oh - oh0) * OW + ow, for
    the rows oh0 <= oh < oh1 of gy (N, C, OH, OW): W x W squares (W channels x W positions
    of a row) transposed in registers (:func:`..layout._move_square`; ``square``, W * W
    values, is its scratch for a part of a square)."""
    w = simd.width(square)
    channels, out_h, out_w = gy.shape[1], gy.shape[2], gy.shape[3]
    flat = gy.reshape(gy.size)
    for half in range(0, 2 * w, w):
        for oh in range(oh0, oh1):
            for ow in range(0, out_w, w):
                _move_square(flat, ((n * channels + c0 + half) * out_h + oh) * out_w + ow,
                             out_h * out_w, w, min(w, out_w - ow), dst,
                             ((oh - oh0) * out_w + ow) * 2 * w + half, 2 * w, square)


@njit(parallel=True, cache=True)
def _gy_blocks(gy, size, gyt):
    """Writes gyt, gy (N, C, OH, OW) in blocks of ``size`` (2W) channels, channels last:
    (N, C / size, OH * OW * size), output p = oh * OW + ow of channel c at
    [n, c // size, p * size + c % size] (:func:`channels_last_rows`); returns the bias
    gradient, gy summed over all but C."""
    n_batch, c_out, out_h, out_w = gy.shape
    w = simd.width(gy[0, 0, 0])
    n_blocks = c_out // size
    length = out_h * out_w
    partial = np.empty((n_batch, c_out), dtype=np.float64)
    for n in prange(n_batch):
        square = np.empty(w * w, dtype=gy.dtype)
        for block in range(n_blocks):
            dst = gyt[n, block]
            channels_last_rows(gy, n, block * size, 0, out_h, dst, square)
            # the bias gradient, from the rows just written: a vector of sums per w channels
            for c0 in range(0, size, w):
                sums = simd.splat(square, 0)
                for p in range(length):
                    sums = simd.fma(simd.splat(square, 1), simd.load_first(dst, p * size + c0, w),
                                    sums)
                simd.store_first(square, 0, sums, w)
                for j in range(w):
                    partial[n, block * size + c0 + j] = square[j]
    grad_b = np.empty(c_out, dtype=gy.dtype)
    for c in range(c_out):  # samples in order: no dependence on the threads
        total = 0.0
        for n in range(n_batch):
            total += partial[n, c]
        grad_b[c] = total
    return grad_b


@njit(cache=True, fastmath=FAST)
def add_weight_grad_tile(xflat, gyt, taps, k0, block, n0, n1, rows, row_length, row_step,
                         step, sums):
    """sums[(k0 + t) * 2W:(k0 + t + 1) * 2W] += the sums over samples n0:n1 and output
    positions p = r * row_length + j (rows r, j < row_length) of
    xflat[n, taps[k0 + t] + r * row_step + j * step] * gyt[n, block, p * 2W:(p + 1) * 2W],
    for the TILE_PIXELS taps t (``taps`` holds whole tiles); ``step``, the stride along a
    row, is passed as a constant. Without :data:`WIDE` only the first six taps are read."""
    w = simd.width(sums)
    o = k0 * 2 * w
    s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51 = _load_six(sums, o)
    t0, t1, t2, t3 = UINT(taps[k0]), UINT(taps[k0 + 1]), UINT(taps[k0 + 2]), UINT(taps[k0 + 3])
    t4, t5 = UINT(taps[k0 + 4]), UINT(taps[k0 + 5])
    s60, s61, s70, s71, s80, s81, s90, s91, sa0, sa1, sb0, sb1 = _last_six(sums, o)
    k6 = k0 + 6 if WIDE else k0  # the last six taps; without WIDE the first six, unused
    t6, t7, t8 = UINT(taps[k6]), UINT(taps[k6 + 1]), UINT(taps[k6 + 2])
    t9, ta, tb = UINT(taps[k6 + 3]), UINT(taps[k6 + 4]), UINT(taps[k6 + 5])
    for n in range(n0, n1):
        xs, g = xflat[n], gyt[n, block]
        q = UINT(0)
        for r in range(UINT(0), UINT(rows)):
            start = r * UINT(row_step)
            for j in range(UINT(0), UINT(row_length)):
                p = start + j * UINT(step)
                g0 = simd.load_first(g, q, w)
                g1 = simd.load_first(g, q + UINT(w), w)
                q += UINT(2 * w)
                s00, s01 = _broadcast_fma(xs, t0 + p, g0, g1, s00, s01)
                s10, s11 = _broadcast_fma(xs, t1 + p, g0, g1, s10, s11)
                s20, s21 = _broadcast_fma(xs, t2 + p, g0, g1, s20, s21)
                s30, s31 = _broadcast_fma(xs, t3 + p, g0, g1, s30, s31)
                s40, s41 = _broadcast_fma(xs, t4 + p, g0, g1, s40, s41)
                s50, s51 = _broadcast_fma(xs, t5 + p, g0, g1, s50, s51)
                if WIDE:
                    s60, s61 = _broadcast_fma(xs, t6 + p, g0, g1, s60, s61)
                    s70, s71 = _broadcast_fma(xs, t7 + p, g0, g1, s70, s71)
                    s80, s81 = _broadcast_fma(xs, t8 + p, g0, g1, s80, s81)
                    s90, s91 = _broadcast_fma(xs, t9 + p, g0, g1, s90, s91)
                    sa0, sa1 = _broadcast_fma(xs, ta + p, g0, g1, sa0, sa1)
                    sb0, sb1 = _broadcast_fma(xs, tb + p, g0, g1, sb0, sb1)
    _store_pairs(sums, o, ((s00, s01), (s10, s11), (s20, s21), (s30, s31), (s40, s41),
                           (s50, s51)))
    if WIDE:
        _store_pairs(sums, o + 12 * w, ((s60, s61), (s70, s71), (s80, s81), (s90, s91),
                                        (sa0, sa1), (sb0, sb1)))


@njit(cache=True, fastmath=FAST)
def _weight_grad_task(xflat, gyt, taps, block, k0, k1, per_chunk, out_h, out_w, wp, stride,
                      sums):
    """sums (K' * 2W) of block ``block``'s channels, taps k0:k1 (whole tiles): the weight
    gradient's sums over all samples, per_chunk samples at a time (each tile of the task
    reads that chunk's gy while it is in cache), by the out_h rows of out_w outputs (the
    input's rows stride * wp apart)."""
    w = simd.width(sums)
    sums[k0 * 2 * w:k1 * 2 * w] = 0
    for n0 in range(0, xflat.shape[0], per_chunk):
        n1 = min(xflat.shape[0], n0 + per_chunk)
        for k in range(k0, k1, TILE_PIXELS):
            if stride == 1:
                add_weight_grad_tile(xflat, gyt, taps, k, block, n0, n1, out_h, out_w, wp, 1, sums)
            elif stride == 2:
                add_weight_grad_tile(xflat, gyt, taps, k, block, n0, n1, out_h, out_w, 2 * wp,
                                     2, sums)
            else:
                add_weight_grad_tile(xflat, gyt, taps, k, block, n0, n1, out_h, out_w, 4 * wp,
                                     4, sums)


@functools.cache
def weight_grad_channels_job(dtype) -> Job:
    """The job of :func:`conv2d_weight_grad_channels` for arrays of ``dtype``."""
    return Job(_weight_grad_task, (array(dtype, 2), array(dtype, 3), INTS) + (INT,) * 8
               + (array(dtype, 1),))


@njit(parallel=True, cache=True)
def conv2d_weight_grad_channels(gy, xflat, taps, wp, stride, per_chunk, per_task, gyt, job):
    """``(grad_w, grad_b)`` of the convolution of :func:`conv2d_forward_channels` (stride 1,
    2 or 4) at gy (N, C_out, OH, OW): grad_w as (C_out, K) (K = len(taps)), xflat and taps as
    there. Each task sums ``per_task`` tiles of taps over per_chunk samples at a time.
    ``gyt`` is scratch for :func:`_gy_blocks` (N, C_out / 2W, OH * OW * 2W); ``job``:
    :func:`weight_grad_channels_job` of the dtype.

    Each task owns a block of channels and a run of whole tiles of taps and sums over every
    sample, in order: no partial gradients, no dependence on the number of threads."""
    c_out, out_h, out_w = gy.shape[1], gy.shape[2], gy.shape[3]
    k_size = taps.size
    size = 2 * simd.width(xflat[0])
    n_blocks = c_out // size
    n_tiles = -(-k_size // TILE_PIXELS)
    whole = np.empty(n_tiles * TILE_PIXELS, dtype=np.int64)  # the last tap repeated
    whole[:k_size] = taps
    whole[k_size:] = taps[k_size - 1]
    grad_b = _gy_blocks(gy, size, gyt)
    n_parts = -(-n_tiles // per_task)
    sums = np.empty((n_blocks, n_tiles * TILE_PIXELS * size), dtype=gy.dtype)
    for task in prange(n_blocks * n_parts):
        block, part = task // n_parts, task % n_parts
        job(xflat, gyt, whole, np.int64(block), np.int64(part * per_task * TILE_PIXELS),
            np.int64(min(n_tiles, (part + 1) * per_task) * TILE_PIXELS), per_chunk,
            np.int64(out_h), np.int64(out_w), wp, stride, sums[block])
    grad_w = np.empty((c_out, k_size), dtype=gy.dtype)
    for block in range(n_blocks):
        for j in range(size):
            for k in range(k_size):
                grad_w[block * size + j, k] = sums[block, k * size + j]
    return grad_w, grad_b


# ------------------------------------------------------------------------------ entry points

def tiles_by_rows(stride, out_h, out_w, wp):
    """Whether the forward's tiles run along the output rows: at stride 2 or 4, and at stride 1
    where they compute fewer positions than tiles along the flat grid, whose rows hold
    ``wp - out_w`` padding columns (12 outputs a row, tiles of 12: 144 positions for 168 on
    the grid)."""
    if out_w < TILE_PIXELS:
        return False
    rows = out_h * -(-out_w // TILE_PIXELS) * TILE_PIXELS
    grid = -(-((out_h - 1) * wp + out_w) // TILE_PIXELS) * TILE_PIXELS
    return tuple(stride) != (1, 1) or rows <= grid


def shared_padding_width(width, left, right, out_h, out_w):
    """The padded width of the forward's scratch: ``width + max(left, right)``, each row's
    right padding the next row's left (a 3x3 kernel's padding of 1 on DenseNet's 8x8 maps:
    6 tiles on the flat grid where 7 took every padding column; a row's last taps read on
    into the next row's zeros, the last row's into the zeros after the sample), or the
    whole ``left + width + right`` where that grid would hold no tile."""
    narrow = width + max(left, right)
    if (out_h - 1) * narrow + out_w >= TILE_PIXELS:
        return narrow
    return left + width + right


def forward_channels(x, w, b, padding, stride, dilation, out_h, out_w):
    """:func:`conv2d_forward_channels` of x (N, C_in, H, W), zero-padded by ``padding``
    ((top, bottom), (left, right), none negative): a task a sample where the batch makes
    :data:`FORWARD_TASKS` tasks, else a sample's blocks shared among tasks."""
    (top, bottom), (left, right) = padding
    n_batch, c_in, height, width = x.shape
    hp, wp = top + height + bottom, shared_padding_width(width, left, right, out_h, out_w)
    n_blocks = w.shape[0] // block_channels(x.itemsize)
    per_task = -(-n_blocks // min(n_blocks, -(-FORWARD_TASKS // n_batch)))
    y = buffers.empty((n_batch, w.shape[0], out_h, out_w), x.dtype)
    conv2d_forward_channels(np.ascontiguousarray(x), pack(w), b,
                            grid_taps(c_in, w.shape[2:], hp, wp, dilation), top, left, hp, wp,
                            stride[0], int(tiles_by_rows(stride, out_h, out_w, wp)), per_task,
                            y, forward_channels_job(x.dtype))
    return y


def weight_grad_channels(gy, xp, kernel, stride, dilation):
    """``(grad_w (C_out, C_in, KH, KW), grad_b)`` by :func:`conv2d_weight_grad_channels` of
    the padded input xp (N, C_in, Hp, Wp): at least :data:`TASKS` tasks where there are
    tiles for them, and chunks of samples whose gy blocks fit :data:`GY_SAMPLES_BYTES`."""
    n_batch, c_in, hp, wp = xp.shape
    c_out, out_h, out_w = gy.shape[1:]
    size = block_channels(xp.itemsize)
    length = out_h * out_w
    n_tiles = -(-c_in * kernel[0] * kernel[1] // TILE_PIXELS)
    per_chunk = max(1, min(n_batch, GY_SAMPLES_BYTES // (length * size * xp.itemsize)))
    per_task = max(1, n_tiles * (c_out // size) // TASKS)
    gyt = buffers.empty((n_batch, c_out // size, length * size), gy.dtype)
    grad_w, grad_b = conv2d_weight_grad_channels(
        gy, xp.reshape(n_batch, c_in * hp * wp), grid_taps(c_in, kernel, hp, wp, dilation), wp,
        stride[0], per_chunk, per_task, gyt, weight_grad_channels_job(xp.dtype))
    return grad_w.reshape(c_out, c_in, *kernel), grad_b
