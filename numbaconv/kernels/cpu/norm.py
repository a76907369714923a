"""Numba CPU kernels for batch normalization, forward and backward.

The checked wrappers are :func:`numbaconv.functional.batch_norm` and
:func:`~numbaconv.functional.batch_norm_backward`; the kernels trust their inputs. ``x`` is a
C-contiguous ``(N, C, L)`` array (``L`` = H*W for images, 1 after a ``Linear``; for a
pixel-major image, :mod:`.layout`, the roles turn: (H*W, C, N), the rows its pixels and L its
samples); statistics are per channel ``c`` over ``M = N * L`` values.

Layout of the work: a task owns a run of whole channels, ``x[:, c0:c1, :]``, which is N
contiguous segments of ``(c1 - c0) * L`` values (one per sample), few enough
(:data:`TASK_ELEMENTS`) that the passes after the first find them in L2. Long rows
(:func:`long_rows`: L >= :data:`ROW_LENGTH`, or a pixel-major input of few pixels) are
reduced channel by channel, each segment in registers, and their elementwise passes use
per-channel scalars. Short rows (NCHW's L = 36, 9, 4, 1 in ResNet-18's late layers) would
make those loops short and strided (1.1-1.9x PyTorch's time there), so
their passes run along the task's whole segments instead: the sums go into one float64
accumulator per column (a vertical, vectorised sum over n), reduced to a channel's sum over
its L columns at the end, and the per-channel coefficients of the elementwise passes are
spread over the columns first (for L = 1 the per-channel arrays are the columns).

Parallelism: ``prange`` over tasks. A task reads only its channels and writes only their
part of ``y`` (or ``grad_x``) and of the per-channel results, and every sum runs in a fixed
order (over n, then over the channel's L columns), so results depend neither on the number of
threads nor on the split into tasks. Inputs of at most :data:`SERIAL_ELEMENTS` values run the
same tasks in a plain loop: starting the parallel loop would cost more than it saves.

Precision: the sums are accumulated in float64 whatever the input's dtype, and the variance in
two passes (mean, then squared deviations), not as ``E[x^2] - E[x]^2``, which cancels badly.
The channel sums may be reordered to vectorise (``reassoc``, which keeps NaN and inf
propagating); the elementwise passes compute in the input's dtype, as PyTorch does.

Forward with the batch's statistics (training)::

    mean = sum(x) / M;  var = sum((x - mean)^2) / M        (biased, used to normalise)
    invstd = 1 / sqrt(var + eps)
    y = x * scale + shift,  scale = weight * invstd,  shift = bias - mean * scale
    running = (1 - momentum) * running + momentum * batch   (unbiased var; NumPy's roundings)

With ``relu`` the forward writes ``max(y, 0)`` instead of ``y`` (``Sequential``'s fused
``BatchNorm -> ReLU`` stage), in the same pass: NumPy's ``maximum`` of each value y would
hold (NaN stays NaN, -0.0 gives +0.0), so the result equals the two layers' bit for bit.

Backward, with ``xhat = (x - mean) * invstd``::

    grad_bias = sum(grad_y);  grad_weight = sum(grad_y * xhat)
    grad_x = scale * (grad_y - grad_bias / M - (x - mean) * invstd * grad_weight / M)  (batch)
    grad_x = scale * grad_y                                                   (fixed stats)
"""

import numpy as np
from numba import njit, prange

#: Sums may be reordered (vectorised); NaN and inf still propagate.
REASSOC = {"reassoc", "contract"}

#: Values of one array a task takes at most, N segments together (256 KiB of float32), unless
#: one channel alone has more.
TASK_ELEMENTS = 65536
#: Tasks an input is split into at least, where it has the channels (to balance threads).
MIN_TASKS = 8
#: Inputs of at most this many values run their tasks in a plain loop.
SERIAL_ELEMENTS = 32768
#: Rows (L) at least this long are reduced per channel, in registers (see above).
ROW_LENGTH = 128
#: A pixel-major input (:mod:`.layout`: x as (H * W, C, N), rows of N samples) of fewer pixels
#: than this takes the long rows' passes: the columns' accumulators and spread coefficients
#: of a short one are C * N values each (ResNet-18's 512 channels on 1x1 maps, batch 64:
#: forward and backward 3-4x slower than NCHW's); from 6x6 maps on the short rows' are faster.
PIXEL_MAJOR_LONG_ROWS = 32


def long_rows(rows, length, pixel_major) -> bool:
    """Whether an (N, C, L) input (``rows`` = N) takes the long rows' passes: L of at least
    :data:`ROW_LENGTH`, or a pixel-major input of fewer than :data:`PIXEL_MAJOR_LONG_ROWS`
    pixels (its rows)."""
    return length >= ROW_LENGTH or (pixel_major and rows < PIXEL_MAJOR_LONG_ROWS)


@njit(cache=True)
def _channels_per_task(n_batch, channels, length):
    """Channels per task: at most TASK_ELEMENTS values, at least MIN_TASKS tasks where the
    input runs in parallel (one task, allocating its scratch once, where it does not)."""
    by_size = max(1, TASK_ELEMENTS // max(1, n_batch * length))
    if n_batch * channels * length <= SERIAL_ELEMENTS:
        return min(channels, by_size)
    return max(1, min(by_size, (channels + MIN_TASKS - 1) // MIN_TASKS))


@njit(fastmath=REASSOC, cache=True)
def _column_sums(x2, start, stop, acc):
    """acc[j] = sum over n of x2[n, start + j] (x2 (N, C * L)), in float64."""
    acc[:] = 0.0
    for n in range(x2.shape[0]):
        row = x2[n, start:stop]
        for j in range(acc.shape[0]):
            acc[j] += row[j]


@njit(fastmath=REASSOC, cache=True)
def _column_squares(x2, start, stop, centre, acc):
    """acc[j] = sum over n of (x2[n, start + j] - centre[j])**2, in float64."""
    acc[:] = 0.0
    for n in range(x2.shape[0]):
        row = x2[n, start:stop]
        for j in range(acc.shape[0]):
            d = row[j] - centre[j]
            acc[j] += d * d


@njit(inline="always")
def _channel_sum(acc, k, length):
    """The sum of channel k's L columns of a task's accumulator (L < ROW_LENGTH: in order)."""
    total = 0.0
    for i in range(k * length, (k + 1) * length):
        total += acc[i]
    return total


@njit(cache=True)
def _spread_over(values, length):
    """values (K,), one per channel of a task, repeated over each channel's L columns:
    (K * L,); values itself where L is 1."""
    if length == 1:
        return values
    columns = np.empty(values.shape[0] * length, dtype=values.dtype)
    for k in range(values.shape[0]):
        value = values[k]
        for i in range(k * length, (k + 1) * length):
            columns[i] = value
    return columns


@njit(inline="always")
def _output(v, relu, zero):
    """v, or with ``relu`` max(v, 0) as the ReLU layer computes it (NaN stays NaN, -0.0
    gives +0.0); ``zero`` of v's dtype. ``relu`` is the same for a whole loop, so the
    compiler splits the loop in two and each vectorises."""
    return v if (not relu or v > zero or v != v) else zero


@njit(fastmath=REASSOC, cache=True)
def _normalise(x2, start, stop, scale, shift, relu, y2):
    """y2[n, start:stop] = x2[n, start:stop] * scale + shift, in the input's dtype (with
    ``relu`` its max with 0)."""
    zero = y2.dtype.type(0)
    for n in range(x2.shape[0]):
        row = x2[n, start:stop]
        out = y2[n, start:stop]
        for j in range(scale.shape[0]):
            out[j] = _output(row[j] * scale[j] + shift[j], relu, zero)


# Long rows (L >= ROW_LENGTH): each channel's segments are reduced in registers and its
# elementwise passes use scalar coefficients; short ones take the columns' accumulators above.

@njit(fastmath=REASSOC, cache=True)
def _segments_sum(x2, start, stop):
    """The float64 sum of x2[:, start:stop]."""
    total = 0.0
    for n in range(x2.shape[0]):
        row = x2[n, start:stop]
        for i in range(row.shape[0]):
            total += row[i]
    return total


@njit(fastmath=REASSOC, cache=True)
def _segments_squares(x2, start, stop, mu):
    """The float64 sum of (x2[:, start:stop] - mu)**2."""
    total = 0.0
    for n in range(x2.shape[0]):
        row = x2[n, start:stop]
        for i in range(row.shape[0]):
            d = row[i] - mu
            total += d * d
    return total


@njit(fastmath=REASSOC, cache=True)
def _segments_normalise(x2, start, stop, scale, shift, relu, y2):
    """y2[:, start:stop] = x2[:, start:stop] * scale + shift (scalars of the input's dtype;
    with ``relu`` its max with 0)."""
    zero = y2.dtype.type(0)
    for n in range(x2.shape[0]):
        row = x2[n, start:stop]
        out = y2[n, start:stop]
        for i in range(row.shape[0]):
            out[i] = _output(row[i] * scale + shift, relu, zero)


@njit(cache=True)
def _batch_stats_task(x2, length, by_rows, c0, c1, weight, bias, eps, relu, y2, mean, var,
                      invstd):
    """Channels c0..c1 - 1 of :func:`batch_norm_forward_batch_stats`."""
    count = x2.shape[0] * length
    dtype = x2.dtype.type
    if by_rows:
        for c in range(c0, c1):
            start, stop = c * length, (c + 1) * length
            mu = _segments_sum(x2, start, stop) / count
            sigma2 = _segments_squares(x2, start, stop, mu) / count
            inv = 1.0 / np.sqrt(sigma2 + eps)
            mean[c] = mu
            var[c] = sigma2
            invstd[c] = inv
            s = weight[c] * inv
            _segments_normalise(x2, start, stop, dtype(s), dtype(bias[c] - mu * s), relu, y2)
        return
    start, stop = c0 * length, c1 * length
    acc = np.empty(stop - start)
    _column_sums(x2, start, stop, acc)
    for k in range(c1 - c0):
        mean[c0 + k] = _channel_sum(acc, k, length) / count
    _column_squares(x2, start, stop, _spread_over(mean[c0:c1], length), acc)
    scale = np.empty(c1 - c0, dtype=x2.dtype)
    shift = np.empty(c1 - c0, dtype=x2.dtype)
    for k in range(c1 - c0):
        c = c0 + k
        sigma2 = _channel_sum(acc, k, length) / count
        inv = 1.0 / np.sqrt(sigma2 + eps)
        var[c] = sigma2
        invstd[c] = inv
        s = weight[c] * inv
        scale[k] = dtype(s)
        shift[k] = dtype(bias[c] - mean[c] * s)
    scale = _spread_over(scale, length)
    shift = _spread_over(shift, length)
    _normalise(x2, start, stop, scale, shift, relu, y2)


@njit(parallel=True, cache=True)
def batch_norm_forward_batch_stats(x, weight, bias, eps, relu, y, mean, var, invstd,
                                   running_mean, running_var, momentum, by_rows):
    """Normalise each channel of x (N, C, L) by its own mean and biased variance; writes y
    (x's shape and dtype; with ``relu`` its max with 0) and the float64 (C,) mean, biased
    var and invstd. Updates the running (C,) statistics in x's dtype with ``momentum``
    unless they are empty (0,). ``by_rows``: :func:`long_rows` of x."""
    n_batch, channels, length = x.shape
    x2 = x.reshape(n_batch, channels * length)
    y2 = y.reshape(n_batch, channels * length)
    per_task = _channels_per_task(n_batch, channels, length)
    tasks = (channels + per_task - 1) // per_task
    if x.size <= SERIAL_ELEMENTS:
        for task in range(tasks):
            c0 = task * per_task
            _batch_stats_task(x2, length, by_rows, c0, min(channels, c0 + per_task), weight,
                              bias, eps, relu, y2, mean, var, invstd)
    else:
        for task in prange(tasks):
            c0 = task * per_task
            _batch_stats_task(x2, length, by_rows, c0, min(channels, c0 + per_task), weight,
                              bias, eps, relu, y2, mean, var, invstd)
    if running_mean.shape[0] != 0:
        _update_running(running_mean, running_var, mean, var, momentum, n_batch * length)


@njit(cache=True)
def _update_running(running_mean, running_var, mean, var, momentum, count):
    """running = (1 - momentum) * running + momentum * batch (the unbiased var), rounded as
    NumPy's ``(1.0 - m) * running + m * batch`` with a float ``m``, float64 batch statistics
    and float32 or float64 running ones: the first product in the running dtype, the rest in
    float64 (no fused multiply-adds)."""
    keep = running_mean.dtype.type(1.0 - momentum)
    unbias = count / (count - 1)
    for c in range(mean.shape[0]):
        running_mean[c] = np.float64(keep * running_mean[c]) + momentum * mean[c]
        running_var[c] = np.float64(keep * running_var[c]) + momentum * (var[c] * unbias)


@njit(fastmath=REASSOC, cache=True)
def _fixed_stats_rows(x2, first, last, length, by_rows, scale, shift, relu, y2):
    """Rows first..last - 1 (samples, or a pixel-major input's pixels) of
    :func:`batch_norm_forward_fixed_stats`, in memory
    order: per (n, c) plane with the channel's scalars for long rows, else along the whole
    row with ``scale`` and ``shift`` spread over the columns."""
    zero = y2.dtype.type(0)
    for n in range(first, last):
        row = x2[n]
        out = y2[n]
        if by_rows:
            for c in range(scale.shape[0]):
                s, b = scale[c], shift[c]
                plane = row[c * length:(c + 1) * length]
                plane_out = out[c * length:(c + 1) * length]
                for i in range(length):
                    plane_out[i] = _output(plane[i] * s + b, relu, zero)
        else:
            for j in range(row.shape[0]):
                out[j] = _output(row[j] * scale[j] + shift[j], relu, zero)


@njit(parallel=True, cache=True)
def batch_norm_forward_fixed_stats(x, weight, bias, eps, mean, var, relu, y, save_mean,
                                   invstd, by_rows):
    """Normalise each channel of x (N, C, L) by the given (running) mean and variance;
    writes y (with ``relu`` its max with 0) and the float64 (C,) mean and invstd. Nothing
    is summed, so the pass runs in memory order, a run of samples per task (the order a
    prefetcher follows best). ``by_rows``: :func:`long_rows` of x."""
    n_batch, channels, length = x.shape
    x2 = x.reshape(n_batch, channels * length)
    y2 = y.reshape(n_batch, channels * length)
    dtype = x.dtype.type
    scale = np.empty(channels, dtype=x.dtype)
    shift = np.empty(channels, dtype=x.dtype)
    for c in range(channels):
        inv = 1.0 / np.sqrt(np.float64(var[c]) + eps)
        save_mean[c] = mean[c]
        invstd[c] = inv
        s = weight[c] * inv
        scale[c] = dtype(s)
        shift[c] = dtype(bias[c] - mean[c] * s)
    if not by_rows:
        scale = _spread_over(scale, length)
        shift = _spread_over(shift, length)
    # rows per task: about TASK_ELEMENTS values, at least one row
    per_task = max(1, TASK_ELEMENTS // max(1, channels * length))
    tasks = (n_batch + per_task - 1) // per_task
    if x.size <= SERIAL_ELEMENTS:
        _fixed_stats_rows(x2, 0, n_batch, length, by_rows, scale, shift, relu, y2)
    else:
        for task in prange(tasks):
            first = task * per_task
            _fixed_stats_rows(x2, first, min(n_batch, first + per_task), length, by_rows,
                              scale, shift, relu, y2)


@njit(fastmath=REASSOC, cache=True)
def _column_grad_sums(g2, x2, start, stop, centre, acc_g, acc_gc):
    """acc_g[j] = sum over n of g, acc_gc[j] = sum over n of g * (x - centre[j]), in float64,
    at column start + j."""
    acc_g[:] = 0.0
    acc_gc[:] = 0.0
    for n in range(x2.shape[0]):
        g_row = g2[n, start:stop]
        x_row = x2[n, start:stop]
        for j in range(acc_g.shape[0]):
            g = g_row[j]
            acc_g[j] += g
            acc_gc[j] += g * (x_row[j] - centre[j])


@njit(fastmath=REASSOC, cache=True)
def _input_grad(g2, x2, start, stop, scale, mean_g, centre, slope, grad_x2):
    """grad_x = scale * (g - mean_g - (x - centre) * slope) over columns start..stop, in the
    input's dtype."""
    for n in range(x2.shape[0]):
        g_row = g2[n, start:stop]
        x_row = x2[n, start:stop]
        out = grad_x2[n, start:stop]
        for j in range(scale.shape[0]):
            out[j] = scale[j] * (g_row[j] - mean_g[j] - (x_row[j] - centre[j]) * slope[j])


@njit(fastmath=REASSOC, cache=True)
def _scaled_grad(g2, start, stop, scale, grad_x2):
    """grad_x = scale * g over columns start..stop (fixed statistics)."""
    for n in range(g2.shape[0]):
        g_row = g2[n, start:stop]
        out = grad_x2[n, start:stop]
        for j in range(scale.shape[0]):
            out[j] = scale[j] * g_row[j]


@njit(fastmath=REASSOC, cache=True)
def _segments_grad_sums(g2, x2, start, stop, mu):
    """(sum of g, sum of g * (x - mu)) over columns start..stop of every row, in float64."""
    sum_g = 0.0
    sum_g_centred = 0.0
    for n in range(x2.shape[0]):
        g_row = g2[n, start:stop]
        x_row = x2[n, start:stop]
        for i in range(x_row.shape[0]):
            g = g_row[i]
            sum_g += g
            sum_g_centred += g * (x_row[i] - mu)
    return sum_g, sum_g_centred


@njit(fastmath=REASSOC, cache=True)
def _segments_input_grad(g2, x2, start, stop, scale, mean_g, centre, slope, batch_stats,
                         grad_x2):
    """grad_x = scale * (g - mean_g - (x - centre) * slope) (batch statistics), else
    scale * g, over columns start..stop of every row; scalars of the input's dtype."""
    for n in range(x2.shape[0]):
        g_row = g2[n, start:stop]
        x_row = x2[n, start:stop]
        out = grad_x2[n, start:stop]
        if batch_stats:
            for i in range(x_row.shape[0]):
                out[i] = scale * (g_row[i] - mean_g - (x_row[i] - centre) * slope)
        else:
            for i in range(x_row.shape[0]):
                out[i] = scale * g_row[i]


@njit(cache=True)
def _backward_task(g2, x2, length, by_rows, c0, c1, mean, invstd, weight, batch_stats,
                   need_input_grad, grad_x2, grad_weight, grad_bias):
    """Channels c0..c1 - 1 of :func:`batch_norm_backward`."""
    count = x2.shape[0] * length
    dtype = x2.dtype.type
    if by_rows:
        for c in range(c0, c1):
            start, stop = c * length, (c + 1) * length
            inv = invstd[c]
            sum_g, sum_g_centred = _segments_grad_sums(g2, x2, start, stop, mean[c])
            sum_g_xhat = sum_g_centred * inv
            grad_bias[c] = sum_g
            grad_weight[c] = sum_g_xhat
            if need_input_grad:
                mean_g = slope = 0.0
                if batch_stats:  # count >= 2 here; fixed statistics may see an empty batch
                    mean_g = sum_g / count
                    slope = inv * sum_g_xhat / count
                _segments_input_grad(g2, x2, start, stop, dtype(weight[c] * inv),
                                     dtype(mean_g), dtype(mean[c]), dtype(slope), batch_stats,
                                     grad_x2)
        return
    start, stop = c0 * length, c1 * length
    acc_g = np.empty(stop - start)
    acc_gc = np.empty(stop - start)
    _column_grad_sums(g2, x2, start, stop, _spread_over(mean[c0:c1], length), acc_g, acc_gc)
    scale = np.empty(c1 - c0, dtype=x2.dtype)
    mean_g = np.zeros(c1 - c0, dtype=x2.dtype)
    centre = np.empty(c1 - c0, dtype=x2.dtype)
    slope = np.zeros(c1 - c0, dtype=x2.dtype)
    for k in range(c1 - c0):
        c = c0 + k
        inv = invstd[c]
        sum_g = _channel_sum(acc_g, k, length)
        sum_g_xhat = _channel_sum(acc_gc, k, length) * inv
        grad_bias[c] = sum_g
        grad_weight[c] = sum_g_xhat
        scale[k] = dtype(weight[c] * inv)
        centre[k] = dtype(mean[c])
        if batch_stats:  # count >= 2 here; fixed statistics may see an empty batch
            mean_g[k] = dtype(sum_g / count)
            slope[k] = dtype(inv * sum_g_xhat / count)
    scale = _spread_over(scale, length)
    if not need_input_grad:
        return
    if batch_stats:
        _input_grad(g2, x2, start, stop, scale, _spread_over(mean_g, length),
                    _spread_over(centre, length), _spread_over(slope, length), grad_x2)
    else:
        _scaled_grad(g2, start, stop, scale, grad_x2)


@njit(parallel=True, cache=True)
def batch_norm_backward(grad_y, x, mean, invstd, weight, batch_stats, need_input_grad, grad_x,
                        grad_weight, grad_bias, by_rows):
    """Gradients of one forward over x (N, C, L) with the float64 (C,) mean and invstd it
    used; ``batch_stats`` says whether it normalised by the batch's own statistics. Writes
    grad_weight and grad_bias (C,), and grad_x (N, C, L) when ``need_input_grad`` (else
    grad_x may be empty). ``by_rows``: :func:`long_rows` of x."""
    n_batch, channels, length = x.shape
    x2 = x.reshape(n_batch, channels * length)
    g2 = grad_y.reshape(n_batch, channels * length)
    grad_x2 = grad_x.reshape(grad_x.shape[0], grad_x.shape[1] * grad_x.shape[2])
    per_task = _channels_per_task(n_batch, channels, length)
    tasks = (channels + per_task - 1) // per_task
    if x.size <= SERIAL_ELEMENTS:
        for task in range(tasks):
            c0 = task * per_task
            _backward_task(g2, x2, length, by_rows, c0, min(channels, c0 + per_task), mean,
                           invstd, weight, batch_stats, need_input_grad, grad_x2, grad_weight,
                           grad_bias)
    else:
        for task in prange(tasks):
            c0 = task * per_task
            _backward_task(g2, x2, length, by_rows, c0, min(channels, c0 + per_task), mean,
                           invstd, weight, batch_stats, need_input_grad, grad_x2, grad_weight,
                           grad_bias)
