"""Direct 2-D convolution (cross-correlation, as PyTorch) forward and backward on CUDA.

Every kernel is a *gather*: each thread owns elements of the array it writes and reads what
they depend on, so nothing is written twice, no atomics are needed and results do not depend
on scheduling. The weight gradient, a long reduction over (N, H_out, W_out) for few outputs,
is split in two passes (chunk partial sums, then their ordered sum) to expose parallelism.

Shapes: x (N, C_in, H, W), weight (C_out, C_in/groups, kH, kW), bias (C_out,),
y (N, C_out, H_out, W_out). ``padding`` is ``((top, bottom), (left, right))``; only top and
left shift the windows, bottom and right only enter the output size.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from numbaconv.shapes import output_size

from . import config
from .ops import (
    _activate,
    _launch,
    _placeholder,
    _sum_chunks_kernel,
    activation_backward_into,
    activation_code,
    sum_over_batch_and_space,
)


@cuda.jit
def _conv2d_forward_kernel(x, w, bias, y, sh, sw, pt, pl, dh, dw, has_bias, act):
    """y[n, co, oh, ow] = act(bias[co] + sum x[n, ci, ih, iw] * w[co, ci_g, kh, kw]).

    ih = oh*sh - pt + kh*dh, iw = ow*sw - pl + kw*dw, zero outside x; ci runs over the input
    channels of co's group. One thread per output element, ow fastest (coalesced x reads).
    """
    _, _, height, width = x.shape
    _, c_out, out_h, out_w = y.shape
    cin_g, k_h, k_w = w.shape[1], w.shape[2], w.shape[3]
    cout_g = c_out // (x.shape[1] // cin_g)
    one = y.dtype.type(1)
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = i % out_w
        t = i // out_w
        oh = t % out_h
        t //= out_h
        co = t % c_out
        n = t // c_out
        ci0 = (co // cout_g) * cin_g
        acc = bias[co] if has_bias else y.dtype.type(0)
        for ci in range(cin_g):
            for kh in range(k_h):
                ih = oh * sh - pt + kh * dh
                if ih < 0 or ih >= height:
                    continue
                for kw in range(k_w):
                    iw = ow * sw - pl + kw * dw
                    if iw >= 0 and iw < width:
                        acc += x[n, ci0 + ci, ih, iw] * w[co, ci, kh, kw]
        y[n, co, oh, ow] = _activate(acc, act, one)


@cuda.jit
def _conv2d_grad_input_kernel(gy, w, gx, sh, sw, pt, pl, dh, dw):
    """gx[n, ci, ih, iw] = sum over (co in ci's group, kh, kw) of gy[n, co, oh, ow] * w[...]
    for the (oh, ow) whose window puts tap (kh, kw) on (ih, iw): oh*sh = ih + pt - kh*dh.

    One thread per input element; no scatter, hence no atomics.
    """
    _, c_in, height, width = gx.shape
    _, c_out, out_h, out_w = gy.shape
    cin_g, k_h, k_w = w.shape[1], w.shape[2], w.shape[3]
    cout_g = c_out // (c_in // cin_g)
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        iw = i % width
        t = i // width
        ih = t % height
        t //= height
        ci = t % c_in
        n = t // c_in
        g = ci // cin_g
        cil = ci - g * cin_g
        acc = gx.dtype.type(0)
        for co in range(g * cout_g, (g + 1) * cout_g):
            for kh in range(k_h):
                th = ih + pt - kh * dh
                if th < 0 or th % sh != 0:
                    continue
                oh = th // sh
                if oh >= out_h:
                    continue
                for kw in range(k_w):
                    tw = iw + pl - kw * dw
                    if tw < 0 or tw % sw != 0:
                        continue
                    ow = tw // sw
                    if ow < out_w:
                        acc += gy[n, co, oh, ow] * w[co, cil, kh, kw]
        gx[n, ci, ih, iw] = acc


@cuda.jit
def _conv2d_grad_weight_partial_kernel(gy, x, partial, sh, sw, pt, pl, dh, dw, k_h, k_w,
                                       chunk):
    """partial[k, e] = sum over the k-th chunk of the flat (n, oh, ow) range of
    gy[n, co, oh, ow] * x[n, ci, ih, iw], e the flat index of weight element (co, ci_g, kh, kw).

    partial (K, C_out * C_in/groups * kH * kW); ``chunk`` terms per chunk.
    """
    _, c_in, height, width = x.shape
    _, c_out, out_h, out_w = gy.shape
    n_weight = partial.shape[1]
    cin_g = n_weight // (c_out * k_h * k_w)
    cout_g = c_out // (c_in // cin_g)
    reduced = gy.shape[0] * out_h * out_w
    for i in range(cuda.grid(1), partial.size, cuda.gridsize(1)):
        e = i % n_weight
        k = i // n_weight
        kw = e % k_w
        t = e // k_w
        kh = t % k_h
        t //= k_h
        cil = t % cin_g
        co = t // cin_g
        ci = (co // cout_g) * cin_g + cil
        acc = partial.dtype.type(0)
        for r in range(k * chunk, min(reduced, (k + 1) * chunk)):
            ow = r % out_w
            s = r // out_w
            oh = s % out_h
            n = s // out_h
            ih = oh * sh - pt + kh * dh
            iw = ow * sw - pl + kw * dw
            if ih >= 0 and ih < height and iw >= 0 and iw < width:
                acc += gy[n, co, oh, ow] * x[n, ci, ih, iw]
        partial[k, e] = acc


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation=None):
    """2-D convolution of device arrays; returns a new (N, C_out, H_out, W_out) device array.

    x (N, C_in, H, W); weight (C_out, C_in/groups, kH, kW); bias (C_out,) or None;
    stride (sh, sw); padding ((top, bottom), (left, right)); dilation (dh, dw); groups int.
    ``activation`` (None, 'relu', 'sigmoid', 'tanh') is fused after the bias.
    """
    n_batch, _, height, width = x.shape
    c_out, _, k_h, k_w = weight.shape
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, padding, dilation
    out_h = output_size(height, k_h, sh, (pt, pb), dh)
    out_w = output_size(width, k_w, sw, (pl, pr), dw)
    y = cuda.device_array((n_batch, c_out, out_h, out_w), dtype=x.dtype)
    has_bias = bias is not None
    _launch(_conv2d_forward_kernel, y.size, x, weight,
            bias if has_bias else _placeholder(x.dtype), y, sh, sw, pt, pl, dh, dw,
            has_bias, activation_code(activation))
    return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, y=None,
                    activation=None, with_bias=True, need_input_grad=True):
    """``(grad_x, grad_weight, grad_bias)`` of :func:`conv2d_forward`.

    grad_y (N, C_out, H_out, W_out) is the gradient at the layer's output (after the fused
    activation, whose backward needs that output ``y``). grad_x has x's shape, grad_weight
    weight's, grad_bias is (C_out,) = grad_y summed over N, H_out, W_out (None when
    ``with_bias`` is false; grad_x is None when ``need_input_grad`` is false, as a first
    layer needs none). Deterministic: gathers and fixed-order two-pass sums.
    """
    g = activation_backward_into(grad_y, y, activation)
    c_out, cin_g, k_h, k_w = weight.shape
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = stride, padding, dilation

    grad_x = None
    if need_input_grad:
        grad_x = cuda.device_array(x.shape, dtype=x.dtype)
        _launch(_conv2d_grad_input_kernel, grad_x.size, g, weight, grad_x, sh, sw, pt, pl, dh,
                dw)

    n_weight = c_out * cin_g * k_h * k_w
    reduced = g.shape[0] * g.shape[2] * g.shape[3]
    chunks, chunk = config.chunking(n_weight, reduced)
    partial = cuda.device_array((chunks, n_weight), dtype=x.dtype)
    _launch(_conv2d_grad_weight_partial_kernel, partial.size, g, x, partial, sh, sw, pt, pl,
            dh, dw, k_h, k_w, chunk)
    grad_weight = cuda.device_array(weight.shape, dtype=x.dtype)
    _launch(_sum_chunks_kernel, n_weight, partial, grad_weight.reshape(n_weight),
            np.dtype(x.dtype).type(1))

    grad_bias = None
    if with_bias:
        grad_bias = sum_over_batch_and_space(
            g.reshape(g.shape[0], c_out, g.shape[2] * g.shape[3]))
    return grad_x, grad_weight, grad_bias
