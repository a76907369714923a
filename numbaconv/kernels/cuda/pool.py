"""2-D max and average pooling forward and backward on CUDA, with PyTorch's CPU semantics.

Arrays are (N, C, H, W) device arrays; each (n, c) plane is pooled on its own, so the kernels
view them as (N*C, H, W). Windows follow ``aten/src/ATen/native/cpu/*PoolKernel.cpp``:

* max: ``ih0 = oh*sh - ph``, ``ih1 = min(ih0 + (kh-1)*dh + 1, H)``, ``ih0`` stepped by ``dh``
  until it is >= 0 (same for w); the first maximum wins, a NaN always wins; indices are the
  flat ``h*W + w`` within the plane (int64).
* average: ``ih0 = oh*sh - ph``, ``ih1 = min(ih0 + kh, H + ph)``, ``pool_size`` the unclipped
  area, then clipped to the input; an empty window gives 0; the sum is divided by
  ``divisor`` if given, else ``pool_size`` if ``count_include_pad``, else the clipped area.

Backward passes are gathers (one thread per input element visits the windows that may
contain it, in increasing (oh, ow) order, which is also the order PyTorch's CPU scatter adds
in), so overlapping windows need no atomics and results are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import steps
from .ops import _launch


@cuda.jit
def _max_pool_forward_kernel(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    """y[p, oh, ow] = max of x[p] over the window, idx[p, oh, ow] = its flat h*W + w.

    x (P, H, W), y and idx (P, H_out, W_out); one thread per output element.
    """
    _, height, width = x.shape
    _, out_h, out_w = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = i % out_w
        t = i // out_w
        oh = t % out_h
        p = t // out_h
        ih0 = oh * sh - ph
        iw0 = ow * sw - pw
        ih1 = min(ih0 + (kh - 1) * dh + 1, height)
        iw1 = min(iw0 + (kw - 1) * dw + 1, width)
        while ih0 < 0:
            ih0 += dh
        while iw0 < 0:
            iw0 += dw
        best = ih0 * width + iw0
        peak = y.dtype.type(-math.inf)
        for ih in range(ih0, ih1, dh):
            for iw in range(iw0, iw1, dw):
                val = x[p, ih, iw]
                if val > peak or math.isnan(val):
                    peak = val
                    best = ih * width + iw
        y[p, oh, ow] = peak
        idx[p, oh, ow] = best


@cuda.jit
def _max_pool_backward_gather_kernel(gy, idx, gx, kh, kw, sh, sw, ph, pw, dh, dw):
    """gx[p, ih, iw] = sum of gy[p, oh, ow] over the windows whose recorded argmax
    idx[p, oh, ow] is ih*W + iw; only windows spanning (ih, iw) are visited.

    gy, idx (P, H_out, W_out); gx (P, H, W); one thread per input element.
    """
    _, height, width = gx.shape
    _, out_h, out_w = gy.shape
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        iw = i % width
        t = i // width
        ih = t % height
        p = t // height
        # windows with oh*sh - ph <= ih <= oh*sh - ph + (kh-1)*dh
        lo = ih + ph - (kh - 1) * dh
        oh_lo = -((-lo) // sh) if lo > 0 else 0
        oh_hi = min(out_h - 1, (ih + ph) // sh)
        lo = iw + pw - (kw - 1) * dw
        ow_lo = -((-lo) // sw) if lo > 0 else 0
        ow_hi = min(out_w - 1, (iw + pw) // sw)
        here = ih * width + iw
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi + 1):
            for ow in range(ow_lo, ow_hi + 1):
                if idx[p, oh, ow] == here:
                    acc += gy[p, oh, ow]
        gx[p, ih, iw] = acc


@cuda.jit
def _max_pool_backward_plane_kernel(gy, idx, gx):
    """Scatter of gy into gx at idx, one thread per whole plane (no window geometry needed).

    gy, idx (P, H_out * W_out); gx (P, H * W). Sequential within a plane, so no atomics.
    Indices outside the plane (windows wholly in the padding) are skipped.
    """
    n_planes, plane_out = gy.shape
    plane_in = gx.shape[1]
    zero = gx.dtype.type(0)
    for p in range(cuda.grid(1), n_planes, cuda.gridsize(1)):
        for j in range(plane_in):
            gx[p, j] = zero
        for j in range(plane_out):
            i = idx[p, j]
            if 0 <= i < plane_in:  # a window wholly in the padding passes nothing (as on CPU)
                gx[p, i] += gy[p, j]


@cuda.jit(device=True)
def _avg_window(oh, ow, height, width, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """(ih0, ih1, iw0, iw1, divide_factor) of output (oh, ow), clipped, as PyTorch's CPU."""
    ih0 = oh * sh - ph
    iw0 = ow * sw - pw
    ih1 = min(ih0 + kh, height + ph)
    iw1 = min(iw0 + kw, width + pw)
    pool_size = (ih1 - ih0) * (iw1 - iw0)
    ih0 = max(ih0, 0)
    iw0 = max(iw0, 0)
    ih1 = min(ih1, height)
    iw1 = min(iw1, width)
    if divisor != 0:
        factor = divisor
    elif count_include_pad:
        factor = pool_size
    else:
        factor = (ih1 - ih0) * (iw1 - iw0)
    return ih0, ih1, iw0, iw1, factor


@cuda.jit
def _avg_pool_forward_kernel(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """y[p, oh, ow] = sum of x[p] over the clipped window / divide factor (0 if empty).

    x (P, H, W), y (P, H_out, W_out); one thread per output element.
    """
    _, height, width = x.shape
    _, out_h, out_w = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = i % out_w
        t = i // out_w
        oh = t % out_h
        p = t // out_h
        ih0, ih1, iw0, iw1, factor = _avg_window(oh, ow, height, width, kh, kw, sh, sw, ph,
                                                 pw, count_include_pad, divisor)
        acc = y.dtype.type(0)
        if ih0 < ih1 and iw0 < iw1:
            for ih in range(ih0, ih1):
                for iw in range(iw0, iw1):
                    acc += x[p, ih, iw]
            acc = acc / y.dtype.type(factor)
        y[p, oh, ow] = acc


@cuda.jit
def _avg_pool_backward_kernel(gy, gx, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """gx[p, ih, iw] = sum of gy[p, oh, ow] / divide factor over the windows holding (ih, iw).

    gy (P, H_out, W_out), gx (P, H, W); one thread per input element.
    """
    _, height, width = gx.shape
    _, out_h, out_w = gy.shape
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        iw = i % width
        t = i // width
        ih = t % height
        p = t // height
        # windows with oh*sh - ph <= ih < oh*sh - ph + kh
        lo = ih + ph - kh + 1
        oh_lo = -((-lo) // sh) if lo > 0 else 0
        oh_hi = min(out_h - 1, (ih + ph) // sh)
        lo = iw + pw - kw + 1
        ow_lo = -((-lo) // sw) if lo > 0 else 0
        ow_hi = min(out_w - 1, (iw + pw) // sw)
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi + 1):
            for ow in range(ow_lo, ow_hi + 1):
                _, _, _, _, factor = _avg_window(oh, ow, height, width, kh, kw, sh, sw, ph,
                                                 pw, count_include_pad, divisor)
                acc += gy[p, oh, ow] / gx.dtype.type(factor)
        gx[p, ih, iw] = acc


def _planes(array):
    """A (N, C, H, W) device array as (N * C, H, W): one plane per (n, c), a view."""
    n_batch, chans, height, width = array.shape
    return array.reshape(n_batch * chans, height, width)


def max_pool2d_forward(x, kernel, stride, padding, dilation, out_hw):
    """Max pooling of x (N, C, H, W); returns ``(y, indices)``, both (N, C, H_out, W_out),
    indices int64 flat ``h*W + w`` within each plane. All window arguments are (h, w) pairs,
    padding symmetric; ``out_hw`` already accounts for ceil_mode."""
    n_batch, chans, _, _ = x.shape
    out_h, out_w = out_hw
    y = steps.empty((n_batch, chans, out_h, out_w), x.dtype)
    indices = steps.empty((n_batch, chans, out_h, out_w), np.int64)
    _launch(_max_pool_forward_kernel, y.size, _planes(x), _planes(y), _planes(indices),
            kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1])
    return y, indices


def max_pool2d_backward(grad_y, indices, input_shape, kernel=None, stride=None, padding=None,
                        dilation=None):
    """Gradient (``input_shape`` = (N, C, H, W)) of max pooling from grad_y and the forward's
    indices (both (N, C, H_out, W_out)).

    With the window geometry (``kernel``, ``stride``, ``padding``, ``dilation`` pairs) it is a
    gather, one thread per input element over the windows that span it. Without it, one
    thread per (n, c) plane scatters the plane sequentially. Either way deterministic, no
    atomics, and summed in PyTorch's (oh, ow) order.
    """
    n_batch, chans, height, width = input_shape
    _, _, out_h, out_w = grad_y.shape
    grad_x = steps.empty((n_batch, chans, height, width), grad_y.dtype)
    if kernel is None:
        planes = n_batch * chans
        _launch(_max_pool_backward_plane_kernel, planes,
                grad_y.reshape(planes, out_h * out_w), indices.reshape(planes, out_h * out_w),
                grad_x.reshape(planes, height * width))
        return grad_x
    dilation = (1, 1) if dilation is None else dilation
    _launch(_max_pool_backward_gather_kernel, grad_x.size, _planes(grad_y), _planes(indices),
            _planes(grad_x), kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1])
    return grad_x


def avg_pool2d_forward(x, kernel, stride, padding, out_hw, count_include_pad=True, divisor=0):
    """Average pooling of x (N, C, H, W) to (N, C, H_out, W_out); window arguments are
    (h, w) pairs, padding symmetric; ``divisor`` 0 means no divisor override."""
    n_batch, chans, _, _ = x.shape
    out_h, out_w = out_hw
    y = steps.empty((n_batch, chans, out_h, out_w), x.dtype)
    _launch(_avg_pool_forward_kernel, y.size, _planes(x), _planes(y), kernel[0], kernel[1],
            stride[0], stride[1], padding[0], padding[1], bool(count_include_pad),
            int(divisor or 0))
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel, stride, padding, count_include_pad=True,
                        divisor=0):
    """Gradient (``input_shape`` = (N, C, H, W)) of :func:`avg_pool2d_forward` from grad_y
    (N, C, H_out, W_out); a deterministic gather."""
    n_batch, chans, height, width = input_shape
    grad_x = steps.empty((n_batch, chans, height, width), grad_y.dtype)
    _launch(_avg_pool_backward_kernel, grad_x.size, _planes(grad_y), _planes(grad_x),
            kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
            bool(count_include_pad), int(divisor or 0))
    return grad_x
