"""Local response normalization as plain functions, dispatched by array type: NumPy arrays
to the Numba CPU kernels (:mod:`numbaconv_lrn.cpu`), Numba CUDA device arrays to the CUDA
kernels (:mod:`numbaconv_lrn.cuda`, imported on first use); the result lives where the input
does. Everything the layer computes goes through these two functions.

Shapes: ``x`` is (N, C, *spatial) with at least one spatial axis, as
``torch.nn.functional.local_response_norm`` takes it; the window runs over the channels.
"""

from __future__ import annotations

import importlib

import numpy as np
from numbaconv.kernels.cuda import is_device_array

from . import cpu

__all__ = ["local_response_norm", "local_response_norm_backward"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _cuda():
    return importlib.import_module(f"{__package__}.cuda")


def _as_channels(x, name: str):
    """``x`` (N, C, *spatial) as a C-contiguous (N, C, L) array on its device."""
    if not isinstance(x, np.ndarray) and not is_device_array(x):
        raise TypeError(f"{name} must be a numpy.ndarray or a CUDA device array of shape "
                        f"(N, C, *spatial), got {type(x).__name__}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype} "
                        f"(shape {tuple(x.shape)})")
    if x.ndim < 3:
        raise ValueError(f"{name} must have shape (N, C, *spatial) with at least 3 "
                         f"dimensions, got shape {tuple(x.shape)}")
    shape = (int(x.shape[0]), int(x.shape[1]), int(np.prod(x.shape[2:], dtype=np.int64)))
    if is_device_array(x):
        return x.reshape(*shape)
    return np.ascontiguousarray(x).reshape(shape)


def _check_arguments(size, alpha, beta, k):
    if isinstance(size, bool) or not hasattr(size, "__index__") or int(size) < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(value, bool) or not np.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    return int(size)


def _like(reference, name: str, array):
    """``array`` as (N, C, L), checked against ``reference`` (x's own shape and dtype)."""
    if tuple(array.shape) != tuple(reference.shape):
        raise ValueError(f"{name} must have x's shape {tuple(reference.shape)}, got "
                         f"{tuple(array.shape)}")
    if array.dtype != reference.dtype:
        raise TypeError(f"{name} has dtype {array.dtype} but x has dtype {reference.dtype}")
    if is_device_array(array) != is_device_array(reference):
        raise TypeError(f"{name} must live on x's device")
    return _as_channels(array, name)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalization over channels, as
    ``torch.nn.functional.local_response_norm`` (AlexNet's, Krizhevsky et al. 2012, 3.3).

    ``y[:, c] = x[:, c] / (k + alpha / size * sum of x[:, c']**2)**beta`` over the channels
    ``c - size // 2 .. c + (size - 1) // 2`` that exist.

    Returns ``(y, scale)``, both of x's shape, dtype and device: the output, and the
    ``k + alpha / size * sum`` that :func:`local_response_norm_backward` takes.
    """
    size = _check_arguments(size, alpha, beta, k)
    x3 = _as_channels(x, "x")
    dtype = np.dtype(x.dtype).type
    arguments = (size, dtype(alpha), dtype(beta), dtype(k))
    if is_device_array(x):
        y, scale = _cuda().lrn_forward(x3, *arguments)
    else:
        y, scale = np.empty_like(x3), np.empty_like(x3)
        cpu.lrn_forward(x3, *arguments, y, scale)
    return y.reshape(x.shape), scale.reshape(x.shape)


def local_response_norm_backward(grad_y, x, y, scale, size, alpha=1e-4, beta=0.75):
    """The gradient at :func:`local_response_norm`'s input from ``grad_y`` and the forward's
    ``x``, its output ``y`` and its ``scale`` (all of x's shape, dtype and device)."""
    size = _check_arguments(size, alpha, beta, 0.0)
    x3 = _as_channels(x, "x")
    g3, y3, scale3 = (_like(x, name, a) for name, a in (("grad_y", grad_y), ("y", y),
                                                        ("scale", scale)))
    dtype = np.dtype(x.dtype).type
    if is_device_array(x):
        grad_x = _cuda().lrn_backward(g3, x3, y3, scale3, size, dtype(alpha), dtype(beta))
    else:
        grad_x = np.empty_like(x3)
        cpu.lrn_backward(g3, x3, y3, scale3, size, dtype(alpha), dtype(beta),
                         np.empty_like(x3), grad_x)
    return grad_x.reshape(x.shape)
