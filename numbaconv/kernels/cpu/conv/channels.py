"""The output-channel kernels: a stride-1 convolution with the output channels along the
vectors, for layers with many output channels (ResNet's 3x3 layers).

On the flat stride-1 grid of :mod:`.flat` (sample n's output (oh, ow) at position
``oh * Wp + ow`` of its padded input's width ``Wp``; kernel tap k reads the input at a fixed
offset from it), a tile of :data:`TILE_PIXELS` consecutive positions x two vectors of output
channels (2W: 32 float32 or 16 float64) keeps its 24 sums in registers across all taps: per
tap, two weight vectors are loaded and each of the 12 input values is broadcast into two
multiply-adds. Every weight load serves 12 pixels and every input load 2W channels, with no
copy of the input and no vector lanes left empty on a small map (where the flat kernels'
pixel vectors run past a row, and the column kernels copy every tap's input):

    xflat  (N, C_in * Hp * Wp)   the padded input, flat per sample
    packed (C_out / 2W, K, 2W)   the weights, each block's 2W channels contiguous per tap
    y      (N, C_out, OH, OW)

The sums of a tile are written to a scratch row per position (the task's block of 2W
channels), then spread to y's planes; positions in the padding's columns are dropped. A
task owns a sample and a block of channels, so results do not depend on the number of
threads. Nothing is summed across taps in another order than the taps', so inf and NaN
propagate as in the sums themselves.
"""

import functools

import numpy as np
from numba import njit, prange

from .. import simd
from ..jobs import INT, INTS, Job, array
from .common import FAST
from .tiles import UINT

TILE_PIXELS = 12  # positions per tile: 24 sums, two weight vectors and a broadcast in the
# 32 vector registers of AVX-512 (more spill)
MIN_C_OUT = 64  # output channels from which these kernels pay (LeNet's 6 and 16 stay flat)
MIN_K = 64  # weights per output channel, likewise


def block_channels(itemsize) -> int:
    """Output channels per block: two vectors."""
    return 2 * simd.VECTOR_BYTES // itemsize


def use_channel_vectors(weight_shape, groups, stride, out_h, out_w, padded_w, itemsize):
    """Whether a convolution takes these kernels: groups of 1, stride 1, whole blocks of
    :func:`block_channels` output channels, at least :data:`MIN_C_OUT` of them and
    :data:`MIN_K` weights each, and a grid of at least one tile (``padded_w`` wide)."""
    c_out, c_in_g, kh, kw = weight_shape
    return (groups == 1 and tuple(stride) == (1, 1) and c_out >= MIN_C_OUT
            and c_out % block_channels(itemsize) == 0 and c_in_g * kh * kw >= MIN_K
            and (out_h - 1) * padded_w + out_w >= TILE_PIXELS)


@njit(inline="always")
def _broadcast_fma(xs, i, w0, w1, s0, s1):
    """(s0 + xs[i] * w0, s1 + xs[i] * w1), each rounded once."""
    v = simd.splat(xs, xs[i])
    return simd.fma(v, w0, s0), simd.fma(v, w1, s1)


@njit(cache=True, fastmath=FAST)
def _tile(xs, weights, taps, p0, bias0, bias1, sums):
    """sums[p * 2W:(p + 1) * 2W] = bias + the sums over taps k of
    weights[k * 2W:(k + 1) * 2W] * xs[taps[k] + p], for the TILE_PIXELS positions p from p0
    (xs: a sample's flat input; taps: each tap's channel plane start plus its offset)."""
    w = simd.width(xs)
    s00, s01, s10, s11, s20, s21 = bias0, bias1, bias0, bias1, bias0, bias1
    s30, s31, s40, s41, s50, s51 = bias0, bias1, bias0, bias1, bias0, bias1
    s60, s61, s70, s71, s80, s81 = bias0, bias1, bias0, bias1, bias0, bias1
    s90, s91, sa0, sa1, sb0, sb1 = bias0, bias1, bias0, bias1, bias0, bias1
    q = UINT(0)
    for k in range(UINT(0), UINT(taps.size)):
        i = UINT(taps[k] + p0)
        w0 = simd.load_first(weights, q, w)
        w1 = simd.load_first(weights, q + UINT(w), w)
        q += UINT(2 * w)
        s00, s01 = _broadcast_fma(xs, i, w0, w1, s00, s01)
        s10, s11 = _broadcast_fma(xs, i + UINT(1), w0, w1, s10, s11)
        s20, s21 = _broadcast_fma(xs, i + UINT(2), w0, w1, s20, s21)
        s30, s31 = _broadcast_fma(xs, i + UINT(3), w0, w1, s30, s31)
        s40, s41 = _broadcast_fma(xs, i + UINT(4), w0, w1, s40, s41)
        s50, s51 = _broadcast_fma(xs, i + UINT(5), w0, w1, s50, s51)
        s60, s61 = _broadcast_fma(xs, i + UINT(6), w0, w1, s60, s61)
        s70, s71 = _broadcast_fma(xs, i + UINT(7), w0, w1, s70, s71)
        s80, s81 = _broadcast_fma(xs, i + UINT(8), w0, w1, s80, s81)
        s90, s91 = _broadcast_fma(xs, i + UINT(9), w0, w1, s90, s91)
        sa0, sa1 = _broadcast_fma(xs, i + UINT(10), w0, w1, sa0, sa1)
        sb0, sb1 = _broadcast_fma(xs, i + UINT(11), w0, w1, sb0, sb1)
    o = p0 * 2 * w
    for v0, v1 in ((s00, s01), (s10, s11), (s20, s21), (s30, s31), (s40, s41), (s50, s51),
                   (s60, s61), (s70, s71), (s80, s81), (s90, s91), (sa0, sa1), (sb0, sb1)):
        simd.store_first(sums, o, v0, w)
        simd.store_first(sums, o + w, v1, w)
        o += 2 * w


@njit(cache=True, fastmath=FAST)
def _forward_task(xflat, packed, b, taps, n, block, wp, y, sums):
    """y[n, block's 2W channels] for :func:`conv2d_forward_channels`; ``sums`` (>= the grid's
    length x 2W) is scratch."""
    out_h, out_w = y.shape[2], y.shape[3]
    xs = xflat[n]
    w = simd.width(xs)
    block_size = 2 * w
    weights = packed[block].reshape(packed.shape[1] * block_size)
    c0 = block * block_size
    bias0 = simd.load_first(b, c0, w)
    bias1 = simd.load_first(b, c0 + w, w)
    length = (out_h - 1) * wp + out_w
    for p0 in range(0, length, TILE_PIXELS):
        # the last tile ends at the grid's end (recomputing a few positions of the one
        # before): no tile reads past the sample's input
        _tile(xs, weights, taps, min(p0, length - TILE_PIXELS), bias0, bias1, sums)
    for j in range(block_size):
        for oh in range(out_h):
            dst = y[n, c0 + j, oh]
            q = oh * wp * block_size + j
            for ow in range(out_w):
                dst[ow] = sums[q + ow * block_size]


@functools.cache
def forward_channels_job(dtype) -> Job:
    """The job of :func:`conv2d_forward_channels` for arrays of ``dtype``."""
    a1 = array(dtype, 1)
    return Job(_forward_task, (array(dtype, 2), array(dtype, 3), a1, INTS, INT, INT, INT,
                               array(dtype, 4), a1))


@njit(parallel=True, cache=True)
def conv2d_forward_channels(xflat, packed, b, taps, wp, out_h, out_w, job):
    """The convolution's outputs y (N, C_out, out_h, out_w) at stride 1 from xflat (N, C_in *
    Hp * Wp), with ``wp`` = Wp, the ``packed`` weights and ``taps`` of :func:`pack`.
    ``job``: :func:`forward_channels_job` of the dtype."""
    n_batch = xflat.shape[0]
    n_blocks, block_size = packed.shape[0], packed.shape[2]
    length = (out_h - 1) * wp + out_w
    y = np.empty((n_batch, n_blocks * block_size, out_h, out_w), dtype=xflat.dtype)
    for task in prange(n_batch * n_blocks):
        job(xflat, packed, b, taps, np.int64(task // n_blocks), np.int64(task % n_blocks), wp, y,
            np.empty(length * block_size, dtype=xflat.dtype))
    return y


def pack(w, hp, wp, dilation):
    """(packed, taps) of w (C_out, C_in, KH, KW) for inputs padded to (hp, wp): the weights
    (C_out / 2W, K, 2W) in blocks of :func:`block_channels`, and per tap k = (c, kh, kw) its
    position in a sample's flat input, ``c * hp * wp + kh * dilation_h * wp + kw *
    dilation_w``."""
    c_out, c_in, kh, kw = w.shape
    size = block_channels(w.itemsize)
    k_size = c_in * kh * kw
    packed = np.ascontiguousarray(w.reshape(c_out // size, size, k_size).transpose(0, 2, 1))
    c, rows, cols = np.meshgrid(np.arange(c_in), np.arange(kh) * dilation[0],
                                np.arange(kw) * dilation[1], indexing="ij")
    taps = (c * hp * wp + rows * wp + cols).reshape(k_size).astype(np.int64)
    return packed, taps
