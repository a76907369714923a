"""Numba CPU kernels for batch normalization, forward and backward.

The checked wrappers are :func:`numbaconv.functional.batch_norm` and
:func:`~numbaconv.functional.batch_norm_backward`; the kernels trust their inputs. ``x`` is a
C-contiguous ``(N, C, L)`` array (``L`` = H*W for images, 1 after a ``Linear``); statistics
are per channel ``c`` over ``M = N * L`` values.

Parallelism: ``prange`` over channels. An iteration reads only its channel and writes only
``y[:, c]`` (or ``grad_x[:, c]``) and element ``c`` of the per-channel results, so no two
iterations write the same memory and every sum is accumulated by one iteration: results do not
depend on the number of threads.

Precision: the sums are accumulated in float64 whatever the input's dtype, and the variance in
two passes (mean, then squared deviations), not as ``E[x^2] - E[x]^2``, which cancels badly.
The sums may be reordered to vectorise (``reassoc``, which keeps NaN and inf propagating); the
elementwise passes compute in the input's dtype, as PyTorch does.

Forward with the batch's statistics (training)::

    mean = sum(x) / M;  var = sum((x - mean)^2) / M        (biased, used to normalise)
    invstd = 1 / sqrt(var + eps)
    y = x * scale + shift,  scale = weight * invstd,  shift = bias - mean * scale

Backward, with ``xhat = (x - mean) * invstd``::

    grad_bias = sum(grad_y);  grad_weight = sum(grad_y * xhat)
    grad_x = scale * (grad_y - grad_bias / M - (x - mean) * invstd * grad_weight / M)  (batch)
    grad_x = scale * grad_y                                                   (fixed stats)
"""

import numpy as np
from numba import njit, prange

#: Sums may be reordered (vectorised); NaN and inf still propagate.
REASSOC = {"reassoc", "contract"}


@njit(fastmath=REASSOC, cache=True)
def _channel_sum(x, c):
    """Sum of x[:, c, :] (x (N, C, L)) in float64."""
    total = 0.0
    for n in range(x.shape[0]):
        row = x[n, c]
        for i in range(row.shape[0]):
            total += row[i]
    return total


@njit(fastmath=REASSOC, cache=True)
def _channel_squares(x, c, mu):
    """Sum of (x[:, c, :] - mu)**2 in float64."""
    total = 0.0
    for n in range(x.shape[0]):
        row = x[n, c]
        for i in range(row.shape[0]):
            d = row[i] - mu
            total += d * d
    return total


@njit(fastmath=REASSOC, cache=True)
def _normalise_channel(x, c, scale, shift, y):
    """y[:, c, :] = x[:, c, :] * scale + shift in the input's dtype."""
    s = x.dtype.type(scale)
    b = x.dtype.type(shift)
    for n in range(x.shape[0]):
        row = x[n, c]
        out = y[n, c]
        for i in range(row.shape[0]):
            out[i] = row[i] * s + b


@njit(parallel=True, cache=True)
def batch_norm_forward_batch_stats(x, weight, bias, eps, y, mean, var, invstd):
    """Normalise each channel of x (N, C, L) by its own mean and biased variance; writes y
    (x's shape and dtype) and the float64 (C,) mean, biased var and invstd."""
    n_batch, channels, length = x.shape
    count = n_batch * length
    for c in prange(channels):
        mu = _channel_sum(x, c) / count
        sigma2 = _channel_squares(x, c, mu) / count
        inv = 1.0 / np.sqrt(sigma2 + eps)
        mean[c] = mu
        var[c] = sigma2
        invstd[c] = inv
        scale = weight[c] * inv
        _normalise_channel(x, c, scale, bias[c] - mu * scale, y)


@njit(parallel=True, cache=True)
def batch_norm_forward_fixed_stats(x, weight, bias, eps, mean, var, y, invstd):
    """Normalise each channel of x (N, C, L) by the given (running) mean and variance;
    writes y and the float64 (C,) invstd."""
    channels = x.shape[1]
    for c in prange(channels):
        inv = 1.0 / np.sqrt(np.float64(var[c]) + eps)
        invstd[c] = inv
        scale = weight[c] * inv
        _normalise_channel(x, c, scale, bias[c] - mean[c] * scale, y)


@njit(fastmath=REASSOC, cache=True)
def _channel_grad_sums(grad_y, x, c, mu):
    """(sum of g, sum of g * (x - mu)) over channel c, in float64."""
    sum_g = 0.0
    sum_g_centred = 0.0
    for n in range(x.shape[0]):
        g_row = grad_y[n, c]
        x_row = x[n, c]
        for i in range(x_row.shape[0]):
            g = g_row[i]
            sum_g += g
            sum_g_centred += g * (x_row[i] - mu)
    return sum_g, sum_g_centred


@njit(fastmath=REASSOC, cache=True)
def _input_grad_channel(grad_y, x, c, scale, mean_g, mu, slope, batch_stats, grad_x):
    """grad_x[:, c] = scale * (g - mean_g - (x - mu) * slope) (batch statistics), else
    scale * g, in the input's dtype."""
    dtype = x.dtype.type
    s, m, centre, k = dtype(scale), dtype(mean_g), dtype(mu), dtype(slope)
    for n in range(x.shape[0]):
        g_row = grad_y[n, c]
        x_row = x[n, c]
        out = grad_x[n, c]
        if batch_stats:
            for i in range(x_row.shape[0]):
                out[i] = s * (g_row[i] - m - (x_row[i] - centre) * k)
        else:
            for i in range(x_row.shape[0]):
                out[i] = s * g_row[i]


@njit(parallel=True, cache=True)
def batch_norm_backward(grad_y, x, mean, invstd, weight, batch_stats, need_input_grad, grad_x,
                        grad_weight, grad_bias):
    """Gradients of one forward over x (N, C, L) with the float64 (C,) mean and invstd it
    used; ``batch_stats`` says whether it normalised by the batch's own statistics. Writes
    grad_weight and grad_bias (C,), and grad_x (N, C, L) when ``need_input_grad``."""
    n_batch, channels, length = x.shape
    count = n_batch * length
    for c in prange(channels):
        mu = mean[c]
        inv = invstd[c]
        sum_g, sum_g_centred = _channel_grad_sums(grad_y, x, c, mu)
        sum_g_xhat = sum_g_centred * inv
        grad_bias[c] = sum_g
        grad_weight[c] = sum_g_xhat
        if need_input_grad:
            mean_g = slope = 0.0
            if batch_stats:  # count >= 2 here; fixed statistics may see an empty batch
                mean_g = sum_g / count
                slope = inv * sum_g_xhat / count
            _input_grad_channel(grad_y, x, c, weight[c] * inv, mean_g, mu, slope, batch_stats,
                                grad_x)


# (N, C) inputs (L = 1: after a Linear, or 1x1 maps): the per-channel loops above would stride
# through memory one value at a time, so these run along the rows, a block of channels per
# parallel iteration. Each iteration owns its block's channels, and each channel's sums still
# run over n in order, one lane per channel (so no reassociation is needed to vectorise). The
# inner loops index views from 0, which lets LLVM vectorise them (an index that might be
# negative would need a wraparound check).

#: Channels per parallel iteration of the (N, C) kernels.
CHANNEL_BLOCK = 64


@njit(cache=True)
def _rows_normalise(x, c0, scale, shift, y):
    """y[:, c0:c0 + w] = x[:, c0:c0 + w] * scale + shift, w = len(scale)."""
    width = scale.shape[0]
    for n in range(x.shape[0]):
        row = x[n, c0:c0 + width]
        out = y[n, c0:c0 + width]
        for j in range(width):
            out[j] = row[j] * scale[j] + shift[j]


@njit(cache=True)
def _rows_coefficients(weight, bias, c0, mean, invstd, dtype_of):
    """(scale, shift) in ``dtype_of``'s dtype for the channels c0.. of a block."""
    width = mean.shape[0]
    scale = np.empty(width, dtype=dtype_of.dtype)
    shift = np.empty(width, dtype=dtype_of.dtype)
    for j in range(width):
        s = weight[c0 + j] * invstd[j]
        scale[j] = s
        shift[j] = bias[c0 + j] - mean[j] * s
    return scale, shift


@njit(parallel=True, cache=True)
def batch_norm_rows_forward_batch_stats(x, weight, bias, eps, y, mean, var, invstd):
    """:func:`batch_norm_forward_batch_stats` for x (N, C)."""
    n_batch, channels = x.shape
    for block in prange((channels + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK):
        c0 = block * CHANNEL_BLOCK
        width = min(CHANNEL_BLOCK, channels - c0)
        mu = mean[c0:c0 + width]
        squares = var[c0:c0 + width]
        inv = invstd[c0:c0 + width]
        mu[:] = 0.0
        squares[:] = 0.0
        for n in range(n_batch):
            row = x[n, c0:c0 + width]
            for j in range(width):
                mu[j] += row[j]
        for j in range(width):
            mu[j] /= n_batch
        for n in range(n_batch):
            row = x[n, c0:c0 + width]
            for j in range(width):
                d = row[j] - mu[j]
                squares[j] += d * d
        for j in range(width):
            squares[j] /= n_batch
            inv[j] = 1.0 / np.sqrt(squares[j] + eps)
        scale, shift = _rows_coefficients(weight, bias, c0, mu, inv, x)
        _rows_normalise(x, c0, scale, shift, y)


@njit(parallel=True, cache=True)
def batch_norm_rows_forward_fixed_stats(x, weight, bias, eps, mean, var, y, invstd):
    """:func:`batch_norm_forward_fixed_stats` for x (N, C)."""
    channels = x.shape[1]
    for block in prange((channels + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK):
        c0 = block * CHANNEL_BLOCK
        width = min(CHANNEL_BLOCK, channels - c0)
        mu = np.empty(width)
        inv = invstd[c0:c0 + width]
        for j in range(width):
            mu[j] = mean[c0 + j]
            inv[j] = 1.0 / np.sqrt(np.float64(var[c0 + j]) + eps)
        scale, shift = _rows_coefficients(weight, bias, c0, mu, inv, x)
        _rows_normalise(x, c0, scale, shift, y)


@njit(parallel=True, cache=True)
def batch_norm_rows_backward(grad_y, x, mean, invstd, weight, batch_stats, need_input_grad,
                             grad_x, grad_weight, grad_bias):
    """:func:`batch_norm_backward` for x (N, C)."""
    n_batch, channels = x.shape
    dtype = x.dtype.type
    for block in prange((channels + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK):
        c0 = block * CHANNEL_BLOCK
        width = min(CHANNEL_BLOCK, channels - c0)
        mu = mean[c0:c0 + width]
        sum_g = np.zeros(width)
        sum_g_centred = np.zeros(width)
        for n in range(n_batch):
            g_row = grad_y[n, c0:c0 + width]
            x_row = x[n, c0:c0 + width]
            for j in range(width):
                g = g_row[j]
                sum_g[j] += g
                sum_g_centred[j] += g * (x_row[j] - mu[j])
        scale = np.empty(width, dtype=x.dtype)
        mean_g = np.zeros(width, dtype=x.dtype)
        centre = np.empty(width, dtype=x.dtype)
        slope = np.zeros(width, dtype=x.dtype)
        for j in range(width):
            c = c0 + j
            inv = invstd[c]
            sum_g_xhat = sum_g_centred[j] * inv
            grad_bias[c] = sum_g[j]
            grad_weight[c] = sum_g_xhat
            scale[j] = weight[c] * inv
            centre[j] = dtype(mu[j])
            if batch_stats:  # n_batch >= 2 here; fixed statistics may see an empty batch
                mean_g[j] = sum_g[j] / n_batch
                slope[j] = inv * sum_g_xhat / n_batch
        if not need_input_grad:
            continue
        for n in range(n_batch):
            g_row = grad_y[n, c0:c0 + width]
            x_row = x[n, c0:c0 + width]
            out = grad_x[n, c0:c0 + width]
            if batch_stats:
                for j in range(width):
                    out[j] = scale[j] * (g_row[j] - mean_g[j] - (x_row[j] - centre[j]) * slope[j])
            else:
                for j in range(width):
                    out[j] = scale[j] * g_row[j]
