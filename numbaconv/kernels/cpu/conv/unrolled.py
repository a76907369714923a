"""The unrolled kernels: on a tiny map (ResNet-18's 2x2 maps at 28x28), a convolution is one
matrix product per batch, with the kernel unrolled into the matrix that maps a sample's whole
input to its whole output:

    u[(m, oh, ow), (c, ih, iw)] = w[m, c, kh, kw]  where ih = oh * sh + kh * dh - top, ...

(zero where no tap joins the two). Only the taps that read the input are in it: on a 2x2 map
with a 3x3 kernel and padding 1, 4 per output instead of the column kernels' 9 (5 of them
zeros of the padding), and no columns are copied: the samples' inputs, as they lie, are the
product's rows. With x as (N, C * H * W) and y as (N, M * OH * OW), by the blocked tiles of
:func:`.tiles._gemm_acc`, the samples along the vectors:

    forward:       y.T    = u @ x.T
    weight grad:   grad_u = gy.T @ x, folded back onto w (the sum over the positions of a tap)
    input grad:    grad_x = gy @ u

Each parallel task owns a block of rows of its product, so results do not depend on the
number of threads. :func:`use_unrolled` says where they serve.
"""

import numpy as np
from numba import njit, prange

from .columns import K_BLOCK
from .tiles import _gemm_acc

MAX_MAP = 4  # input and output pixels per channel at most (2x2 maps)
ROW_BLOCK = 16  # rows of a product per parallel task


def use_unrolled(x_shape, out_shape):
    """Whether a convolution takes the unrolled kernels: input and output maps of at most
    :data:`MAX_MAP` pixels (there, unrolled products hold no more terms than the columns')."""
    return x_shape[2] * x_shape[3] <= MAX_MAP and out_shape[2] * out_shape[3] <= MAX_MAP


@njit(cache=True)
def _unroll(w, height, width, out_h, out_w, stride_h, stride_w, dilation_h, dilation_w, top,
            left):
    """u (C_out * OH * OW, C_in * H * W): the kernel w (C_out, C_in, KH, KW) unrolled."""
    c_out, c_in, kh_size, kw_size = w.shape
    hw = height * width
    u = np.zeros((c_out * out_h * out_w, c_in * hw), dtype=w.dtype)
    for m in range(c_out):
        for oh in range(out_h):
            for ow in range(out_w):
                row = u[(m * out_h + oh) * out_w + ow]
                for kh in range(kh_size):
                    ih = oh * stride_h + kh * dilation_h - top
                    if ih < 0 or ih >= height:
                        continue
                    for kw in range(kw_size):
                        iw = ow * stride_w + kw * dilation_w - left
                        if 0 <= iw < width:
                            for c in range(c_in):
                                row[c * hw + ih * width + iw] = w[m, c, kh, kw]
    return u


@njit(cache=True)
def _fold(grad_u, c_in, kh_size, kw_size, height, width, out_h, out_w, stride_h, stride_w,
          dilation_h, dilation_w, top, left):
    """The weight gradient (C_out, C_in, KH, KW) from the unrolled one: each tap's entries
    summed (the inverse of :func:`_unroll`)."""
    c_out = grad_u.shape[0] // (out_h * out_w)
    hw = height * width
    grad_w = np.zeros((c_out, c_in, kh_size, kw_size), dtype=grad_u.dtype)
    for m in range(c_out):
        for oh in range(out_h):
            for ow in range(out_w):
                row = grad_u[(m * out_h + oh) * out_w + ow]
                for kh in range(kh_size):
                    ih = oh * stride_h + kh * dilation_h - top
                    if ih < 0 or ih >= height:
                        continue
                    for kw in range(kw_size):
                        iw = ow * stride_w + kw * dilation_w - left
                        if 0 <= iw < width:
                            for c in range(c_in):
                                grad_w[m, c, kh, kw] += row[c * hw + ih * width + iw]
    return grad_w


@njit(parallel=True, cache=True)
def _product(a, b, rows_total):
    """a (R, K) @ b (K, P): c (R, P), by blocks of ROW_BLOCK rows in parallel."""
    c = np.zeros((rows_total, b.shape[1]), dtype=b.dtype)
    n_blocks = -(-rows_total // ROW_BLOCK)
    for block in prange(n_blocks):
        r0 = block * ROW_BLOCK
        r1 = min(rows_total, r0 + ROW_BLOCK)
        _gemm_acc(a[r0:r1], b, c[r0:r1], b.shape[1], K_BLOCK)
    return c


def forward_unrolled(x, w, b, geometry, out_h, out_w):
    """y (N, C_out, out_h, out_w) of x (N, C_in, H, W); ``geometry`` = (stride_h, stride_w,
    dilation_h, dilation_w, top, left)."""
    n = x.shape[0]
    u = _unroll(w, x.shape[2], x.shape[3], out_h, out_w, *geometry)
    y_t = _product(u, np.ascontiguousarray(x.reshape(n, -1).T), u.shape[0])
    y = y_t.T.reshape(n, w.shape[0], out_h, out_w)
    return np.ascontiguousarray(y + b[:, None, None].astype(y.dtype, copy=False))


def backward_unrolled(gy, x, w, geometry, need_input_grad):
    """``(grad_x or None, grad_w, grad_b)`` of :func:`forward_unrolled` at gy."""
    n, c_in, height, width = x.shape
    out_h, out_w = gy.shape[2], gy.shape[3]
    gy_rows = np.ascontiguousarray(gy.reshape(n, -1))
    grad_u = _product(np.ascontiguousarray(gy_rows.T), np.ascontiguousarray(x.reshape(n, -1)),
                      gy_rows.shape[1])
    grad_w = _fold(grad_u, c_in, w.shape[2], w.shape[3], height, width, out_h, out_w,
                   *geometry)
    grad_b = gy.sum(axis=(0, 2, 3), dtype=np.float64).astype(gy.dtype)
    grad_x = None
    if need_input_grad:
        u = _unroll(w, height, width, out_h, out_w, *geometry)
        grad_x = _product(gy_rows, u, n).reshape(x.shape)
    return grad_x, grad_w, grad_b
