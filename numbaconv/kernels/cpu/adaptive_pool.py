"""Numba CPU kernels for 2-D adaptive average and max pooling, forward and backward.

The checked wrappers are in :mod:`numbaconv.functional`; the kernels trust their inputs.
Arrays are C-contiguous (P, H, W) stacks of planes (P = N * C) and each parallel iteration
owns one plane of the output (or of the input gradient), so results do not depend on the
number of threads.

Windows are PyTorch's: output row ``o`` of ``out`` pools input rows ``floor(o * H / out)``
up to ``ceil((o + 1) * H / out)`` (exclusive), likewise for columns; windows may overlap when
``out`` does not divide ``H``. Averages are summed in float64 and divided by the window's
height, then its width (PyTorch's order); the maximum keeps the first of equal values, a NaN
always wins, and its index is the flat ``h * W + w`` within the plane (PyTorch's indices).

The global pooling every modern network ends with (output 1x1) has its own kernels: one pass
over each contiguous plane.
"""

import numpy as np
from numba import njit, prange

#: The plane sums may be reordered (vectorised); NaN and inf still propagate.
REASSOC = {"reassoc", "contract"}


@njit(inline="always")
def _start(o, size, out):
    return (o * size) // out


@njit(inline="always")
def _stop(o, size, out):
    return -((-(o + 1) * size) // out)  # ceil((o + 1) * size / out)


@njit(fastmath=REASSOC, cache=True)
def _plane_sum(plane):
    total = 0.0
    for i in range(plane.shape[0]):
        total += plane[i]
    return total


@njit(parallel=True, cache=True)
def global_avg_pool(x, y):
    """y[p] = mean of the plane x[p, :]; x (P, L), y (P,) of x's dtype."""
    length = x.shape[1]
    for p in prange(x.shape[0]):
        y[p] = _plane_sum(x[p]) / length


@njit(parallel=True, cache=True)
def global_avg_pool_backward(grad_y, grad_x):
    """grad_x[p, :] = grad_y[p] / L; grad_y (P,), grad_x (P, L)."""
    length = grad_x.shape[1]
    for p in prange(grad_x.shape[0]):
        share = grad_y[p] / length
        row = grad_x[p]
        for i in range(length):
            row[i] = share


@njit(parallel=True, cache=True)
def adaptive_avg_pool(x, y):
    """y (P, out_h, out_w) = the means of x (P, H, W) over the adaptive windows."""
    _, height, width = x.shape
    _, out_h, out_w = y.shape
    for p in prange(x.shape[0]):
        src = x[p]
        dst = y[p]
        for oh in range(out_h):
            h0, h1 = _start(oh, height, out_h), _stop(oh, height, out_h)
            for ow in range(out_w):
                w0, w1 = _start(ow, width, out_w), _stop(ow, width, out_w)
                total = 0.0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        total += src[ih, iw]
                dst[oh, ow] = total / (h1 - h0) / (w1 - w0)


@njit(parallel=True, cache=True)
def adaptive_avg_pool_backward(grad_y, grad_x):
    """grad_x (P, H, W): each output gradient shared equally over its window, summed where
    windows overlap (in increasing output order, as PyTorch's CPU kernel adds)."""
    _, height, width = grad_x.shape
    _, out_h, out_w = grad_y.shape
    zero = grad_x.dtype.type(0)
    for p in prange(grad_x.shape[0]):
        g = grad_y[p]
        out = grad_x[p]
        out[:, :] = zero
        for oh in range(out_h):
            h0, h1 = _start(oh, height, out_h), _stop(oh, height, out_h)
            for ow in range(out_w):
                w0, w1 = _start(ow, width, out_w), _stop(ow, width, out_w)
                share = g[oh, ow] / (h1 - h0) / (w1 - w0)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        out[ih, iw] += share


@njit(parallel=True, cache=True)
def adaptive_max_pool(x, y, indices):
    """y (P, out_h, out_w) = the maxima of x (P, H, W) over the adaptive windows, indices
    (int64, same shape) their flat ``h * W + w``."""
    _, height, width = x.shape
    _, out_h, out_w = y.shape
    for p in prange(x.shape[0]):
        src = x[p]
        for oh in range(out_h):
            h0, h1 = _start(oh, height, out_h), _stop(oh, height, out_h)
            for ow in range(out_w):
                w0, w1 = _start(ow, width, out_w), _stop(ow, width, out_w)
                best = -np.inf
                best_index = h0 * width + w0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        value = src[ih, iw]
                        # strictly greater: the first maximum wins a tie; a NaN always wins
                        if value > best or np.isnan(value):
                            best = value
                            best_index = ih * width + iw
                y[p, oh, ow] = best
                indices[p, oh, ow] = best_index
