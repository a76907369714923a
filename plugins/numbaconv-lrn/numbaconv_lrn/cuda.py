"""Local response normalization on a CUDA GPU: Numba CUDA kernels, one thread per element of
x viewed as (N, C, L), with the CPU kernels' formulas and order of operations
(:mod:`numbaconv_lrn.cpu`).

Imported only when device arrays reach :mod:`numbaconv_lrn.functional`. Arrays are allocated
and kernels launched through numbaconv's :mod:`numbaconv.kernels.cuda.steps`, as numbaconv's
own kernels are: inside a training step the n-th allocation and launch of a batch replay those
of the previous batch, so a layer of this plugin costs no allocation and one driver call per
launch from the second batch on.
"""

from __future__ import annotations

from numba import cuda
from numbaconv.kernels.cuda import config, steps

__all__ = ["lrn_forward", "lrn_backward"]


@cuda.jit
def _forward_kernel(x, size, alpha, beta, k, y, scale):
    n_batch, channels, length = x.shape
    before, after = size // 2, (size - 1) // 2
    window = x.dtype.type(size)
    for index in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        i = index % length
        t = index // length
        c = t % channels
        n = t // channels
        acc = x.dtype.type(0)
        for other in range(max(0, c - before), min(channels, c + after + 1)):
            value = x[n, other, i]
            acc += value * value
        d = acc / window * alpha + k
        scale[n, c, i] = d
        y[n, c, i] = x[n, c, i] / d ** beta


@cuda.jit
def _share_kernel(grad_y, y, scale, q):
    """q = grad_y * y / scale, elementwise over (N, C, L)."""
    _, channels, length = q.shape
    for index in range(cuda.grid(1), q.size, cuda.gridsize(1)):
        i = index % length
        t = index // length
        c = t % channels
        n = t // channels
        q[n, c, i] = grad_y[n, c, i] * y[n, c, i] / scale[n, c, i]


@cuda.jit
def _backward_kernel(grad_y, x, scale, q, size, alpha, beta, grad_x):
    n_batch, channels, length = x.shape
    before, after = size // 2, (size - 1) // 2
    slope = x.dtype.type(2) * alpha * beta / x.dtype.type(size)
    for index in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        i = index % length
        t = index // length
        c = t % channels
        n = t // channels
        acc = x.dtype.type(0)
        for other in range(max(0, c - after), min(channels, c + before + 1)):
            acc += q[n, other, i]
        grad_x[n, c, i] = grad_y[n, c, i] * scale[n, c, i] ** -beta - slope * x[n, c, i] * acc


def _launch(kernel, total, *args):
    steps.launch(kernel, config.blocks_for(total), config.THREADS_PER_BLOCK, *args)


def lrn_forward(x, size, alpha, beta, k):
    """``(y, scale)`` of x (N, C, L) on the device; alpha, beta, k in x's dtype."""
    y = steps.empty(x.shape, x.dtype)
    scale = steps.empty(x.shape, x.dtype)
    _launch(_forward_kernel, x.size, x, size, alpha, beta, k, y, scale)
    return y, scale


def lrn_backward(grad_y, x, y, scale, size, alpha, beta):
    """grad_x (N, C, L) on the device from the forward's x, y and scale."""
    q = steps.empty(x.shape, x.dtype)
    _launch(_share_kernel, x.size, grad_y, y, scale, q)
    grad_x = steps.empty(x.shape, x.dtype)
    _launch(_backward_kernel, x.size, grad_y, x, scale, q, size, alpha, beta, grad_x)
    return grad_x
