"""Numba CPU kernel for the dense layers' matrix products: ``c += a @ b``.

The rows of ``c`` are split among parallel tasks, each of which owns its rows (no shared
writes, so results do not depend on the number of threads) and runs the register-tiled
product of :mod:`numbaconv.kernels.cpu.conv.tiles` with every tap unshifted: row ``k`` of
``b`` is tap ``k``. No BLAS: NumPy's would run single-threaded beside Numba's threads
(OpenBLAS's own threads spin after each call and take the cores from the next kernel), and at
LeNet's sizes (256x400 by 400x120) this product is faster than OpenBLAS's on one thread as
well.
"""

import numpy as np
from numba import njit, prange

from .conv.tiles import ZERO, _shifted_matmul_acc

ROWS_PER_TASK = 16  # rows of c per parallel task: LeNet's 256-row products make 16 tasks


@njit(cache=True)
def _rows_acc(a, b, c, chan, offset):
    """c += a @ b for one task's rows (a function of its own: Numba's parfor passes cost
    seconds more on the product inlined in the ``prange`` body than on a call)."""
    _shifted_matmul_acc(a, b, chan, offset, ZERO, c, ZERO, b.shape[1])


@njit(parallel=True, cache=True)
def matmul_acc(a, b, c):
    """c (M, P) += a (M, K) @ b (K, P); all C-contiguous, of one float dtype."""
    m_size, k_size = a.shape
    chan = np.arange(k_size)  # tap k reads row k of b ...
    offset = np.zeros(k_size, dtype=np.int64)  # ... unshifted
    for task in prange((m_size + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        first = task * ROWS_PER_TASK
        last = min(m_size, first + ROWS_PER_TASK)
        _rows_acc(a[first:last], b, c[first:last], chan, offset)
