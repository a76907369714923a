"""The convolution's backward by plain loops over the real windows only, for inputs that hold
inf or NaN: the fast kernels multiply scratch zeros with every input value, and ``0 * inf``
would put NaN where PyTorch has none."""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def conv2d_backward_direct(gy, xp, w, stride_h, stride_w, dilation_h, dilation_w, groups):
    """(grad_xp, grad_w, grad_b) by plain loops over the real windows only.

    For inputs holding inf or NaN: the fast kernels multiply scratch zeros with every input
    value, and ``0 * inf`` would put NaN where PyTorch has none.
    """
    n_batch, c_in, hp, wp = xp.shape
    c_out, c_in_g, kh_size, kw_size = w.shape
    out_h, out_w = gy.shape[2], gy.shape[3]
    c_out_g = c_out // groups
    grad_w = np.zeros_like(w)
    for job in prange(c_out * c_in_g):
        co = job // c_in_g
        ci = job % c_in_g
        cx = (co // c_out_g) * c_in_g + ci
        for kh in range(kh_size):
            for kw in range(kw_size):
                for n in range(n_batch):
                    for oh in range(out_h):
                        ih = oh * stride_h + kh * dilation_h
                        for ow in range(out_w):
                            grad_w[co, ci, kh, kw] += gy[n, co, oh, ow] * xp[
                                n, cx, ih, ow * stride_w + kw * dilation_w]
    grad_xp = np.zeros_like(xp)
    for job in prange(n_batch * c_in):
        n = job // c_in
        cx = job % c_in
        ci = cx % c_in_g
        for co in range((cx // c_in_g) * c_out_g, (cx // c_in_g + 1) * c_out_g):
            for kh in range(kh_size):
                for kw in range(kw_size):
                    weight = w[co, ci, kh, kw]
                    for oh in range(out_h):
                        ih = oh * stride_h + kh * dilation_h
                        for ow in range(out_w):
                            grad_xp[n, cx, ih, ow * stride_w + kw * dilation_w] += \
                                weight * gy[n, co, oh, ow]
    grad_b = np.zeros(c_out, dtype=gy.dtype)
    for co in prange(c_out):
        for n in range(n_batch):
            for oh in range(out_h):
                for ow in range(out_w):
                    grad_b[co] += gy[n, co, oh, ow]
    return grad_xp, grad_w, grad_b
