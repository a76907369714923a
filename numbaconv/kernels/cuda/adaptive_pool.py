"""2-D adaptive average and max pooling on CUDA, with the CPU kernels' windows and order of
operations (:mod:`numbaconv.kernels.cpu.adaptive_pool`).

Arrays are (N, C, H, W) device arrays viewed as (P, H, W) planes. Output row ``o`` of ``out``
pools input rows ``floor(o * H / out)`` to ``ceil((o + 1) * H / out)`` (exclusive), likewise
for columns. Forward passes run one thread per output element; the average's backward is a
gather, one thread per input element over the windows that hold it (rows ``floor(ih * out /
H)`` to ``ceil((ih + 1) * out / H) - 1``), added in increasing output order as the CPU adds,
so no atomics and deterministic. Sums run in the input's dtype (the CPU's in float64), as
PyTorch's CUDA kernels do. The max's backward is the scatter of
:func:`numbaconv.kernels.cuda.pool.max_pool2d_backward` (the indices are the same kind).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import steps
from .ops import _launch


@cuda.jit(device=True)
def _start(o, size, out):
    return (o * size) // out


@cuda.jit(device=True)
def _stop(o, size, out):
    return -((-(o + 1) * size) // out)


@cuda.jit
def _avg_forward_kernel(x, y):
    """y[p, oh, ow] = the sum of x[p] over the window / its height / its width."""
    _, height, width = x.shape
    _, out_h, out_w = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = i % out_w
        t = i // out_w
        oh = t % out_h
        p = t // out_h
        h0 = _start(oh, height, out_h)
        h1 = _stop(oh, height, out_h)
        w0 = _start(ow, width, out_w)
        w1 = _stop(ow, width, out_w)
        dt = y.dtype.type
        total = dt(0)
        for ih in range(h0, h1):
            for iw in range(w0, w1):
                total += x[p, ih, iw]
        y[p, oh, ow] = total / dt(h1 - h0) / dt(w1 - w0)


@cuda.jit
def _avg_backward_kernel(gy, gx):
    """gx[p, ih, iw] = sum of gy[p, oh, ow] / window height / width over the windows that
    hold (ih, iw)."""
    _, height, width = gx.shape
    _, out_h, out_w = gy.shape
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        iw = i % width
        t = i // width
        ih = t % height
        p = t // height
        oh_hi = min(out_h - 1, ((ih + 1) * out_h + height - 1) // height - 1)
        ow_hi = min(out_w - 1, ((iw + 1) * out_w + width - 1) // width - 1)
        dt = gx.dtype.type
        acc = dt(0)
        for oh in range(ih * out_h // height, oh_hi + 1):
            rows = dt(_stop(oh, height, out_h) - _start(oh, height, out_h))
            for ow in range(iw * out_w // width, ow_hi + 1):
                cols = dt(_stop(ow, width, out_w) - _start(ow, width, out_w))
                acc += gy[p, oh, ow] / rows / cols
        gx[p, ih, iw] = acc


@cuda.jit
def _max_forward_kernel(x, y, idx):
    """y[p, oh, ow] = the maximum of x[p] over the window (the first one; a NaN always
    wins), idx[p, oh, ow] its flat h * W + w."""
    _, height, width = x.shape
    _, out_h, out_w = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = i % out_w
        t = i // out_w
        oh = t % out_h
        p = t // out_h
        h0 = _start(oh, height, out_h)
        h1 = _stop(oh, height, out_h)
        w0 = _start(ow, width, out_w)
        w1 = _stop(ow, width, out_w)
        best = y.dtype.type(-math.inf)
        best_index = h0 * width + w0
        for ih in range(h0, h1):
            for iw in range(w0, w1):
                value = x[p, ih, iw]
                if value > best or math.isnan(value):
                    best = value
                    best_index = ih * width + iw
        y[p, oh, ow] = best
        idx[p, oh, ow] = best_index


def _planes(array, height, width):
    return array.reshape(array.shape[0] * array.shape[1], height, width)


def adaptive_avg_pool2d_forward(x, out_hw):
    """Adaptive average pooling of x (N, C, H, W) to (N, C, out_h, out_w)."""
    n_batch, chans, height, width = x.shape
    y = steps.empty((n_batch, chans) + tuple(out_hw), x.dtype)
    _launch(_avg_forward_kernel, y.size, _planes(x, height, width), _planes(y, *out_hw))
    return y


def adaptive_avg_pool2d_backward(grad_y, input_shape):
    """The gradient (``input_shape`` = (N, C, H, W)) of :func:`adaptive_avg_pool2d_forward`
    from grad_y (N, C, out_h, out_w)."""
    n_batch, chans, height, width = input_shape
    grad_x = steps.empty((n_batch, chans, height, width), grad_y.dtype)
    _launch(_avg_backward_kernel, grad_x.size, _planes(grad_y, *grad_y.shape[2:]),
            _planes(grad_x, height, width))
    return grad_x


def adaptive_max_pool2d_forward(x, out_hw):
    """``(y, indices)`` of adaptive max pooling of x (N, C, H, W): both (N, C, out_h, out_w),
    indices int64 flat ``h * W + w`` within each plane."""
    n_batch, chans, height, width = x.shape
    y = steps.empty((n_batch, chans) + tuple(out_hw), x.dtype)
    indices = steps.empty((n_batch, chans) + tuple(out_hw), np.int64)
    _launch(_max_forward_kernel, y.size, _planes(x, height, width), _planes(y, *out_hw),
            _planes(indices, *out_hw))
    return y, indices
