"""Numba CPU kernels for elementwise gradients: one pass over memory each, in parallel.

NumPy needs three passes (and a temporary) for the sigmoid's gradient; this fuses them. (The
forward stays in NumPy, whose ``exp`` is SIMD while Numba's is scalar.)
Arrays are processed as flat, C-contiguous vectors in chunks, each chunk owned by one thread.
"""

import numpy as np
from numba import njit, prange

CHUNK = 16384  # elements per parallel task


@njit(parallel=True, cache=True)
def sigmoid_backward(grad_y, y):
    """grad_y * y * (1 - y), as PyTorch computes it."""
    grad_x = np.empty_like(y)
    gf = grad_y.reshape(-1)
    yf = y.reshape(-1)
    out = grad_x.reshape(-1)
    one = np.ones(1, dtype=y.dtype)[0]
    for chunk in prange((yf.size + CHUNK - 1) // CHUNK):
        for i in range(chunk * CHUNK, min(yf.size, (chunk + 1) * CHUNK)):
            out[i] = gf[i] * ((one - yf[i]) * yf[i])
    return grad_x
