"""Batch normalization forward and backward on CUDA, with the CPU kernels' formulas
(:mod:`numbaconv.kernels.cpu.norm`).

``x`` is a (N, C, L) device array; statistics are per channel over ``M = N * L`` values. One
block per channel reduces them (each thread a strided subset in float64, then thread 0 the
threads' sums in order: deterministic, no atomics), in two passes for the variance (mean, then
squared deviations). That block's thread 0 also moves the running statistics on the device,
so training never copies them to the host; with ``momentum=None`` (the cumulative average) it
reads the batch count ``num_batches_tracked``, which a one-thread launch then increments. The
elementwise passes (``y = x * scale + shift`` and the input gradient) run one thread per
element from per-channel coefficients in the input's dtype.

Everything is allocated and launched through :mod:`~numbaconv.kernels.cuda.steps`.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

from . import config, steps
from .ops import _launch, _placeholder


@functools.cache
def _reduction_kernels():
    """The block-per-channel kernels; their shared arrays have THREADS_PER_BLOCK entries (a
    closure constant: shared array shapes must be literal)."""
    threads = config.THREADS_PER_BLOCK

    @cuda.jit(device=True)
    def block_total(shared, t, value):
        """The sum of every thread's ``value`` (float64), added in thread order, for all."""
        shared[t] = value
        cuda.syncthreads()
        if t == 0:
            for j in range(1, threads):
                value += shared[j]
            shared[0] = value
        cuda.syncthreads()
        total = shared[0]
        cuda.syncthreads()  # all have read it before the array is written again
        return total

    @cuda.jit
    def batch_stats(x, weight, bias, has_weight, has_bias, eps, mean, invstd, coef,
                    running_mean, running_var, tracked, update, cumulative, momentum):
        """Per channel c of x (N, C, L): float64 mean[c], invstd[c] of the batch; coef[0, c]
        = scale, coef[1, c] = shift (x's dtype); with ``update`` the running statistics move
        towards the batch's (unbiased variance), by 1 / (tracked + 1) when ``cumulative``."""
        shared = cuda.shared.array(threads, numba.float64)
        t = cuda.threadIdx.x
        n_batch, channels, length = x.shape
        count = n_batch * length
        for c in range(cuda.blockIdx.x, channels, cuda.gridDim.x):
            acc = 0.0
            for r in range(t, count, threads):
                acc += x[r // length, c, r % length]
            mu = block_total(shared, t, acc) / count
            acc = 0.0
            for r in range(t, count, threads):
                d = x[r // length, c, r % length] - mu
                acc += d * d
            var = block_total(shared, t, acc) / count
            if t == 0:
                inv = 1.0 / math.sqrt(var + eps)
                mean[c] = mu
                invstd[c] = inv
                scale = (float(weight[c]) if has_weight else 1.0) * inv
                coef[0, c] = scale
                coef[1, c] = (float(bias[c]) if has_bias else 0.0) - mu * scale
                if update:
                    factor = 1.0 / (tracked[()] + 1) if cumulative else momentum
                    running_mean[c] = (1.0 - factor) * running_mean[c] + factor * mu
                    running_var[c] = (1.0 - factor) * running_var[c] \
                        + factor * (var * count / (count - 1))

    @cuda.jit
    def grad_sums(g, x, mean, invstd, weight, has_weight, batch_stats, grad_weight, grad_bias,
                  coef):
        """Per channel c: grad_bias[c] = sum of g, grad_weight[c] = sum of g * xhat, and the
        input gradient's coefficients (x's dtype): coef[0] = weight * invstd, coef[1] = the
        mean of g, coef[2] = invstd * grad_weight / M (both 0 for fixed statistics), coef[3]
        = the mean."""
        shared = cuda.shared.array(threads, numba.float64)
        t = cuda.threadIdx.x
        n_batch, channels, length = x.shape
        count = n_batch * length
        for c in range(cuda.blockIdx.x, channels, cuda.gridDim.x):
            mu = mean[c]
            sum_g = 0.0
            sum_g_centred = 0.0
            for r in range(t, count, threads):
                n = r // length
                i = r % length
                value = g[n, c, i]
                sum_g += value
                sum_g_centred += value * (x[n, c, i] - mu)
            sum_g = block_total(shared, t, sum_g)
            sum_g_centred = block_total(shared, t, sum_g_centred)
            if t == 0:
                inv = invstd[c]
                sum_g_xhat = sum_g_centred * inv
                grad_bias[c] = sum_g
                grad_weight[c] = sum_g_xhat
                coef[0, c] = (float(weight[c]) if has_weight else 1.0) * inv
                coef[1, c] = sum_g / count if batch_stats else 0.0
                coef[2, c] = inv * sum_g_xhat / count if batch_stats else 0.0
                coef[3, c] = mu

    return batch_stats, grad_sums


@cuda.jit
def _fixed_stats_kernel(running_mean, running_var, weight, bias, has_weight, has_bias, eps,
                        mean, invstd, coef):
    """Per channel (one thread each): float64 mean and invstd of the given statistics, and
    coef[0] = scale, coef[1] = shift in x's dtype."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        mu = float(running_mean[c])
        inv = 1.0 / math.sqrt(float(running_var[c]) + eps)
        mean[c] = mu
        invstd[c] = inv
        scale = (float(weight[c]) if has_weight else 1.0) * inv
        coef[0, c] = scale
        coef[1, c] = (float(bias[c]) if has_bias else 0.0) - mu * scale


@cuda.jit
def _count_batch_kernel(tracked):
    """tracked[()] += 1: one thread."""
    if cuda.grid(1) == 0:
        tracked[()] += 1


@cuda.jit
def _normalise_kernel(x, coef, y):
    """y[n, c, l] = x[n, c, l] * coef[0, c] + coef[1, c]; x, y (N, C, L)."""
    _, channels, length = x.shape
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        pos = i % length
        t = i // length
        c = t % channels
        n = t // channels
        y[n, c, pos] = x[n, c, pos] * coef[0, c] + coef[1, c]


@cuda.jit
def _input_grad_kernel(g, x, coef, batch_stats, grad_x):
    """grad_x = coef[0] * (g - coef[1] - (x - coef[3]) * coef[2]) per channel with batch
    statistics, else coef[0] * g; all (N, C, L)."""
    _, channels, length = x.shape
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        pos = i % length
        t = i // length
        c = t % channels
        n = t // channels
        if batch_stats:
            grad_x[n, c, pos] = coef[0, c] * (g[n, c, pos] - coef[1, c]
                                              - (x[n, c, pos] - coef[3, c]) * coef[2, c])
        else:
            grad_x[n, c, pos] = coef[0, c] * g[n, c, pos]


@functools.cache
def _no_count():
    """A 0-d int64 device array standing in for an absent batch count."""
    return cuda.to_device(np.zeros((), dtype=np.int64))


def _channel_blocks(channels: int) -> int:
    return max(1, min(config.MAX_BLOCKS, channels))


def batch_norm_forward(x, weight, bias, running_mean, running_var, num_batches_tracked,
                       training, momentum, eps):
    """``(y, save_mean, save_invstd)`` of batch normalization of x (N, C, L), as
    :func:`numbaconv.functional.batch_norm` (which checked the arguments): y (N, C, L) of x's
    dtype, the float64 (C,) mean and invstd used. With ``training`` and running statistics
    these are updated in place, and ``num_batches_tracked`` (0-d int64 or None) counts the
    batch; ``momentum`` None is the cumulative average."""
    channels = x.shape[1]
    dtype = x.dtype
    mean = steps.empty(channels, np.float64)
    invstd = steps.empty(channels, np.float64)
    coef = steps.empty((2, channels), dtype)
    has_weight, has_bias = weight is not None, bias is not None
    weight = weight if has_weight else _placeholder(dtype)
    bias = bias if has_bias else _placeholder(dtype)
    if training:
        update = running_mean is not None
        counted = num_batches_tracked is not None and update
        steps.launch(_reduction_kernels()[0], _channel_blocks(channels),
                     config.THREADS_PER_BLOCK, x, weight, bias, has_weight, has_bias,
                     float(eps), mean, invstd, coef,
                     running_mean if update else _placeholder(dtype),
                     running_var if update else _placeholder(dtype),
                     num_batches_tracked if counted else _no_count(), update,
                     momentum is None, 0.0 if momentum is None else float(momentum))
        if counted:
            steps.launch(_count_batch_kernel, 1, 1, num_batches_tracked)
    else:
        _launch(_fixed_stats_kernel, channels, running_mean, running_var, weight, bias,
                has_weight, has_bias, float(eps), mean, invstd, coef)
    y = steps.empty(x.shape, dtype)
    _launch(_normalise_kernel, x.size, x, coef, y)
    return y, mean, invstd


def batch_norm_backward(grad_y, x, save_mean, save_invstd, weight, batch_stats,
                        need_input_grad, grad_weight=None, grad_bias=None):
    """``(grad_x, grad_weight, grad_bias)`` of :func:`batch_norm_forward` from grad_y and x
    (N, C, L) and the float64 (C,) mean and invstd it returned: grad_x (N, C, L) or None
    without ``need_input_grad``; the (C,) gradients in x's dtype, into ``grad_weight`` and
    ``grad_bias`` when given."""
    channels = x.shape[1]
    dtype = x.dtype
    if grad_weight is None:
        grad_weight = steps.empty(channels, dtype)
    if grad_bias is None:
        grad_bias = steps.empty(channels, dtype)
    coef = steps.empty((4, channels), dtype)
    has_weight = weight is not None
    steps.launch(_reduction_kernels()[1], _channel_blocks(channels), config.THREADS_PER_BLOCK,
                 grad_y, x, save_mean, save_invstd, weight if has_weight else _placeholder(dtype),
                 has_weight, bool(batch_stats), grad_weight, grad_bias, coef)
    grad_x = None
    if need_input_grad:
        grad_x = steps.empty(x.shape, dtype)
        _launch(_input_grad_kernel, x.size, grad_y, x, coef, bool(batch_stats), grad_x)
    return grad_x, grad_weight, grad_bias
