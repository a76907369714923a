"""Numba CPU kernels for 2-D max and average pooling, forward and backward.

The public wrappers in :mod:`numbaconv.functional` check and normalise every argument; the
kernels trust their inputs. Arrays are C-contiguous NCHW; each ``(n, c)`` plane is pooled on
its own, so every parallel iteration owns one plane of the output (or of the input gradient),
and results do not depend on the number of threads.

Window arithmetic is PyTorch's CPU kernels', so sizes, ``ceil_mode`` overhangs, padding counts,
index ties and NaN propagation agree with it element for element. No ``fastmath``: max pooling
relies on -inf and NaN behaving as IEEE says.
"""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def max_pool2d_forward(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, out_h, out_w):
    """Returns (y, indices), both (N, C, out_h, out_w); indices are flat ``h * W + w``."""
    n_batch, channels, height, width = x.shape
    y = np.empty((n_batch, channels, out_h, out_w), dtype=x.dtype)
    indices = np.empty((n_batch, channels, out_h, out_w), dtype=np.int64)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        src = x[n, c]
        for oh in range(out_h):
            h0 = oh * stride_h - pad_h
            h1 = min(h0 + (kernel_h - 1) * dilation_h + 1, height)
            while h0 < 0:
                h0 += dilation_h
            for ow in range(out_w):
                w0 = ow * stride_w - pad_w
                w1 = min(w0 + (kernel_w - 1) * dilation_w + 1, width)
                while w0 < 0:
                    w0 += dilation_w
                best_index = h0 * width + w0
                best = -np.inf
                for ih in range(h0, h1, dilation_h):
                    for iw in range(w0, w1, dilation_w):
                        value = src[ih, iw]
                        # Strictly greater: the first maximum wins a tie. A NaN always wins.
                        if value > best or np.isnan(value):
                            best = value
                            best_index = ih * width + iw
                y[n, c, oh, ow] = best
                indices[n, c, oh, ow] = best_index
    return y, indices


@njit(parallel=True, cache=True)
def max_pool2d_backward(grad_y, indices, height, width):
    """Routes each output gradient to the input position that won its window.

    Indices outside the plane (windows wholly in the padding) pass nothing.
    """
    n_batch, channels = grad_y.shape[0], grad_y.shape[1]
    plane_size = height * width
    grad_x = np.zeros((n_batch, channels, height * width), dtype=grad_y.dtype)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        g = grad_y[n, c]
        idx = indices[n, c]
        out = grad_x[n, c]
        for oh in range(g.shape[0]):
            for ow in range(g.shape[1]):
                i = idx[oh, ow]
                if 0 <= i < plane_size:
                    out[i] += g[oh, ow]
    return grad_x.reshape(n_batch, channels, height, width)


@njit(inline="always")
def _avg_window(oh, ow, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, height, width,
                count_include_pad, divisor):
    """(h0, h1, w0, w1, divisor) of one average-pooling window, as PyTorch counts it."""
    h0 = oh * stride_h - pad_h
    w0 = ow * stride_w - pad_w
    # The window may reach into the explicit padding but not past it (the ceil_mode overhang).
    h1 = min(h0 + kernel_h, height + pad_h)
    w1 = min(w0 + kernel_w, width + pad_w)
    padded_size = (h1 - h0) * (w1 - w0)
    h0 = max(h0, 0)
    w0 = max(w0, 0)
    h1 = min(h1, height)
    w1 = min(w1, width)
    if divisor > 0:
        count = divisor
    elif count_include_pad:
        count = padded_size
    else:
        count = (h1 - h0) * (w1 - w0)
    return h0, h1, w0, w1, count


@njit(parallel=True, cache=True)
def avg_pool2d_forward(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w,
                       count_include_pad, divisor):
    """Returns y (N, C, out_h, out_w); ``divisor`` > 0 overrides the window count."""
    n_batch, channels, height, width = x.shape
    y = np.empty((n_batch, channels, out_h, out_w), dtype=x.dtype)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        src = x[n, c]
        for oh in range(out_h):
            for ow in range(out_w):
                h0, h1, w0, w1, count = _avg_window(
                    oh, ow, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                    height, width, count_include_pad, divisor)
                total = 0.0  # float64: a window's sum is short, and exact enough either way
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        total += src[ih, iw]
                y[n, c, oh, ow] = total / count
    return y


@njit(parallel=True, cache=True)
def avg_pool2d_backward(grad_y, height, width, kernel_h, kernel_w, stride_h, stride_w,
                        pad_h, pad_w, count_include_pad, divisor):
    """Spreads each output gradient evenly over its window: grad_x (N, C, height, width)."""
    n_batch, channels, out_h, out_w = grad_y.shape
    grad_x = np.zeros((n_batch, channels, height, width), dtype=grad_y.dtype)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        out = grad_x[n, c]
        g = grad_y[n, c]
        for oh in range(out_h):
            for ow in range(out_w):
                h0, h1, w0, w1, count = _avg_window(
                    oh, ow, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                    height, width, count_include_pad, divisor)
                share = g[oh, ow] / count
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        out[ih, iw] += share
    return grad_x
