"""Local response normalization on the CPU: Numba kernels for x viewed as (N, C, L).

The checked wrappers are in :mod:`numbaconv_lrn.functional`; the kernels trust their inputs.
Each parallel iteration owns one (n, c) row of the output (it reads the rows of the channels
in its window), so results do not depend on the number of threads. Arithmetic is in the
input's dtype, as PyTorch's; no ``fastmath`` (a NaN must stay a NaN).

Forward, with ``before = size // 2`` and ``after = (size - 1) // 2``::

    scale[c] = k + alpha * (sum of x[c']**2 for c' in c - before .. c + after) / size
    y[c] = x[c] / scale[c]**beta

Backward, with ``q[c] = grad_y[c] * y[c] / scale[c]`` (channel c' enters the scales of the
channels c' - after .. c' + before)::

    grad_x[c] = grad_y[c] * scale[c]**-beta
                - 2 * alpha * beta / size * x[c] * (sum of q[c'] for c' in c - after .. c + before)
"""

from numba import njit, prange

__all__ = ["lrn_forward", "lrn_backward"]


@njit(parallel=True, cache=True)
def lrn_forward(x, size, alpha, beta, k, y, scale):
    """Writes y and scale (both x's shape (N, C, L)); alpha, beta, k in x's dtype."""
    n_batch, channels, length = x.shape
    before, after = size // 2, (size - 1) // 2
    window = x.dtype.type(size)
    zero = x.dtype.type(0)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        acc = scale[n, c]
        acc[:] = zero
        for other in range(max(0, c - before), min(channels, c + after + 1)):
            row = x[n, other]
            for i in range(length):
                acc[i] += row[i] * row[i]
        src = x[n, c]
        out = y[n, c]
        for i in range(length):
            d = acc[i] / window * alpha + k
            acc[i] = d
            out[i] = src[i] / d ** beta


@njit(parallel=True, cache=True)
def lrn_backward(grad_y, x, y, scale, size, alpha, beta, q, grad_x):
    """Writes grad_x (N, C, L); q (N, C, L) is scratch space."""
    n_batch, channels, length = x.shape
    before, after = size // 2, (size - 1) // 2
    slope = x.dtype.type(2) * alpha * beta / x.dtype.type(size)
    zero = x.dtype.type(0)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        g, out, d, share = grad_y[n, c], y[n, c], scale[n, c], q[n, c]
        for i in range(length):
            share[i] = g[i] * out[i] / d[i]
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        acc = grad_x[n, c]
        acc[:] = zero
        for other in range(max(0, c - after), min(channels, c + before + 1)):
            row = q[n, other]
            for i in range(length):
                acc[i] += row[i]
        g, src, d = grad_y[n, c], x[n, c], scale[n, c]
        for i in range(length):
            acc[i] = g[i] * d[i] ** -beta - slope * src[i] * acc[i]
