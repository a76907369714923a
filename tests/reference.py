"""Plain float64 NumPy loop references for convolution and pooling: the source of truth.

These are written for clarity, not speed: explicit Python loops over every output position,
with only the innermost window sum left to ``np.sum``. They deliberately share no code with
``numbaconv`` (not even its argument normalisation) so that a bug there cannot hide here.

Conventions (PyTorch 2.x): arrays are NCHW, a convolution's weight is
``(out_channels, in_channels // groups, kH, kW)``; padding may be an int, ``(ph, pw)``,
``((top, bottom), (left, right))``, ``'valid'`` or ``'same'``.
"""

from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------------------------------------
# argument helpers


def pair(value) -> tuple[int, int]:
    """An int or a pair of ints as ``(h, w)``."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


def conv_sides(padding, kernel, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """Any accepted convolution padding as ``((top, bottom), (left, right))``."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            sides = []
            for k, d in zip(kernel, dilation, strict=True):
                total = d * (k - 1)
                sides.append((total // 2, total - total // 2))
            return sides[0], sides[1]
        raise ValueError(padding)
    if isinstance(padding, (int, np.integer)):
        return (int(padding), int(padding)), (int(padding), int(padding))
    a, b = padding
    if isinstance(a, (int, np.integer)):
        return (int(a), int(a)), (int(b), int(b))
    return pair(a), pair(b)


def out_len(n, k, s, lo, hi, d=1, ceil_mode=False) -> int:
    """Output length along one axis (PyTorch's ``pooling_output_shape``)."""
    span = n + lo + hi - d * (k - 1) - 1
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= n + lo:
            out -= 1
        return out
    return span // s + 1


# --------------------------------------------------------------------------------------------
# 2-D cross-correlation and convolution (D2L 6.2)


def corr2d(X, K):
    X = np.asarray(X, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    h, w = K.shape
    Y = np.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = np.sum(X[i:i + h, j:j + w] * K)
    return Y


def convolve2d(X, K):
    """True convolution, 'valid' size: the kernel flipped along both axes."""
    K = np.asarray(K, dtype=np.float64)
    return corr2d(X, K[::-1, ::-1])


# --------------------------------------------------------------------------------------------
# conv2d


def _conv_geometry(x_shape, w_shape, stride, padding, dilation):
    kh, kw = w_shape[2:]
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    (pt, pb), (pl, pr) = conv_sides(padding, (kh, kw), (dh, dw))
    H, W = x_shape[2:]
    oh = out_len(H, kh, sh, pt, pb, dh)
    ow = out_len(W, kw, sw, pl, pr, dw)
    return (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    N, C, H, W = x.shape
    F = weight.shape[0]
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow) = _conv_geometry(
        x.shape, weight.shape, stride, padding, dilation)
    cin_g = C // groups
    cout_g = F // groups
    assert weight.shape[1] == cin_g
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    y = np.zeros((N, F, oh, ow))
    for n in range(N):
        for f in range(F):
            g = f // cout_g
            chans = slice(g * cin_g, (g + 1) * cin_g)
            for i in range(oh):
                for j in range(ow):
                    win = xp[n, chans,
                             i * sh:i * sh + dh * (kh - 1) + 1:dh,
                             j * sw:j * sw + dw * (kw - 1) + 1:dw]
                    y[n, f, i, j] = np.sum(win * weight[f])
            if bias is not None:
                y[n, f] += float(bias[f])
    return y


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """``(grad_x, grad_weight, grad_bias)`` of ``conv2d`` for the upstream gradient ``grad_y``."""
    grad_y = np.asarray(grad_y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    N, C, H, W = x.shape
    F = weight.shape[0]
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow) = _conv_geometry(
        x.shape, weight.shape, stride, padding, dilation)
    assert grad_y.shape == (N, F, oh, ow)
    cin_g = C // groups
    cout_g = F // groups
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(weight)
    for n in range(N):
        for f in range(F):
            g = f // cout_g
            chans = slice(g * cin_g, (g + 1) * cin_g)
            for i in range(oh):
                for j in range(ow):
                    rows = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
                    cols = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
                    gy = grad_y[n, f, i, j]
                    gxp[n, chans, rows, cols] += gy * weight[f]
                    gw[f] += gy * xp[n, chans, rows, cols]
    gx = gxp[:, :, pt:pt + H, pl:pl + W]
    gb = grad_y.sum(axis=(0, 2, 3))
    return np.ascontiguousarray(gx), gw, gb


# --------------------------------------------------------------------------------------------
# max pooling


def _pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    kh, kw = pair(kernel_size)
    sh, sw = (kh, kw) if stride is None else pair(stride)
    ph, pw = pair(padding)
    dh, dw = pair(dilation)
    H, W = x_shape[2:]
    oh = out_len(H, kh, sh, ph, ph, dh, ceil_mode)
    ow = out_len(W, kw, sw, pw, pw, dw, ceil_mode)
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max pooling with PyTorch's CPU rules.

    Padding counts as ``-inf``; the window is scanned row-major and a value replaces the running
    maximum when ``val > maxval or isnan(val)``: the first of tied maxima wins, and with several
    NaNs the last NaN wins. The index is ``h * W + w`` inside the ``(n, c)`` plane. A window
    with no real element (possible with dilation) gives ``-inf`` and PyTorch's index of its
    first non-negative tap, which may lie outside the plane.
    """
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = _pool_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.empty((N, C, oh, ow))
    idx = np.empty((N, C, oh, ow), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            plane = x[n, c]
            for i in range(oh):
                for j in range(ow):
                    rows = [i * sh - ph + a * dh for a in range(kh)]
                    cols = [j * sw - pw + b * dw for b in range(kw)]
                    # PyTorch starts from the first tap at or after 0; that position (even if
                    # it lies past the input) is the index when no real element beats -inf
                    first_row = min(r for r in rows if r >= 0)
                    first_col = min(q for q in cols if q >= 0)
                    rows = [r for r in rows if 0 <= r < H]
                    cols = [q for q in cols if 0 <= q < W]
                    best = -math.inf
                    best_at = first_row * W + first_col
                    for r in rows:
                        for q in cols:
                            val = plane[r, q]
                            if val > best or math.isnan(val):
                                best = val
                                best_at = r * W + q
                    y[n, c, i, j] = best
                    idx[n, c, i, j] = best_at
    if return_indices:
        return y, idx
    return y


def max_pool2d_backward(grad_y, indices, input_shape):
    grad_y = np.asarray(grad_y, dtype=np.float64)
    N, C, H, W = input_shape
    gx = np.zeros((N, C, H * W))
    for n in range(N):
        for c in range(C):
            for g, at in zip(grad_y[n, c].ravel(), indices[n, c].ravel(), strict=True):
                if 0 <= at < H * W:  # an index outside the plane (empty window) passes nothing
                    gx[n, c, at] += g
    return gx.reshape(N, C, H, W)


# --------------------------------------------------------------------------------------------
# average pooling


def _avg_windows(x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override):
    """Yield ``(i, j, rows, cols, divisor)`` for every output position (PyTorch CPU rules).

    ``count_include_pad`` counts the explicit padding but never the ceil_mode overhang past it;
    ``divisor_override`` wins over both.
    """
    (kh, kw), (sh, sw), (ph, pw), _, (oh, ow) = _pool_geometry(
        x_shape, kernel_size, stride, padding, 1, ceil_mode)
    H, W = x_shape[2:]
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - ph, j * sw - pw
            h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
            padded_size = (h1 - h0) * (w1 - w0)
            h0, w0 = max(h0, 0), max(w0, 0)
            h1, w1 = min(h1, H), min(w1, W)
            if divisor_override is not None:
                div = divisor_override
            elif count_include_pad:
                div = padded_size
            else:
                div = (h1 - h0) * (w1 - w0)
            yield i, j, slice(h0, h1), slice(w0, w1), div


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    _, _, _, _, (oh, ow) = _pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    y = np.zeros((N, C, oh, ow))
    for n in range(N):
        for c in range(C):
            for i, j, rows, cols, div in _avg_windows(x.shape, kernel_size, stride, padding,
                                                      ceil_mode, count_include_pad,
                                                      divisor_override):
                y[n, c, i, j] = np.sum(x[n, c, rows, cols]) / div
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    grad_y = np.asarray(grad_y, dtype=np.float64)
    N, C, H, W = input_shape
    gx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for i, j, rows, cols, div in _avg_windows(input_shape, kernel_size, stride, padding,
                                                      ceil_mode, count_include_pad,
                                                      divisor_override):
                gx[n, c, rows, cols] += grad_y[n, c, i, j] / div
    return gx
