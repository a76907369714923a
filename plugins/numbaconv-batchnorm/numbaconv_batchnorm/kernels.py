"""Batch normalization forward and backward: Numba kernels and their checked wrappers.

Shapes: ``x`` is ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``; the statistics are per channel
``c``, over every other axis (``M = N * L`` or ``N * H * W`` values). The wrappers view ``x``
as a C-contiguous ``(N, C, L)`` array and the kernels loop over it.

Parallelism: ``prange`` over channels. Each iteration owns one channel: it reads only that
channel's values and writes only ``y[:, c]`` (or ``grad_x[:, c]``) and element ``c`` of the
per-channel outputs. No two iterations write the same memory, and every sum is accumulated
by one iteration in a fixed order, so results do not depend on the number of threads.

Precision: sums are accumulated in float64 whatever the input's dtype (float32 or float64),
and the variance is computed in two passes (mean, then squared deviations), not as
``E[x^2] - E[x]^2``, which cancels badly. Outputs have the input's dtype. No ``fastmath``:
a NaN or inf in the input must come out as NaN, as in PyTorch.

Forward (``batch_stats``: the batch's own statistics, i.e. training)::

    mean = sum(x) / M;  var = sum((x - mean)^2) / M        (biased, used to normalise)
    invstd = 1 / sqrt(var + eps)
    y = (x - mean) * invstd * weight + bias = x * scale + shift

and the running statistics, when given, move towards the batch's with the unbiased variance::

    running_mean = (1 - momentum) * running_mean + momentum * mean
    running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)

Backward, with ``xhat = (x - mean) * invstd``::

    grad_bias = sum(grad_y);  grad_weight = sum(grad_y * xhat)
    grad_x = weight * invstd * (grad_y - grad_bias / M - xhat * grad_weight / M)  (batch stats)
    grad_x = weight * invstd * grad_y                                          (fixed stats)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["batch_norm", "batch_norm_backward"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------------- kernels

@njit(parallel=True, cache=True)
def _forward_batch_stats(x, weight, bias, eps, y, mean, var, invstd):
    """Normalise each channel of ``x`` (N, C, L) by its own mean and biased variance."""
    n_batch, channels, length = x.shape
    count = n_batch * length
    for c in prange(channels):
        total = 0.0
        for n in range(n_batch):
            for i in range(length):
                total += x[n, c, i]
        mu = total / count
        squares = 0.0
        for n in range(n_batch):
            for i in range(length):
                d = x[n, c, i] - mu
                squares += d * d
        sigma2 = squares / count
        inv = 1.0 / np.sqrt(sigma2 + eps)
        mean[c] = mu
        var[c] = sigma2
        invstd[c] = inv
        scale = weight[c] * inv
        shift = bias[c] - mu * scale
        for n in range(n_batch):
            for i in range(length):
                y[n, c, i] = x[n, c, i] * scale + shift


@njit(parallel=True, cache=True)
def _forward_fixed_stats(x, weight, bias, eps, mean, var, y, invstd):
    """Normalise each channel of ``x`` (N, C, L) by given statistics (the running ones)."""
    n_batch, channels, length = x.shape
    for c in prange(channels):
        inv = 1.0 / np.sqrt(np.float64(var[c]) + eps)
        invstd[c] = inv
        scale = weight[c] * inv
        shift = bias[c] - mean[c] * scale
        for n in range(n_batch):
            for i in range(length):
                y[n, c, i] = x[n, c, i] * scale + shift


@njit(parallel=True, cache=True)
def _backward(grad_y, x, mean, invstd, weight, batch_stats, grad_x, grad_weight, grad_bias):
    """Gradients of one batch-norm forward; ``batch_stats`` says how it normalised."""
    n_batch, channels, length = x.shape
    count = n_batch * length
    for c in prange(channels):
        mu = mean[c]
        inv = invstd[c]
        sum_g = 0.0
        sum_g_centred = 0.0
        for n in range(n_batch):
            for i in range(length):
                g = grad_y[n, c, i]
                sum_g += g
                sum_g_centred += g * (x[n, c, i] - mu)
        sum_g_xhat = sum_g_centred * inv
        grad_bias[c] = sum_g
        grad_weight[c] = sum_g_xhat
        scale = weight[c] * inv
        if batch_stats:
            mean_g = sum_g / count
            # xhat * sum_g_xhat / M = (x - mu) * (inv * sum_g_xhat / M)
            slope = inv * sum_g_xhat / count
            for n in range(n_batch):
                for i in range(length):
                    grad_x[n, c, i] = scale * (grad_y[n, c, i] - mean_g
                                               - (x[n, c, i] - mu) * slope)
        else:
            for n in range(n_batch):
                for i in range(length):
                    grad_x[n, c, i] = scale * grad_y[n, c, i]


# ------------------------------------------------------------------------- checked wrappers

def _as_channels(x, name: str) -> np.ndarray:
    """``x`` (N, C, *rest) as a C-contiguous (N, C, L) float array, else an error."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape (N, C, ...), "
                        f"got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype} "
                        f"(shape {x.shape})")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, C, ...) with at least 2 dimensions, "
                         f"got shape {x.shape}")
    n, c = x.shape[:2]
    length = int(np.prod(x.shape[2:], dtype=np.int64))  # 1 for (N, C); fine for N == 0
    return np.ascontiguousarray(x).reshape(n, c, length)


def _per_channel(array, name: str, x: np.ndarray, default: float | None) -> np.ndarray:
    """A (C,) array matching ``x``'s channels (``default`` filled when ``array`` is None)."""
    c = x.shape[1]
    if array is None:
        if default is None:
            raise ValueError(f"{name} is required")
        return np.full(c, default, dtype=x.dtype)
    if not isinstance(array, np.ndarray) or array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 numpy.ndarray, got "
                        f"{type(array).__name__} {getattr(array, 'dtype', '')}")
    if array.shape != (c,):
        raise ValueError(f"{name} must have shape ({c},) for x of shape {x.shape}, got "
                         f"shape {array.shape}")
    return array


def _same_dtype(x: np.ndarray, **arrays) -> None:
    for name, array in arrays.items():
        if array is not None and array.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {array.dtype} but x has dtype {x.dtype}; "
                            "convert one with .astype()")


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization of ``x`` (N, C, ...), as ``torch.nn.functional.batch_norm``.

    ``training=True`` normalises by the batch's statistics and, when ``running_mean`` and
    ``running_var`` are given, updates them **in place** (unbiased variance, see the module
    docstring). ``training=False`` normalises by ``running_mean``/``running_var`` (required).
    ``weight``/``bias`` (C,) default to 1 and 0. All arrays share ``x``'s dtype.

    Returns ``(y, save_mean, save_invstd)``: ``y`` with ``x``'s shape and dtype, and the
    float64 ``(C,)`` mean and ``1/sqrt(var + eps)`` used, which :func:`batch_norm_backward`
    takes.
    """
    x3 = _as_channels(x, "x")
    _same_dtype(x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    weight = _per_channel(weight, "weight", x, 1.0)
    bias = _per_channel(bias, "bias", x, 0.0)
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    c = x3.shape[1]
    y = np.empty_like(x3)
    invstd = np.empty(c, dtype=np.float64)
    if training:
        count = x3.shape[0] * x3.shape[2]
        if count <= 1:
            raise ValueError(f"batch norm needs more than 1 value per channel when training, "
                             f"got input of shape {x.shape}")
        if (running_mean is None) != (running_var is None):
            raise ValueError("give both running_mean and running_var, or neither")
        if running_mean is not None:
            _per_channel(running_mean, "running_mean", x, None)
            _per_channel(running_var, "running_var", x, None)
        mean = np.empty(c, dtype=np.float64)
        var = np.empty(c, dtype=np.float64)
        _forward_batch_stats(x3, weight, bias, eps, y, mean, var, invstd)
        if running_mean is not None:
            momentum = float(momentum)
            running_mean[...] = (1.0 - momentum) * running_mean + momentum * mean
            running_var[...] = (1.0 - momentum) * running_var \
                + momentum * (var * (count / (count - 1)))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm with training=False needs running_mean and running_var")
        mean = _per_channel(running_mean, "running_mean", x, None)
        var = _per_channel(running_var, "running_var", x, None)
        _forward_fixed_stats(x3, weight, bias, eps, mean, var, y, invstd)
        mean = mean.astype(np.float64)
    return y.reshape(x.shape), mean, invstd


def batch_norm_backward(grad_y, x, save_mean, save_invstd, weight=None, batch_stats=True):
    """Gradients of :func:`batch_norm`: ``(grad_x, grad_weight, grad_bias)``.

    ``save_mean``/``save_invstd`` are what the forward returned; ``batch_stats`` is the
    forward's ``training`` (whether it normalised by the batch's own statistics, whose
    dependence on ``x`` then enters ``grad_x``). ``grad_weight``/``grad_bias`` (C,) have
    ``x``'s dtype and are computed whether or not the layer is affine.
    """
    x3 = _as_channels(x, "x")
    if not isinstance(grad_y, np.ndarray) or grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have the forward output's shape {x.shape}, got "
                         f"{getattr(grad_y, 'shape', type(grad_y).__name__)}")
    _same_dtype(x, grad_y=grad_y, weight=weight)
    g3 = _as_channels(grad_y, "grad_y")
    weight = _per_channel(weight, "weight", x, 1.0)
    c = x3.shape[1]
    stats = []
    for name, array in (("save_mean", save_mean), ("save_invstd", save_invstd)):
        array = np.asarray(array, dtype=np.float64)
        if array.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},), got {array.shape}")
        stats.append(np.ascontiguousarray(array))
    grad_x = np.empty_like(x3)
    grad_weight = np.empty(c, dtype=x.dtype)
    grad_bias = np.empty(c, dtype=x.dtype)
    _backward(g3, x3, stats[0], stats[1], weight, bool(batch_stats), grad_x, grad_weight,
              grad_bias)
    return grad_x.reshape(x.shape), grad_weight, grad_bias
