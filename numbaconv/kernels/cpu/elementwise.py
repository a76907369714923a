"""Numba CPU kernels for elementwise gradients: one pass over memory each, in parallel.

NumPy needs three passes (and a temporary) for the sigmoid's gradient; this fuses them. (The
forward stays in NumPy, whose ``exp`` is SIMD while Numba's is scalar.)
Arrays are flat, C-contiguous vectors (callers pass ``reshape(-1)`` views, so each kernel
compiles once for every shape), processed in chunks, each chunk owned by one thread.
"""

import numpy as np
from numba import njit, prange

CHUNK = 16384  # elements per parallel task


@njit(parallel=True, cache=True)
def sigmoid_backward(grad_y, y):
    """grad_y * y * (1 - y), as PyTorch computes it; flat (1-D) arrays."""
    out = np.empty_like(y)
    one = np.ones(1, dtype=y.dtype)[0]
    for chunk in prange((y.size + CHUNK - 1) // CHUNK):
        for i in range(chunk * CHUNK, min(y.size, (chunk + 1) * CHUNK)):
            out[i] = grad_y[i] * ((one - y[i]) * y[i])
    return out
