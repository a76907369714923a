"""The two memory layouts of a CPU activation (N, C, H, W), and the moves between them.

* NCHW: C-contiguous, each sample's channels one after the other, as NumPy makes them.
* Pixel-major: memory ordered (H, W, C, N), so that each pixel is one contiguous (C, N)
  matrix with the samples along the rows. The array still has shape (N, C, H, W) (a
  transposed view of that memory: strides ``(itemsize, N * itemsize, W * C * N * itemsize,
  C * N * itemsize)``), so NumPy code reads it as it reads any array.

The unrolled kernels (:mod:`.conv.unrolled`: the convolutions of small maps) compute on the
pixel-major layout: they take their input in either layout, return their output in this one
(their input gradient in the input's), and the layers between two of them (batch norm, ReLU,
the residual sum) keep it, so that a chain
of small-map layers swaps layouts only where it starts and ends (ResNet-18 at 28x28: 7x7 maps
and below). A kernel that needs NCHW gets it from :func:`nchw`, which swaps in one parallel
pass (NumPy's copy of a transposed array runs on one thread, several times slower).
"""

import math

import numpy as np
from numba import njit, prange

from . import buffers, simd

__all__ = ["is_pixel_major", "pixel_matrix", "from_pixel_matrix", "to_pixel_matrix",
           "pixel_major", "nchw",
           "channel_matrix", "like", "same_layout", "memory_flat", "shaped_like", "swap_outer",
           "swapped", "transpose_pixels", "pixel_rows"]


def is_pixel_major(x) -> bool:
    """Whether the NumPy array x (N, C, H, W) is laid out pixel-major and not also NCHW (a
    single sample on a 1x1 map is both: NCHW then)."""
    return (isinstance(x, np.ndarray) and x.ndim == 4 and not x.flags.c_contiguous
            and x.transpose(2, 3, 1, 0).flags.c_contiguous)


def pixel_matrix(x):
    """The (H * W, C, N) view of a pixel-major x (N, C, H, W)."""
    n, c, h, w = x.shape
    return x.transpose(2, 3, 1, 0).reshape(h * w, c, n)


def from_pixel_matrix(m, height, width):
    """m (H * W, C, N), C-contiguous, as a pixel-major (N, C, H, W) view."""
    _, c, n = m.shape
    return m.reshape(height, width, c, n).transpose(3, 2, 0, 1)


def to_pixel_matrix(x):
    """x (N, C, H, W) as a C-contiguous (H * W, C, N) array: a view where x is pixel-major,
    else swapped (:func:`swapped`)."""
    if is_pixel_major(x):
        return pixel_matrix(x)
    n, c, h, w = x.shape
    return swapped(np.ascontiguousarray(x).reshape(n, c, h * w))


def pixel_major(x):
    """x laid out pixel-major: itself where it is, else a new array (:func:`swapped`)."""
    if is_pixel_major(x):
        return x
    return from_pixel_matrix(to_pixel_matrix(x), *x.shape[2:])


def nchw(x):
    """x, C-contiguous: itself where it is, by one parallel swap where x is pixel-major,
    else NumPy's copy."""
    if is_pixel_major(x):
        n, c, h, w = x.shape
        return swapped(pixel_matrix(x)).reshape(n, c, h, w)
    return np.ascontiguousarray(x)


def channel_matrix(x):
    """x (N, C, ...) as a C-contiguous (A, C, B) array whose channel c holds x[:, c]: for
    pixel-major x its (H * W, C, N) view, else x's (N, C, H * W) (an NCHW copy first where x
    is in neither layout). A batch norm's sums over A and B are those over N and the pixels."""
    if is_pixel_major(x):
        return pixel_matrix(x)
    return nchw(x).reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def like(m, x):
    """The (A, C, B) array m that :func:`channel_matrix` laid out for x, as an array of x's
    shape in that layout."""
    if is_pixel_major(x):
        return from_pixel_matrix(m, x.shape[2], x.shape[3])
    return m.reshape(x.shape)


def same_layout(a, like_array):
    """a in the layout of ``like_array`` (both of one shape): pixel-major where it is, else
    C-contiguous (:func:`nchw`)."""
    return pixel_major(a) if is_pixel_major(like_array) else nchw(a)


def memory_flat(x):
    """x's values as a flat view in memory order: x C-contiguous or pixel-major (else
    C-contiguous first); :func:`shaped_like` gives a flat result x's shape and layout."""
    if is_pixel_major(x):
        return pixel_matrix(x).reshape(-1)
    return np.ascontiguousarray(x).reshape(-1)


def shaped_like(flat, x):
    """A flat array of x's size in :func:`memory_flat`'s order, as an array of x's shape and
    layout."""
    if is_pixel_major(x):
        n, c, h, w = x.shape
        return from_pixel_matrix(flat.reshape(h * w, c, n), h, w)
    return flat.reshape(x.shape)


SWAP_ROWS = 64  # rows of a job of swap_outer
SQUARE_TASKS = 16  # parallel tasks of swap_outer and transpose_pixels, each looping over
# its share of the jobs with one square scratch (one per job: transpose_pixels 1.1-1.3x
# slower on ResNet-18's 6x6 to 12x12 maps, AMD EPYC, one thread)


@njit(inline="always")
def _move_square(src, first, row_stride, rows, count, dst, out_first, out_stride, square):
    """dst[out_first + j * out_stride + r] = src[first + r * row_stride + j] for r < rows and
    j < count (both at most W, the vectors' width): a whole square (W x W) in registers
    (:func:`.simd.move_transposed`), a part of one through ``square`` (W * W values),
    masked, transposed in registers (:func:`.simd.transpose`)."""
    w = simd.width(square)
    if rows == w and count == w:
        simd.move_transposed(src, first, row_stride, dst, out_first, out_stride)
        return
    for r in range(w):  # rows past the last: zeros, not read
        simd.store_first(square, r * w, simd.load_first(
            src, first + min(r, rows - 1) * row_stride, count if r < rows else 0), w)
    simd.transpose(square)
    for j in range(count):
        simd.store_first(dst, out_first + j * out_stride, simd.load_first(square, j * w, w),
                         rows)


@njit(parallel=True, cache=True)
def swap_outer(src, rows, channels, length, row_stride, channel_stride, out):
    """out (length, channels, rows), C-contiguous, out[j, b, i] = src[i * row_stride + b *
    channel_stride + j]: an array's axes rearranged (samples x channels x pixels to pixels x
    channels x samples and back, or to pixels x samples x channels), src its flat data; by
    jobs of one b and SWAP_ROWS rows.

    By W x W squares (W rows' next W values, a vector each) transposed in registers
    (:func:`_move_square`). Read across the rows a value at a time, the rows' lines (a
    channel plane apart, often a multiple of 4 KiB: one L1 set) evicted each other before
    their next value was read: 4.7 MB of ResNet's 12x12 maps took 3.2-3.6 ms, now 0.4-0.6;
    9.4 MB of its 24x24 maps 7.2, now 1.8-2.4 (AMD EPYC, one thread; through a 64 x 64 tile
    in L1, a value at a time, 0.7-0.8 and 1.9-2.2; NumPy's copy 3.5-4.9 and 8.1-10.4).
    Whole squares move without masks and without a scratch (:func:`.simd.move_transposed`:
    loaded, transposed and stored in registers): the masked loads of rows a plane apart,
    each on another page, cost more than the same loads in cache (interleaved in one process,
    the same AMD EPYC, one thread: 9.4 MB 2.1-4.1 -> 1.5-3.0 ms, 4.7 MB 0.75-2.0 -> 0.5-1.3,
    on a busy machine; the same in L2), and the scratch's stores and loads another 10-19%
    (9.4 MB on cache lines 1.20 -> 0.98 ms, 4.7 MB 0.39 -> 0.34)."""
    dst = out.reshape(out.size)
    w = simd.width(src)
    n_blocks = -(-rows // SWAP_ROWS)
    n_jobs = channels * n_blocks
    n_tasks = min(n_jobs, SQUARE_TASKS)
    for task in prange(n_tasks):
        square = np.empty(w * w, dtype=src.dtype)
        for job in range(task * n_jobs // n_tasks, (task + 1) * n_jobs // n_tasks):
            b, i0 = job // n_blocks, job % n_blocks * SWAP_ROWS
            i1 = min(rows, i0 + SWAP_ROWS)
            for j0 in range(0, length, w):
                count = min(w, length - j0)
                for r0 in range(i0, i1, w):
                    _move_square(src, r0 * row_stride + b * channel_stride + j0, row_stride,
                                 min(w, i1 - r0), count, dst, (j0 * channels + b) * rows + r0,
                                 channels * rows, square)


def swapped(a):
    """a (A, B, C), C-contiguous, as (C, B, A) (:func:`swap_outer`), in memory from
    :func:`.buffers.empty`."""
    n_a, n_b, n_c = a.shape
    out = buffers.empty((n_c, n_b, n_a), a.dtype)
    swap_outer(a.reshape(-1), n_a, n_b, n_c, n_b * n_c, n_c, out)
    return out


@njit(parallel=True, cache=True)
def transpose_pixels(m, out):
    """out (P, N, C) = m (P, C, N), both C-contiguous: each pixel's matrix transposed, by
    jobs of one pixel and W channels, W x W squares (W channels' next W samples) transposed
    in registers (:func:`_move_square`; a sample at a time read each line of m 16 times:
    ResNet-18's 256 channels on 6x6 maps, batch 64, took 2.2 ms; by 16 x 16 blocks a value
    at a time 0.44, now 0.21: AMD EPYC, one thread)."""
    pixels, channels, n = m.shape
    w = simd.width(out.reshape(out.size))  # (m[0, 0] is past the end of an empty m)
    blocks = -(-channels // w)
    n_jobs = pixels * blocks
    n_tasks = min(n_jobs, SQUARE_TASKS)
    for task in prange(n_tasks):
        square = np.empty(w * w, dtype=m.dtype)
        for job in range(task * n_jobs // n_tasks, (task + 1) * n_jobs // n_tasks):
            p, c0 = job // blocks, job % blocks * w
            src, dst = m[p].reshape(channels * n), out[p].reshape(n * channels)
            for s0 in range(0, n, w):
                _move_square(src, c0 * n + s0, n, min(w, channels - c0), min(w, n - s0), dst,
                             s0 * channels + c0, channels, square)


def pixel_rows(x):
    """x (N, C, H, W) as (H * W, N, C), C-contiguous: each pixel's samples x channels
    matrix (:func:`swap_outer` from NCHW, :func:`transpose_pixels` from pixel-major
    memory); into memory from :func:`.buffers.empty`."""
    n, channels, h, w = x.shape
    out = buffers.empty((h * w, n, channels), x.dtype)
    if is_pixel_major(x):
        transpose_pixels(pixel_matrix(x), out)
    else:
        swap_outer(np.ascontiguousarray(x).reshape(-1), channels, n, h * w, h * w,
                   channels * h * w, out)
    return out
