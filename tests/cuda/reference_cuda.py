"""Float64 NumPy references for the CUDA-backend tests, written independently of the kernels.

Convolution is computed by shifted-slice products (the backward input gradient as a scatter,
the opposite of the kernels' gather); pooling follows PyTorch's CPU loops literally. Shapes as
in ``numbaconv.kernels.cuda``: x (N, C, H, W), weight (C_out, C_in/groups, kH, kW),
padding of convolution ((top, bottom), (left, right)), of pooling (ph, pw).
"""

from __future__ import annotations

import math

import numpy as np


def _out(n, k, s, lo, hi, d):
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


def conv2d(x, w, b, stride, padding, dilation, groups):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, padding, dilation
    n, c_in, h, wd = x.shape
    c_out, cin_g, kh, kw = w.shape
    oh, ow = _out(h, kh, sh, pt, pb, dh), _out(wd, kw, sw, pl, pr, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    y = np.zeros((n, c_out, oh, ow))
    cout_g = c_out // groups
    for g in range(groups):
        xs = xp[:, g * cin_g:(g + 1) * cin_g]
        ws = w[g * cout_g:(g + 1) * cout_g]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                           j * dw:j * dw + (ow - 1) * sw + 1:sw]
                y[:, g * cout_g:(g + 1) * cout_g] += np.einsum("nchw,oc->nohw", patch,
                                                               ws[:, :, i, j])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_backward(gy, x, w, stride, padding, dilation, groups):
    gy = np.asarray(gy, np.float64)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, padding, dilation
    n, c_in, h, wd = x.shape
    c_out, cin_g, kh, kw = w.shape
    _, _, oh, ow = gy.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    cout_g = c_out // groups
    for g in range(groups):
        ci = slice(g * cin_g, (g + 1) * cin_g)
        co = slice(g * cout_g, (g + 1) * cout_g)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
                cols = slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)
                gxp[:, ci, rows, cols] += np.einsum("nohw,oc->nchw", gy[:, co], w[co, :, i, j])
                gw[co, :, i, j] += np.einsum("nohw,nchw->oc", gy[:, co], xp[:, ci, rows, cols])
    gx = gxp[:, :, pt:pt + h, pl:pl + wd]
    return gx, gw, gy.sum(axis=(0, 2, 3))


def max_pool2d(x, kernel, stride, padding, dilation, out_hw):
    """(y, indices) with PyTorch's CPU loop, in the dtype of x (float64 for the references)."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh_n, ow_n = out_hw
    y = np.zeros((n, c, oh_n, ow_n), x.dtype)
    idx = np.zeros((n, c, oh_n, ow_n), np.int64)
    for a in range(n):
        for b in range(c):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    ih0, iw0 = oh * sh - ph, ow * sw - pw
                    ih1 = min(ih0 + (kh - 1) * dh + 1, h)
                    iw1 = min(iw0 + (kw - 1) * dw + 1, w)
                    while ih0 < 0:
                        ih0 += dh
                    while iw0 < 0:
                        iw0 += dw
                    best, peak = ih0 * w + iw0, -math.inf
                    for ih in range(ih0, ih1, dh):
                        for iw in range(iw0, iw1, dw):
                            v = x[a, b, ih, iw]
                            if v > peak or math.isnan(v):
                                best, peak = ih * w + iw, v
                    y[a, b, oh, ow] = peak
                    idx[a, b, oh, ow] = best
    return y, idx


def max_pool2d_backward(gy, idx, input_shape):
    n, c, h, w = input_shape
    gx = np.zeros((n, c, h * w), np.float64)
    g = np.asarray(gy, np.float64).reshape(n, c, -1)
    i = np.asarray(idx).reshape(n, c, -1)
    for a in range(n):
        for b in range(c):
            np.add.at(gx[a, b], i[a, b], g[a, b])
    return gx.reshape(n, c, h, w)


def _avg_windows(h, w, kernel, stride, padding, out_hw, count_include_pad, divisor):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    for oh in range(out_hw[0]):
        for ow in range(out_hw[1]):
            ih0, iw0 = oh * sh - ph, ow * sw - pw
            ih1, iw1 = min(ih0 + kh, h + ph), min(iw0 + kw, w + pw)
            pool_size = (ih1 - ih0) * (iw1 - iw0)
            ih0, iw0, ih1, iw1 = max(ih0, 0), max(iw0, 0), min(ih1, h), min(iw1, w)
            if divisor:
                factor = divisor
            elif count_include_pad:
                factor = pool_size
            else:
                factor = (ih1 - ih0) * (iw1 - iw0)
            yield oh, ow, ih0, ih1, iw0, iw1, factor


def avg_pool2d(x, kernel, stride, padding, out_hw, count_include_pad, divisor):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    y = np.zeros((n, c) + tuple(out_hw))
    for oh, ow, ih0, ih1, iw0, iw1, factor in _avg_windows(h, w, kernel, stride, padding,
                                                           out_hw, count_include_pad, divisor):
        if ih0 < ih1 and iw0 < iw1:
            y[:, :, oh, ow] = x[:, :, ih0:ih1, iw0:iw1].sum(axis=(2, 3)) / factor
    return y


def avg_pool2d_backward(gy, input_shape, kernel, stride, padding, count_include_pad, divisor):
    gy = np.asarray(gy, np.float64)
    n, c, h, w = input_shape
    gx = np.zeros((n, c, h, w))
    for oh, ow, ih0, ih1, iw0, iw1, factor in _avg_windows(h, w, kernel, stride, padding,
                                                           gy.shape[2:], count_include_pad,
                                                           divisor):
        if ih0 < ih1 and iw0 < iw1:
            gx[:, :, ih0:ih1, iw0:iw1] += (gy[:, :, oh, ow] / factor)[:, :, None, None]
    return gx
