"""Numba CPU kernels for 2-D convolution (cross-correlation), forward and backward.

The public wrappers in :mod:`numbaconv.functional` check and normalise every argument; the
kernels trust their inputs. Inputs arrive already padded and C-contiguous:

    xp : (N, C_in, Hp, Wp)            the zero-padded input
    w  : (C_out, C_in // groups, KH, KW)
    y  : (N, C_out, OH, OW)

Two families of kernels:

* ``*_wide`` (stride 1): each output row is computed over the full padded width ``Wp``, so an
  output plane and the input plane it reads are both flat, contiguous vectors and every kernel
  tap is one long ``axpy`` that LLVM turns into SIMD code. The ``Wp - OW`` extra columns of
  each row are scratch and are dropped (forward) or held at zero (backward).
* ``*_strided``: plain loops for any stride.

Parallel loops only ever write to memory that one iteration owns (an output plane, an input
gradient plane, or one ``(c_out, c_in)`` weight-gradient slice), so results do not depend on the
number of threads.
"""

import numpy as np
from numba import njit, prange

# Sums over many products: let LLVM reorder and fuse them so the reductions vectorise.
# No 'nnan'/'ninf': NaN and inf still propagate as in PyTorch.
_FAST = {"reassoc", "contract"}


@njit(parallel=True, cache=True, fastmath=_FAST)
def conv2d_forward_wide(xp, w, b, dilation_h, dilation_w, groups, out_h, out_w):
    """Stride-1 convolution; returns y of shape (N, C_out, out_h, out_w)."""
    n_batch, _, _, wp = xp.shape
    c_out, c_in_g, kh_size, kw_size = w.shape
    c_out_g = c_out // groups
    span = (out_h - 1) * wp + out_w  # flat length covering every valid output
    xflat = xp.reshape(n_batch, xp.shape[1], -1)
    y = np.empty((n_batch, c_out, out_h, out_w), dtype=xp.dtype)
    for job in prange(n_batch * c_out):
        n = job // c_out
        co = job % c_out
        c0 = (co // c_out_g) * c_in_g
        acc = np.full(span, b[co], dtype=xp.dtype)
        for ci in range(c_in_g):
            plane = xflat[n, c0 + ci]
            for kh in range(kh_size):
                for kw in range(kw_size):
                    weight = w[co, ci, kh, kw]
                    offset = kh * dilation_h * wp + kw * dilation_w
                    for p in range(span):
                        acc[p] += weight * plane[p + offset]
        for oh in range(out_h):
            for ow in range(out_w):
                y[n, co, oh, ow] = acc[oh * wp + ow]
    return y


@njit(parallel=True, cache=True, fastmath=_FAST)
def conv2d_forward_strided(xp, w, b, stride_h, stride_w, dilation_h, dilation_w, groups,
                           out_h, out_w):
    """Convolution with any stride; returns y of shape (N, C_out, out_h, out_w)."""
    n_batch = xp.shape[0]
    c_out, c_in_g, kh_size, kw_size = w.shape
    c_out_g = c_out // groups
    y = np.empty((n_batch, c_out, out_h, out_w), dtype=xp.dtype)
    for job in prange(n_batch * c_out):
        n = job // c_out
        co = job % c_out
        c0 = (co // c_out_g) * c_in_g
        out = y[n, co]
        out[:, :] = b[co]
        for ci in range(c_in_g):
            plane = xp[n, c0 + ci]
            for kh in range(kh_size):
                for kw in range(kw_size):
                    weight = w[co, ci, kh, kw]
                    for oh in range(out_h):
                        ih = oh * stride_h + kh * dilation_h
                        for ow in range(out_w):
                            out[oh, ow] += weight * plane[ih, ow * stride_w + kw * dilation_w]
    return y


@njit(parallel=True, cache=True, fastmath=_FAST)
def conv2d_backward_wide(gy, xp, w, dilation_h, dilation_w, groups, need_input_grad):
    """Stride-1 gradients: (grad_xp, grad_w) with grad_xp over the padded input.

    ``grad_xp`` is empty (shape (0, 0, 0, 0)) when ``need_input_grad`` is False.
    """
    n_batch, c_in, hp, wp = xp.shape
    c_out, c_in_g, kh_size, kw_size = w.shape
    out_h, out_w = gy.shape[2], gy.shape[3]
    c_out_g = c_out // groups
    span = (out_h - 1) * wp + out_w
    # grad_y laid out on the padded width, its extra columns zero, so that gradients can use
    # the same flat shifted-vector arithmetic as the forward pass.
    gyw = np.zeros((n_batch, c_out, out_h * wp), dtype=gy.dtype)
    for job in prange(n_batch * c_out):
        n = job // c_out
        co = job % c_out
        for oh in range(out_h):
            for ow in range(out_w):
                gyw[n, co, oh * wp + ow] = gy[n, co, oh, ow]
    xflat = xp.reshape(n_batch, c_in, hp * wp)

    zero = np.zeros(1, dtype=w.dtype)[0]  # accumulate in the input's precision, like PyTorch
    grad_w = np.empty_like(w)
    for job in prange(c_out * c_in_g):
        co = job // c_in_g
        ci = job % c_in_g
        cx = (co // c_out_g) * c_in_g + ci
        for kh in range(kh_size):
            for kw in range(kw_size):
                offset = kh * dilation_h * wp + kw * dilation_w
                total = zero
                for n in range(n_batch):
                    g = gyw[n, co]
                    plane = xflat[n, cx]
                    for p in range(span):
                        total += g[p] * plane[p + offset]
                grad_w[co, ci, kh, kw] = total

    if not need_input_grad:
        return np.empty((0, 0, 0, 0), dtype=xp.dtype), grad_w
    grad_xp = np.zeros((n_batch, c_in, hp * wp), dtype=xp.dtype)
    for job in prange(n_batch * c_in):
        n = job // c_in
        cx = job % c_in
        group = cx // c_in_g
        ci = cx % c_in_g
        out = grad_xp[n, cx]
        for co in range(group * c_out_g, (group + 1) * c_out_g):
            g = gyw[n, co]
            for kh in range(kh_size):
                for kw in range(kw_size):
                    weight = w[co, ci, kh, kw]
                    offset = kh * dilation_h * wp + kw * dilation_w
                    for p in range(span):
                        out[p + offset] += weight * g[p]
    return grad_xp.reshape(n_batch, c_in, hp, wp), grad_w


@njit(parallel=True, cache=True, fastmath=_FAST)
def conv2d_backward_strided(gy, xp, w, stride_h, stride_w, dilation_h, dilation_w, groups,
                            need_input_grad):
    """Gradients for any stride: (grad_xp, grad_w), grad_xp over the padded input."""
    n_batch, c_in, hp, wp = xp.shape
    c_out, c_in_g, kh_size, kw_size = w.shape
    out_h, out_w = gy.shape[2], gy.shape[3]
    c_out_g = c_out // groups

    zero = np.zeros(1, dtype=w.dtype)[0]  # accumulate in the input's precision, like PyTorch
    grad_w = np.empty_like(w)
    for job in prange(c_out * c_in_g):
        co = job // c_in_g
        ci = job % c_in_g
        cx = (co // c_out_g) * c_in_g + ci
        for kh in range(kh_size):
            for kw in range(kw_size):
                total = zero
                for n in range(n_batch):
                    for oh in range(out_h):
                        ih = oh * stride_h + kh * dilation_h
                        for ow in range(out_w):
                            total += gy[n, co, oh, ow] * xp[n, cx, ih,
                                                            ow * stride_w + kw * dilation_w]
                grad_w[co, ci, kh, kw] = total

    if not need_input_grad:
        return np.empty((0, 0, 0, 0), dtype=xp.dtype), grad_w
    grad_xp = np.zeros_like(xp)
    for job in prange(n_batch * c_in):
        n = job // c_in
        cx = job % c_in
        group = cx // c_in_g
        ci = cx % c_in_g
        out = grad_xp[n, cx]
        for co in range(group * c_out_g, (group + 1) * c_out_g):
            for kh in range(kh_size):
                for kw in range(kw_size):
                    weight = w[co, ci, kh, kw]
                    for oh in range(out_h):
                        ih = oh * stride_h + kh * dilation_h
                        for ow in range(out_w):
                            out[ih, ow * stride_w + kw * dilation_w] += weight * gy[n, co, oh, ow]
    return grad_xp, grad_w


@njit(parallel=True, cache=True)
def bias_grad(gy):
    """Sum of gy (N, C, H, W) over N, H and W: shape (C,)."""
    n_batch, channels = gy.shape[0], gy.shape[1]
    out = np.empty(channels, dtype=gy.dtype)
    for c in prange(channels):
        total = gy[0, c].sum()
        for n in range(1, n_batch):
            total += gy[n, c].sum()
        out[c] = total
    return out
