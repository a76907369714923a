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

UINT = np.uint64  # :data:`.conv.tiles.UINT` (not imported: the conv kernels import this module)

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


SWAP_ROWS = 64  # rows of a read across at a time by swap_outer (their lines stay in L1)


@njit(parallel=True, cache=True)
def swap_outer(src, rows, channels, length, row_stride, channel_stride, length_stride, bias):
    """out (length, channels, rows), C-contiguous, out[j, b, i] = src[i * row_stride + b *
    channel_stride + j * length_stride] (+ bias[b] where ``bias`` is not empty): an
    array's axes rearranged (samples x channels x pixels to pixels x channels x samples and
    back, or to pixels x samples x channels), src its flat data; each b by a task of its
    own.

    NumPy's copy runs on one thread, and reads across rows of 144 pixels 9x slower. The loops
    index flat arrays with unsigned integers (as the products do, :data:`.conv.tiles.UINT`)
    and add the bias as they copy: a view per row and a pass of its own for the bias took 4x
    as long where rows are short (1x1 maps)."""
    out = np.empty((length, channels, rows), dtype=src.dtype)
    dst = out.reshape(out.size)
    n_rows, n_length = UINT(rows), UINT(length)
    for b in prange(channels):
        d_channel, s_channel = UINT(b) * n_rows, UINT(b * channel_stride)
        for i0 in range(0, rows, SWAP_ROWS):
            i1 = min(rows, i0 + SWAP_ROWS)
            for j in range(n_length):
                d = j * UINT(channels) * n_rows + d_channel
                s = s_channel + j * UINT(length_stride)
                if bias.size:
                    add = bias[b]
                    for i in range(UINT(i0), UINT(i1)):
                        dst[d + i] = src[i * UINT(row_stride) + s] + add
                else:
                    for i in range(UINT(i0), UINT(i1)):
                        dst[d + i] = src[i * UINT(row_stride) + s]
    return out


def swapped(a, bias=None):
    """a (A, B, C), C-contiguous, as (C, B, A) (:func:`swap_outer`), ``bias`` (B,) added."""
    n_a, n_b, n_c = a.shape
    return swap_outer(a.reshape(-1), n_a, n_b, n_c, n_b * n_c, n_c, 1,
                      np.empty(0, dtype=a.dtype) if bias is None else bias)


TRANSPOSE_BLOCK = 16  # channels x samples a pixel's matrix is transposed by at a time


@njit(parallel=True, cache=True)
def transpose_pixels(m):
    """m (P, C, N), C-contiguous, as (P, N, C): each pixel's matrix transposed, by squares of
    TRANSPOSE_BLOCK channels x samples whose lines stay in L1 (a sample at a time read each
    line of m 16 times: ResNet-18's 256 channels on 6x6 maps, batch 64, took 2.2 ms)."""
    pixels, channels, n = m.shape
    out = np.empty((pixels, n, channels), dtype=m.dtype)
    blocks = -(-channels // TRANSPOSE_BLOCK)
    for task in prange(pixels * blocks):
        p, c0 = task // blocks, task % blocks * TRANSPOSE_BLOCK
        c1 = min(channels, c0 + TRANSPOSE_BLOCK)
        for s0 in range(0, n, TRANSPOSE_BLOCK):
            for s in range(s0, min(n, s0 + TRANSPOSE_BLOCK)):
                row = out[p, s]
                for c in range(c0, c1):
                    row[c] = m[p, c, s]
    return out


def pixel_rows(x):
    """x (N, C, H, W) as (H * W, N, C), C-contiguous: each pixel's samples x channels
    matrix (:func:`swap_outer` from NCHW, :func:`transpose_pixels` from pixel-major
    memory)."""
    if is_pixel_major(x):
        return transpose_pixels(pixel_matrix(x))
    n, channels, h, w = x.shape
    length = h * w
    flat = np.ascontiguousarray(x).reshape(-1)
    return swap_outer(flat, channels, n, length, length, channels * length, 1,
                      np.empty(0, dtype=x.dtype))
