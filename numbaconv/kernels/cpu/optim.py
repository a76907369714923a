"""Numba CPU kernel for :class:`numbaconv.optim.SGD`'s update: one pass over a parameter,
its gradient and its momentum buffer, in parallel chunks.

NumPy made up to five passes of it (weight decay, momentum, Nesterov, the step times lr,
the subtraction), each on one thread and through a scratch array: at ResNet-18's 11 million
weights about 12 ms a step on one thread. The arithmetic is ``torch.optim.SGD``'s, as the
GPU kernel's (:func:`numbaconv.kernels.cuda.ops.sgd_step`), in the parameter's dtype (the
hyperparameters rounded to it first) and with no fused multiply-adds::

    g = grad + weight_decay * p                              (weight_decay != 0)
    buf = g (first step) | momentum * buf + (1 - dampening) * g    (momentum != 0)
    g = g + momentum * buf (nesterov) | buf                  (momentum != 0)
    p = p - lr * g

Each chunk is owned by one parallel iteration: results do not depend on the thread count.
"""

import numpy as np
from numba import njit, prange

from .elementwise import CHUNK, serial


@njit(cache=True)
def _sgd_into(p, grad, buf, lr, momentum, one_minus_dampening, weight_decay, has_momentum,
              first, nesterov):
    for i in range(p.size):
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p[i]
        if has_momentum:
            b = g if first else momentum * buf[i] + one_minus_dampening * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        p[i] = p[i] - lr * g


@njit(parallel=True, cache=True)
def _sgd_parallel(p, grad, buf, lr, momentum, one_minus_dampening, weight_decay, has_momentum,
                  first, nesterov):
    size = p.size
    for chunk in prange((size + CHUNK - 1) // CHUNK):
        start = chunk * CHUNK
        stop = min(size, start + CHUNK)
        _sgd_into(p[start:stop], grad[start:stop], buf[start:stop] if has_momentum else buf,
                  lr, momentum, one_minus_dampening, weight_decay, has_momentum, first,
                  nesterov)


def sgd_step(param, grad, buffer, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
             dampening=0.0, first=False):
    """One in-place SGD step of ``param`` (C-contiguous, float32 or float64) from ``grad``
    (its shape; converted to its dtype), with the GPU's :func:`numbaconv.kernels.cuda.ops.sgd_step`
    arguments: ``buffer``, the momentum buffer (param's shape and dtype, C-contiguous), is
    updated in place and may be None where momentum is 0; ``first``: its first step (the buffer
    becomes the gradient)."""
    cast = param.dtype.type
    p = param.reshape(-1)
    g = np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1)
    has_momentum = momentum != 0
    buf = buffer.reshape(-1) if has_momentum else np.empty(0, dtype=param.dtype)
    (_sgd_into if serial(p.size) else _sgd_parallel)(
        p, g, buf, cast(lr), cast(momentum), cast(1.0 - dampening), cast(weight_decay),
        has_momentum, bool(first), bool(nesterov))
