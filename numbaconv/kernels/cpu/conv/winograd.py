"""Winograd's minimal filtering F(2x2, 3x3) for 3x3 convolutions at stride 1 (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", 2015): every 2x2 block of outputs (a
*tile*) from the 4x4 block of padded input under it in 16 products per input channel where
the direct sums take 36, 2.25 times fewer multiply-adds.

With the transforms (``d`` a tile's 4x4 input of one channel, ``g`` a 3x3 kernel)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

a tile's outputs are ``A^T M A + bias`` with ``M = sum over input channels of (G g G^T) *
(B^T d B)`` (elementwise): for each of the 16 elements xi, a matrix product of the
transformed weights U_xi (C_out x C_in) and the transformed input V_xi (C_in x tiles), which
:func:`.channels.add_tile` computes as it computes a convolution's taps (the input channels
here take the taps' place, the tiles the positions').

    x      (N, C_in, H, W)             the input, unpadded
    packed (16, C_out / 2W, C_in * 2W) U, each block's 2W output channels contiguous
    y      (N, C_out, OH, OW)

A task owns a sample (or, on maps of fewer than 4 x :data:`.channels.TILE_PIXELS` tiles,
as many as fill whole runs of TILE_PIXELS tiles: :func:`samples_per_task`) and one or more
blocks of channels. It transforms its samples' input into V (each channel padded into a
small scratch with its even and odd columns apart, so that every step of the transform is a
vector of consecutive tiles; a channel's 16 rows of V written together), then, for each
block and each run of TILE_PIXELS tiles, the 16 products into a scratch that stays in L1
and the outputs' transform from it, and spreads the block's outputs to y
(:func:`.channels.spread`). The weight gradient (below) takes a band of rows of tiles at a
time where a sample's would not fit.

The transforms add and subtract, so an inf in x or w becomes NaN in outputs that the direct
sums leave at inf, and spreads to the tile's neighbours: a task checks that its outputs are
finite, and where one is not the convolution is computed again by the direct kernels.
Rounding differs from the direct sums' (the transforms' sums and the 16 products' are other
sums; the weights are transformed in float64): in float32, against a float64 reference,
ResNet's 64 channels on 24x24 were within 3.5e-7 of the largest output (the direct kernels
within 1.1e-6).
"""

import functools
import math

import numpy as np
from numba import njit, prange

from .. import buffers, simd
from ..jobs import INT, Job, array
from .channels import (
    FORWARD_TASKS,
    TILE_PIXELS,
    add_tile,
    add_weight_grad_tile,
    block_channels,
    channels_fit,
    channels_last_rows,
    forward_channels,
    spread,
    weight_grad_channels,
)
from .common import FAST, channel_sums

MIN_OUT_MAP = 12  # outputs along each side from which the transforms pay: ResNet's 24x24 and
# 12x12 maps at 96x96 input (64 and 128 channels, batch 64, 1 thread: forward 0.83x and 0.81x
# the direct kernels' time); on 7x7 and 6x6 the unrolled kernels ran 1.29x and 1.08x faster
MIN_WEIGHT_GRAD_TILES = 4 * TILE_PIXELS  # tiles from which the weight gradient's products
# (a band of a sample's rows of tiles at a time) pay: 24x24 outputs' 144 (64 channels, batch
# 64, 1 thread: 0.82x the direct kernels' time), 56x56's bands of 9 rows (64 channels, batch
# 32: 0.86x); 12x12's 36 took 1.32x (128 channels)
MAX_PARTIAL_BYTES = 2 << 20  # a weight-gradient task's partial sums (16 x C_out x C_in) at
# most: 128 channels' 1.1 MB (on 28x28, batch 32: 0.87x the direct kernels' time); 256's 4.3
# MB ran 1.12x (14x14, batch 64)
MAX_SCRATCH_BYTES = 1 << 20  # a task's transformed input at most, so that it stays in L2
# while the products read it once per block of channels: the forward takes maps whose samples
# fit (a 56x56 map's 64 channels, 3.2 MB, do not; its forward in bands of rows ran no faster
# than the direct kernels), the weight gradient bands of rows


def winograd_fits(weight_shape, groups, stride, dilation, itemsize) -> bool:
    """Whether a layer's kernel and channels suit these kernels, at some map size: a 3x3
    kernel at stride 1 and dilation 1, channels that fit the output-channel kernels' blocks
    (:func:`.channels.channels_fit`)."""
    return (tuple(weight_shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and channels_fit(weight_shape, groups, itemsize))


def use_winograd(weight_shape, groups, stride, dilation, out_h, out_w, itemsize) -> bool:
    """Whether a convolution takes these kernels: where :func:`winograd_fits`, on outputs of
    at least :data:`MIN_OUT_MAP` a side whose task's transformed input (16 values a tile and
    input channel) fits :data:`MAX_SCRATCH_BYTES`."""
    return (winograd_fits(weight_shape, groups, stride, dilation, itemsize)
            and min(out_h, out_w) >= MIN_OUT_MAP
            and 16 * weight_shape[1] * _task_tiles(out_h, out_w) * itemsize
            <= MAX_SCRATCH_BYTES)


def use_winograd_weight_grad(weight_shape, groups, stride, dilation, out_h, out_w,
                             itemsize) -> bool:
    """Whether a convolution's weight gradient takes these kernels: where
    :func:`winograd_fits`, on outputs of at least :data:`MIN_OUT_MAP` a side, whose rows of
    tiles are transformed a band at a time (:func:`band_rows`, at least one row within
    :data:`MAX_SCRATCH_BYTES`) of :data:`MIN_WEIGHT_GRAD_TILES` tiles or more, with a task's
    partial sums within :data:`MAX_PARTIAL_BYTES`."""
    c_out, c_in = weight_shape[:2]
    tiles_w = (out_w + 1) // 2
    partial = 16 * c_out * -(-c_in // TILE_PIXELS) * TILE_PIXELS * itemsize
    return (winograd_fits(weight_shape, groups, stride, dilation, itemsize)
            and min(out_h, out_w) >= MIN_OUT_MAP and partial <= MAX_PARTIAL_BYTES
            and 16 * c_in * tiles_w * itemsize <= MAX_SCRATCH_BYTES
            and band_rows(c_in, out_h, out_w, itemsize) * tiles_w
            >= MIN_WEIGHT_GRAD_TILES)


def _task_tiles(out_h, out_w) -> int:
    """A task's tiles: its samples' (:func:`samples_per_task`)."""
    return samples_per_task(out_h, out_w) * ((out_h + 1) // 2) * ((out_w + 1) // 2)


@njit(inline="always")
def _g_times(a0, a1, a2):
    """G (a0, a1, a2): four values from three."""
    return a0, (a0 + a1 + a2) * 0.5, (a0 - a1 + a2) * 0.5, a2


@njit(parallel=True, cache=True)
def transform_weights(w, packed):
    """packed[xi, block, ci * 2W + lane] = (G w[co, ci] G^T)[xi // 4, xi % 4] for output
    channel co = block * 2W + lane (w (C_out, C_in, 3, 3); packed (16, C_out / 2W, C_in * 2W)),
    computed in float64."""
    c_in = w.shape[1]
    size = packed.shape[2] // c_in
    for block in prange(packed.shape[1]):
        for ci in range(c_in):
            for lane in range(size):
                g = w[block * size + lane, ci]
                o = ci * size + lane
                # the columns of G g, then each of its four rows times G^T
                c0 = _g_times(np.float64(g[0, 0]), np.float64(g[1, 0]), np.float64(g[2, 0]))
                c1 = _g_times(np.float64(g[0, 1]), np.float64(g[1, 1]), np.float64(g[2, 1]))
                c2 = _g_times(np.float64(g[0, 2]), np.float64(g[1, 2]), np.float64(g[2, 2]))
                for i in range(4):
                    u = _g_times(c0[i], c1[i], c2[i])
                    for j in range(4):
                        packed[4 * i + j, block, o] = u[j]


@njit(inline="always")
def _fill_planes(row, at, left, count, evens, odds):
    """The even and odd columns of a padded row: row[:count] lands at padded columns left,
    left + 1, ..., column c's value at evens[at + c // 2] (c even) or odds[at + c // 2] (c
    odd)."""
    w = simd.width(row)
    pairs = count // 2
    # x's pairs (x[2k], x[2k + 1]) land at padded columns (left + 2k, left + 2k + 1)
    first, second = (evens, odds) if left % 2 == 0 else (odds, evens)
    at_first = at + left // 2
    at_second = at + (left + 1) // 2
    for k in range(0, pairs, w):
        n = min(w, pairs - k)
        e, o = simd.evens_odds(row, 2 * k, n)
        simd.store_first(first, at_first + k, e, n)
        simd.store_first(second, at_second + k, o, n)
    if count % 2:
        first[at_first + pairs] = row[count - 1]


@njit(inline="always")
def _rows_transform(d0, d1, d2, d3):
    """The rows of B^T d for rows d0..d3 of d."""
    return simd.sub(d0, d2), simd.add(d1, d2), simd.sub(d2, d1), simd.sub(d1, d3)


@njit(inline="always")
def _columns_transform(v, o, step, e0, o0, e1, o1, m):
    """Column j of (r B), r a row of B^T d, for m consecutive tiles, to v[o + j * step:][:m]:
    e0, o0, e1, o1 the row's columns 2tw, 2tw + 1, 2tw + 2, 2tw + 3 as vectors along the
    tiles."""
    simd.store_first(v, o, simd.sub(e0, e1), m)
    simd.store_first(v, o + step, simd.add(o0, e1), m)
    simd.store_first(v, o + 2 * step, simd.sub(e1, o0), m)
    simd.store_first(v, o + 3 * step, simd.sub(o0, o1), m)


@njit(inline="always")
def _transform_tiles(evens, odds, r, half, tw, m, v, o, step):
    """B^T d B of m consecutive tiles of a row (:func:`_input_transform`): their padded
    rows from r on (``half`` values a row) in ``evens`` and ``odds``; xi's values to
    v[o + xi * step:][:m]."""
    # the four rows' columns 2tw, 2tw + 1, 2tw + 2, 2tw + 3 as vectors along tw
    c0 = _rows_transform(simd.load_first(evens, r + tw, m),
                         simd.load_first(evens, r + half + tw, m),
                         simd.load_first(evens, r + 2 * half + tw, m),
                         simd.load_first(evens, r + 3 * half + tw, m))
    c1 = _rows_transform(simd.load_first(odds, r + tw, m),
                         simd.load_first(odds, r + half + tw, m),
                         simd.load_first(odds, r + 2 * half + tw, m),
                         simd.load_first(odds, r + 3 * half + tw, m))
    c2 = _rows_transform(simd.load_first(evens, r + tw + 1, m),
                         simd.load_first(evens, r + half + tw + 1, m),
                         simd.load_first(evens, r + 2 * half + tw + 1, m),
                         simd.load_first(evens, r + 3 * half + tw + 1, m))
    c3 = _rows_transform(simd.load_first(odds, r + tw + 1, m),
                         simd.load_first(odds, r + half + tw + 1, m),
                         simd.load_first(odds, r + 2 * half + tw + 1, m),
                         simd.load_first(odds, r + 3 * half + tw + 1, m))
    # row i of B^T d, its columns transformed: xi = 4i + j
    _columns_transform(v, o, step, c0[0], c1[0], c2[0], c3[0], m)
    _columns_transform(v, o + 4 * step, step, c0[1], c1[1], c2[1], c3[1], m)
    _columns_transform(v, o + 8 * step, step, c0[2], c1[2], c2[2], c3[2], m)
    _columns_transform(v, o + 12 * step, step, c0[3], c1[3], c2[3], c3[3], m)


@njit(inline="always")  # in both jobs (no function of its own that two processes could compile)
def _input_transform(x, n0, n1, top, left, row0, tiles_h, tiles_w, v, planes):
    """v[(16 * ci + xi) * T + t] = (B^T d B)[xi // 4, xi % 4] of tile t = (n - n0) * tiles_h
    * tiles_w + th * tiles_w + tw, d the 4x4 input of channel ci at padded rows 2(row0 +
    th)..2(row0 + th) + 3 and columns 2tw..2tw + 3 of sample n (n0 <= n < n1): ``tiles_h``
    rows of tiles from row ``row0`` on; T = ``v.size // (16 * C_in)``, the tiles past the
    samples' zero. A channel's 16 rows are written together, in cache.
    ``planes`` holds a padded channel's even and odd columns apart, 2 * (2 * tiles_h + 2) *
    (tiles_w + 1) values."""
    c_in, height, width = x.shape[1], x.shape[2], x.shape[3]
    w = simd.width(v)
    tiles = v.size // (16 * c_in)
    used = (n1 - n0) * tiles_h * tiles_w
    rows, half = 2 * tiles_h + 2, tiles_w + 1
    plane = rows * half
    evens, odds = planes[:plane], planes[plane:]
    count = min(width, 2 * half - left)  # x's columns the tiles read
    for row in range(16 * c_in):
        v[row * tiles + used:(row + 1) * tiles] = 0
    for n in range(n0, n1):
        for ci in range(c_in):
            planes[:] = 0
            for r in range(rows):
                h = 2 * row0 + r - top
                if 0 <= h < height:
                    _fill_planes(x[n, ci, h], r * half, left, count, evens, odds)
            for th in range(tiles_h):
                for tw in range(0, tiles_w, w):
                    t = (n - n0) * tiles_h * tiles_w + th * tiles_w + tw
                    _transform_tiles(evens, odds, 2 * th * half, half, tw, min(w, tiles_w - tw),
                                     v, 16 * ci * tiles + t, tiles)


@njit(inline="always")
def _columns_out(m0, m1, m2, m3):
    """The two columns of A^T (m0 m1 m2 m3) for the row vectors m0..m3: (A^T M)'s rows."""
    return simd.add(simd.add(m0, m1), m2), simd.sub(simd.sub(m1, m2), m3)


@njit(inline="always")
def _outputs(sums, o, step, bias):
    """A tile's four outputs A^T M A + bias, (0, 0), (0, 1), (1, 0), (1, 1), for W channels:
    M[i, j] at sums[o + (4i + j) * step]."""
    w = simd.width(sums)
    p0, q0 = _columns_out(simd.load_first(sums, o, w), simd.load_first(sums, o + 4 * step, w),
                          simd.load_first(sums, o + 8 * step, w),
                          simd.load_first(sums, o + 12 * step, w))
    p1, q1 = _columns_out(simd.load_first(sums, o + step, w),
                          simd.load_first(sums, o + 5 * step, w),
                          simd.load_first(sums, o + 9 * step, w),
                          simd.load_first(sums, o + 13 * step, w))
    p2, q2 = _columns_out(simd.load_first(sums, o + 2 * step, w),
                          simd.load_first(sums, o + 6 * step, w),
                          simd.load_first(sums, o + 10 * step, w),
                          simd.load_first(sums, o + 14 * step, w))
    p3, q3 = _columns_out(simd.load_first(sums, o + 3 * step, w),
                          simd.load_first(sums, o + 7 * step, w),
                          simd.load_first(sums, o + 11 * step, w),
                          simd.load_first(sums, o + 15 * step, w))
    y00, y01 = _columns_out(p0, p1, p2, p3)
    y10, y11 = _columns_out(q0, q1, q2, q3)
    return (simd.add(y00, bias), simd.add(y01, bias), simd.add(y10, bias),
            simd.add(y11, bias))


@njit(inline="always")
def _place_tile(sums, o, step, bias, ys, first, out_h, out_w, oh, ow, check):
    """A tile's outputs for W channels (:func:`_outputs`) at ys[first + ((oh + a) * out_w +
    ow + b) * 2W:][:W] where inside the map; ``check`` plus their (v - v) (0 where finite)."""
    w = simd.width(sums)
    y00, y01, y10, y11 = _outputs(sums, o, step, bias)
    check = simd.add(check, simd.add(simd.add(simd.sub(y00, y00), simd.sub(y01, y01)),
                                     simd.add(simd.sub(y10, y10), simd.sub(y11, y11))))
    at = first + (oh * out_w + ow) * 2 * w
    simd.store_first(ys, at, y00, w)
    if ow + 1 < out_w:
        simd.store_first(ys, at + 2 * w, y01, w)
    if oh + 1 < out_h:
        simd.store_first(ys, at + out_w * 2 * w, y10, w)
        if ow + 1 < out_w:
            simd.store_first(ys, at + (out_w + 1) * 2 * w, y11, w)
    return check


@njit(cache=True, fastmath=FAST)
def _forward_task(x, packed, b, top, left, n0, n1, block0, block1, y, v, sums, ys, planes,
                  square, finite, task):
    """y[n0:n1, blocks block0:block1 of 2W channels] for :func:`conv2d_forward_winograd`;
    finite[task] = whether they are all finite. ``v`` (16 * C_in * T values, T the task's
    tiles rounded up to whole TILE_PIXELS), ``sums`` (16 * TILE_PIXELS * 2W), ``ys`` (the
    samples' outputs, 2W values each), ``planes`` (:func:`_input_transform`'s) and ``square``
    (W * W) are scratch."""
    c_in = x.shape[1]
    out_h, out_w = y.shape[2], y.shape[3]
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    w = simd.width(v)
    size = 2 * w
    tiles = v.size // (16 * c_in)  # the task's tiles, whole groups of TILE_PIXELS
    used = (n1 - n0) * tiles_h * tiles_w
    _input_transform(x, n0, n1, top, left, 0, tiles_h, tiles_w, v, planes)
    taps = np.arange(c_in) * (16 * tiles)  # input channel ci's row of V_xi
    first_tap = np.int64(0)  # an int64, as the direct kernels' calls pass (not a literal)
    check = simd.splat(v, v.dtype.type(0))
    for block in range(block0, block1):
        c0 = block * size
        bias0, bias1 = simd.load_first(b, c0, w), simd.load_first(b, c0 + w, w)
        s = th = tw = 0  # the next tile's sample and place
        for g in range(0, tiles, TILE_PIXELS):
            sums[:] = 0
            for xi in range(16):
                add_tile(v, packed[xi, block], taps, first_tap, c_in, xi * tiles + g, 1, sums,
                         xi * TILE_PIXELS)
            for j in range(min(TILE_PIXELS, used - g)):
                first = s * out_h * out_w * size
                check = _place_tile(sums, j * size, TILE_PIXELS * size, bias0, ys, first,
                                    out_h, out_w, 2 * th, 2 * tw, check)
                check = _place_tile(sums, j * size + w, TILE_PIXELS * size, bias1, ys,
                                    first + w, out_h, out_w, 2 * th, 2 * tw, check)
                tw += 1
                if tw == tiles_w:
                    th, tw = th + 1, 0
                    if th == tiles_h:
                        s, th = s + 1, 0
        for s in range(n1 - n0):
            for oh in range(out_h):
                for ow in range(0, out_w, w):
                    spread(ys, (s * out_h + oh) * out_w + ow, min(w, out_w - ow), y, n0 + s,
                           c0, oh, ow, square)
    finite[task] = simd.total(check) == 0


@functools.cache
def forward_winograd_job(dtype) -> Job:
    """The job of :func:`conv2d_forward_winograd` for arrays of ``dtype``."""
    a1 = array(dtype, 1)
    return Job(_forward_task, (array(dtype, 4), array(dtype, 3), a1) + (INT,) * 6
               + (array(dtype, 4), a1, a1, a1, a1, a1, array(np.bool_, 1), INT))


@njit(parallel=True, cache=True)
def conv2d_forward_winograd(x, packed, b, top, left, samples_per_group, blocks_per_task, y,
                            finite, job):
    """Writes y (N, C_out, OH, OW), the stride-1 3x3 convolution of x (N, C_in, H, W)
    zero-padded by ``top`` rows and ``left`` columns (and as many as the outputs need after),
    with :func:`transform_weights`'s ``packed`` weights and bias b; finite[task] as each
    task's outputs are finite. A task owns ``samples_per_group`` samples and
    ``blocks_per_task`` blocks of channels; ``job``: :func:`forward_winograd_job` of the
    dtype."""
    n_batch, c_in = x.shape[0], x.shape[1]
    out_h, out_w = y.shape[2], y.shape[3]
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    n_blocks, size = packed.shape[1], packed.shape[2] // c_in
    tiles = -(-samples_per_group * tiles_h * tiles_w // TILE_PIXELS) * TILE_PIXELS
    n_groups = -(-n_batch // samples_per_group)
    block_tasks = -(-n_blocks // blocks_per_task)  # tasks a group of samples
    w = size // 2
    for task in prange(n_groups * block_tasks):
        part = task % block_tasks
        n0 = task // block_tasks * samples_per_group
        job(x, packed, b, top, left, np.int64(n0),
            np.int64(min(n_batch, n0 + samples_per_group)), np.int64(part * blocks_per_task),
            np.int64(min(n_blocks, (part + 1) * blocks_per_task)), y,
            np.empty(16 * c_in * tiles, dtype=x.dtype),
            np.empty(16 * TILE_PIXELS * size, dtype=x.dtype),
            np.empty(samples_per_group * out_h * out_w * size, dtype=x.dtype),
            np.empty(2 * (2 * tiles_h + 2) * (tiles_w + 1), dtype=x.dtype),
            np.empty(w * w, dtype=x.dtype), finite, np.int64(task))


def band_rows(c_in, out_h, out_w, itemsize) -> int:
    """Rows of tiles the weight gradient transforms at once: all of a sample's, or as many as
    keep their transformed input within :data:`MAX_SCRATCH_BYTES` (9 of a 56x56 map's 28 at
    64 channels)."""
    per_row = 16 * c_in * ((out_w + 1) // 2) * itemsize
    return max(1, min((out_h + 1) // 2, MAX_SCRATCH_BYTES // per_row))


def samples_per_task(out_h, out_w) -> int:
    """A task's samples: one where a sample has four tiles of TILE_PIXELS positions or more
    (24x24 outputs' 144 tiles), else as many as make whole runs of TILE_PIXELS tiles (two
    for 12x13 outputs' 42 with AVX-512's runs of 12)."""
    tiles = ((out_h + 1) // 2) * ((out_w + 1) // 2)
    if tiles >= 4 * TILE_PIXELS:
        return 1
    return TILE_PIXELS // math.gcd(tiles, TILE_PIXELS)


def forward_winograd(x, w, b, padding, out_h, out_w):
    """The stride-1 3x3 convolution of x (N, C_in, H, W) zero-padded by ``padding`` ((top,
    bottom), (left, right), none negative) with w (C_out, C_in, 3, 3) and b (C_out,), shape
    (N, C_out, out_h, out_w), by :func:`conv2d_forward_winograd`; by the direct kernels
    (:func:`.channels.forward_channels`) where an output is not finite."""
    (top, _), (left, _) = padding
    n_batch = x.shape[0]
    size = block_channels(x.itemsize)
    n_blocks = w.shape[0] // size
    samples_per_group = min(n_batch, samples_per_task(out_h, out_w))
    n_groups = -(-n_batch // samples_per_group)
    blocks_per_task = -(-n_blocks // min(n_blocks, -(-FORWARD_TASKS // n_groups)))
    packed = np.empty((16, n_blocks, w.shape[1] * size), dtype=x.dtype)
    transform_weights(w, packed)
    y = buffers.empty((n_batch, w.shape[0], out_h, out_w), x.dtype)
    finite = np.empty(n_groups * -(-n_blocks // blocks_per_task), dtype=np.bool_)
    conv2d_forward_winograd(np.ascontiguousarray(x), packed, b, top, left, samples_per_group,
                            blocks_per_task, y, finite, forward_winograd_job(x.dtype))
    if finite.all():
        return y
    return forward_channels(x, w, b, padding, (1, 1), (1, 1), out_h, out_w)


# --------------------------------------------------------------------------- weight gradient
#
# With y = A^T M A and M = sum over input channels of U * V (U = G g G^T), the gradient of a
# tile's M is A dy A^T (dy the tile's 2x2 output gradient, zero outside the map), of U_xi the
# sum over tiles of (A dy A^T)_xi * V_xi, and of g, G^T dU G: for each xi a product (C_out x
# tiles) x (tiles x C_in), summed over every tile of every sample, which
# :func:`.channels.add_weight_grad_tile` computes as it computes a convolution's weight
# gradient (the input channels in the taps' place, the tiles in the outputs').

WEIGHT_GRAD_TASKS = 16  # groups of samples at most, set by the batch whatever the number of
# threads: each task sums its samples' products into partial sums of its own, added in the
# order of the tasks
REDUCE_CHUNK = 4096  # partial sums a task of that addition adds up


@njit(inline="always")
def _a_times(a, b, zero):
    """(a, b) times A^T: four values from two."""
    return a, simd.add(a, b), simd.sub(a, b), simd.sub(zero, b)


@njit(inline="always")
def _output_gradient_tile(gys, o, right, below, row_stride, dm, at, step, zero):
    """dm[at + xi * step:][:W] = (A dy A^T)[xi // 4, xi % 4], dy the tile's output gradient
    for W channels at gys[o:] (its right column 2W values on where ``right``, its lower row
    ``row_stride`` on where ``below``; zero where they lie outside the map)."""
    w = simd.width(gys)
    y00 = simd.load_first(gys, o, w)
    y01 = simd.load_first(gys, o + 2 * w, w) if right else zero
    y10 = simd.load_first(gys, o + row_stride, w) if below else zero
    y11 = simd.load_first(gys, o + row_stride + 2 * w, w) if right and below else zero
    _store_row(dm, at, step, _a_times(y00, y01, zero))
    _store_row(dm, at + 4 * step, step, _a_times(simd.add(y00, y10), simd.add(y01, y11), zero))
    _store_row(dm, at + 8 * step, step, _a_times(simd.sub(y00, y10), simd.sub(y01, y11), zero))
    _store_row(dm, at + 12 * step, step,
               _a_times(simd.sub(zero, y10), simd.sub(zero, y11), zero))


@njit(inline="always")
def _store_row(dm, at, step, values):
    """dm[at + j * step:][:W] = values[j], j < 4."""
    w = simd.width(dm)
    simd.store_first(dm, at, values[0], w)
    simd.store_first(dm, at + step, values[1], w)
    simd.store_first(dm, at + 2 * step, values[2], w)
    simd.store_first(dm, at + 3 * step, values[3], w)


@njit(cache=True, fastmath=FAST)
def _weight_grad_task(gy, xp, n0, n1, band, taps, partial, v, dm, gys, planes, square):
    """partial (16, C_out / 2W, C' * 2W) = the sums over samples n0:n1 and their tiles of
    (A dy A^T)_xi [output channel] * V_xi [input channel] (C' the input channels rounded up
    to whole TILE_PIXELS; ``taps`` (16, C') each xi's rows of V, the last repeated), ``band``
    rows of tiles at a time. ``v`` (16 * C_in * T, T a band's tiles rounded up to whole
    TILE_PIXELS), ``dm`` (16, 1, 1, T * 2W), ``gys`` (a band's outputs, 2W values each),
    ``planes`` and ``square`` (W * W) are scratch."""
    out_h, out_w = gy.shape[2], gy.shape[3]
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    w = simd.width(v)
    size = 2 * w
    step = dm.shape[3]  # from one xi's row to the next
    zero = simd.splat(v, v.dtype.type(0))
    partial[:] = 0
    xflat = v.reshape(1, v.size)
    dms = dm.reshape(dm.size)
    for n in range(n0, n1):
        for row0 in range(0, tiles_h, band):
            rows = min(band, tiles_h - row0)
            _input_transform(xp, n, n + 1, 0, 0, row0, rows, tiles_w, v, planes)
            for block in range(partial.shape[1]):
                channels_last_rows(gy, n, block * size, 2 * row0,
                                   min(out_h, 2 * (row0 + rows)), gys, square)
                for th in range(rows):
                    below = 2 * (row0 + th) + 1 < out_h
                    for tw in range(tiles_w):
                        o = (2 * th * out_w + 2 * tw) * size
                        at = (th * tiles_w + tw) * size
                        right = 2 * tw + 1 < out_w
                        _output_gradient_tile(gys, o, right, below, out_w * size, dms, at,
                                              step, zero)
                        _output_gradient_tile(gys, o + w, right, below, out_w * size, dms,
                                              at + w, step, zero)
                for xi in range(16):
                    for k in range(0, taps.shape[1], TILE_PIXELS):
                        add_weight_grad_tile(xflat, dm[xi], taps[xi], k, np.int64(0),
                                             np.int64(0), np.int64(1), np.int64(1),
                                             np.int64(rows * tiles_w), np.int64(0), 1,
                                             partial[xi, block])


@functools.cache
def weight_grad_winograd_job(dtype) -> Job:
    """The job of :func:`conv2d_weight_grad_winograd` for arrays of ``dtype``."""
    a1 = array(dtype, 1)
    return Job(_weight_grad_task, (array(dtype, 4), array(dtype, 4), INT, INT, INT,
                                   array(np.int64, 2), array(dtype, 3), a1, array(dtype, 4),
                                   a1, a1, a1))


@njit(inline="always")
def _g_transposed_times(a0, a1, a2, a3):
    """G^T (a0, a1, a2, a3): three values from four."""
    return a0 + (a1 + a2) * 0.5, (a1 - a2) * 0.5, (a1 + a2) * 0.5 + a3


@njit(parallel=True, cache=True)
def conv2d_weight_grad_winograd(gy, xp, per_task, band, partials, grad_w, job):
    """Writes grad_w (C_out, C_in, 3, 3), the weight gradient of the stride-1 3x3
    convolution of the padded input xp (N, C_in, Hp, Wp) at gy (N, C_out, OH, OW): tasks of
    ``per_task`` samples (:func:`_weight_grad_task`, ``band`` rows of tiles at a time) into
    ``partials`` (tasks, 16, C_out / 2W, C' * 2W), added in order and transformed back
    (G^T dU G) in float64; ``job``: :func:`weight_grad_winograd_job`."""
    n_batch, c_in = xp.shape[0], xp.shape[1]
    c_out, out_h, out_w = gy.shape[1], gy.shape[2], gy.shape[3]
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    tiles = -(-min(band, tiles_h) * tiles_w // TILE_PIXELS) * TILE_PIXELS
    w = simd.width(gy[0, 0, 0])
    size = 2 * w
    n_blocks = c_out // size
    rounded = -(-c_in // TILE_PIXELS) * TILE_PIXELS
    taps = np.empty((16, rounded), dtype=np.int64)
    for xi in range(16):
        for ci in range(rounded):
            taps[xi, ci] = (16 * min(ci, c_in - 1) + xi) * tiles
    n_tasks = partials.shape[0]
    for task in prange(n_tasks):
        job(gy, xp, np.int64(task * per_task), np.int64(min(n_batch, (task + 1) * per_task)),
            band, taps, partials[task], np.empty(16 * c_in * tiles, dtype=gy.dtype),
            np.empty((16, 1, 1, tiles * size), dtype=gy.dtype),
            np.empty(2 * band * out_w * size, dtype=gy.dtype),
            np.empty(2 * (2 * band + 2) * (tiles_w + 1), dtype=gy.dtype),
            np.empty(w * w, dtype=gy.dtype))
    flat = partials.reshape(n_tasks, partials[0].size)
    totals = np.empty(flat.shape[1])  # the tasks' partial sums added in order, in float64
    for chunk in prange(-(-totals.size // REDUCE_CHUNK)):
        start = chunk * REDUCE_CHUNK
        stop = min(totals.size, start + REDUCE_CHUNK)
        totals[start:stop] = flat[0, start:stop]
        for task in range(1, n_tasks):
            for i in range(start, stop):
                totals[i] += flat[task, i]
    du = totals.reshape(16, n_blocks, rounded * size)
    for co in prange(c_out):
        block, lane = co // size, co % size
        for ci in range(c_in):
            o = ci * size + lane
            # G^T dU G: each column of dU times G^T, then each row of that times G
            c0 = _g_transposed_times(du[0, block, o], du[4, block, o], du[8, block, o],
                                     du[12, block, o])
            c1 = _g_transposed_times(du[1, block, o], du[5, block, o], du[9, block, o],
                                     du[13, block, o])
            c2 = _g_transposed_times(du[2, block, o], du[6, block, o], du[10, block, o],
                                     du[14, block, o])
            c3 = _g_transposed_times(du[3, block, o], du[7, block, o], du[11, block, o],
                                     du[15, block, o])
            for a in range(3):
                g = _g_transposed_times(c0[a], c1[a], c2[a], c3[a])
                grad_w[co, ci, a, 0] = g[0]
                grad_w[co, ci, a, 1] = g[1]
                grad_w[co, ci, a, 2] = g[2]


def weight_grad_winograd(gy, xp):
    """``(grad_w (C_out, C_in, 3, 3), grad_b)`` of the stride-1 3x3 convolution of the
    padded input xp (N, C_in, Hp, Wp) at gy (N, C_out, OH, OW), by
    :func:`conv2d_weight_grad_winograd`; by the direct kernels
    (:func:`.channels.weight_grad_channels`) where a gradient is not finite."""
    n_batch, c_out, c_in = gy.shape[0], gy.shape[1], xp.shape[1]
    size = block_channels(gy.itemsize)
    per_task = -(-n_batch // min(n_batch, WEIGHT_GRAD_TASKS))
    # the tasks' partial sums, from memory reused across calls (several MiB: a fresh mapping
    # would be faulted in page by page at every call)
    partials = buffers.empty((-(-n_batch // per_task), 16, c_out // size,
                              -(-c_in // TILE_PIXELS) * TILE_PIXELS * size), gy.dtype)
    grad_w = np.empty((c_out, c_in, 3, 3), dtype=gy.dtype)
    conv2d_weight_grad_winograd(gy, xp, per_task, band_rows(c_in, *gy.shape[2:], gy.itemsize),
                                partials, grad_w, weight_grad_winograd_job(gy.dtype))
    if not np.isfinite(grad_w).all():
        return weight_grad_channels(gy, xp, (3, 3), (1, 1), (1, 1))
    return grad_w, channel_sums(gy.reshape(n_batch, c_out, -1)).astype(gy.dtype)
