"""Numba CPU kernels for elementwise passes: ReLU forward and backward, the sum of two
arrays (a residual connection's, or two branches' gradients), and the copy of arrays into a
concatenation's channels (:func:`concat_channels`).

Each is one pass that writes its output: NumPy's ReLU backward (``grad * ~(y <= 0)``) takes
three passes and a temporary, and NumPy runs on one thread. The arrays are flat, C-contiguous
vectors (callers pass ``reshape(-1)`` views, so each kernel compiles once per dtype), cut into
chunks of :data:`CHUNK` elements, each chunk owned by one parallel iteration. An array of one
chunk or less, or any array on one thread, goes to the serial loop instead: starting a
parallel loop costs about as much as a small pass. Elementwise results do not depend on the
thread count.

The arithmetic is NumPy's, bit for bit: ``maximum(x, 0)`` (NaN stays NaN, -0.0 gives +0.0),
``grad * (0 if y <= 0 else 1)`` (so a negative gradient gives -0.0 where y <= 0, and an
infinite one NaN), ``a + b`` (the sum runs here only in parallel: serially NumPy's ``add``
is as fast).
"""

import math

import numba
import numpy as np
from numba import njit, prange

from . import buffers, simd
from .buffers import LINE

CHUNK = 32768  # elements per parallel iteration (128 KiB of float32)


@njit(cache=True)
def _line_aligned(size, like):
    raw = np.empty(size + LINE // like.itemsize, dtype=like.dtype)
    start = (LINE - raw.ctypes.data % LINE) % LINE // like.itemsize
    return raw[start:start + size]


def empty(size: int, like):
    """An uninitialised (size,) array of ``like``'s dtype for a kernel's output. Above one
    chunk its data starts on a cache line: NumPy's start 16 bytes in, where every 64-byte
    vector store straddles two lines (ReLU at 65536 floats in L2: 8.1 us against 6.2 us
    aligned). Below, the alignment would cost more than it saves. From 4 MiB
    :func:`.buffers.empty` gives it (NumPy's memory, on transparent huge pages, which halved
    the time of a pass over (64, 64, 48, 48), and reused once freed)."""
    if size <= CHUNK:
        return np.empty(size, dtype=like.dtype)
    if size * like.itemsize < buffers.HUGE_PAGE_BYTES:
        return _line_aligned(size, like)
    return buffers.empty(size, like.dtype)


@njit(cache=True)
def _relu_into(x, out):
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i]
        out[i] = v if (v > zero or v != v) else zero


@njit(cache=True)
def _relu_grad_into(grad_y, y, out):
    zero = y.dtype.type(0)
    one = y.dtype.type(1)
    for i in range(y.size):
        out[i] = grad_y[i] * (zero if y[i] <= zero else one)


@njit(cache=True)
def _add_into(a, b, out):
    for i in range(a.size):
        out[i] = a[i] + b[i]


@njit(parallel=True, cache=True)
def _relu_parallel(x, out):
    size = x.size
    for chunk in prange((size + CHUNK - 1) // CHUNK):
        start = chunk * CHUNK
        stop = min(size, start + CHUNK)
        _relu_into(x[start:stop], out[start:stop])


@njit(parallel=True, cache=True)
def _relu_grad_parallel(grad_y, y, out):
    size = y.size
    for chunk in prange((size + CHUNK - 1) // CHUNK):
        start = chunk * CHUNK
        stop = min(size, start + CHUNK)
        _relu_grad_into(grad_y[start:stop], y[start:stop], out[start:stop])


@njit(parallel=True, cache=True)
def _add_parallel(a, b, out):
    size = a.size
    for chunk in prange((size + CHUNK - 1) // CHUNK):
        start = chunk * CHUNK
        stop = min(size, start + CHUNK)
        _add_into(a[start:stop], b[start:stop], out[start:stop])


def serial(size: int) -> bool:
    """Whether a pass over ``size`` values runs without the parallel loop."""
    # (Numba's get_num_threads inside a kernel would keep it out of the on-disk cache.)
    return size <= CHUNK or numba.get_num_threads() == 1


def relu_forward(x, out):
    """out = max(x, 0) for flat arrays of one dtype."""
    (_relu_into if serial(x.size) else _relu_parallel)(x, out)


def relu_backward(grad_y, y, out):
    """out = grad_y * (0 if y <= 0 else 1) for flat arrays of one dtype."""
    (_relu_grad_into if serial(y.size) else _relu_grad_parallel)(grad_y, y, out)


def add(a, b, out):
    """out = a + b for flat arrays of one dtype, on more than one thread and more than one
    chunk (serially NumPy's ``add`` is as fast, and its call costs less: the kernel's
    dispatch is a third of a 32768-float pass)."""
    _add_parallel(a, b, out)


@njit(parallel=True, cache=True)
def _copy_samples(src, out, start):
    """out[n, start:start + K] = src[n] for every sample n of src (N, K), out (N, >= K)."""
    for n in prange(src.shape[0]):
        simd.copy_run(src[n], 0, out[n], start, src.shape[1])


def concat_channels(arrays):
    """The float arrays (N, C_i, ...) joined along axis 1, as ``np.concatenate(arrays,
    axis=1)``: into memory from :func:`.buffers.empty` (a DenseNet step's concatenations,
    fresh memory each, spent most of their time faulting it in) by one parallel copy per
    array where the result is that large, else by NumPy."""
    first = arrays[0]
    shape = (first.shape[0], sum(a.shape[1] for a in arrays)) + tuple(first.shape[2:])
    if math.prod(shape) * first.itemsize < buffers.HUGE_PAGE_BYTES:
        return np.concatenate(arrays, axis=1)
    out = buffers.empty(shape, first.dtype)
    rows, start = out.reshape(shape[0], -1), 0
    for array in arrays:
        part = np.ascontiguousarray(array).reshape(shape[0], -1)
        _copy_samples(part, rows, start)
        start += part.shape[1]
    return out
