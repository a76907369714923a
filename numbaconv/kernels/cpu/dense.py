"""Numba CPU kernel for the dense layers' matrix products: ``c += a @ b``.

The rows of ``c`` are split among parallel tasks, each of which owns its rows (no shared
writes, and the split depends on the shapes alone, so results do not depend on the number of
threads) and runs the register-tiled product of :mod:`numbaconv.kernels.cpu.conv.tiles` in
tiles of six rows, the taps in blocks whose panel of ``b`` stays in L1 while every row of the
task passes over it (:func:`~numbaconv.kernels.cpu.conv.tiles._gemm6_acc`). No BLAS: NumPy's
would run single-threaded beside Numba's threads (OpenBLAS's own threads spin after each call
and take the cores from the next kernel), and at LeNet's sizes (256x400 by 400x120) this
product is faster than OpenBLAS's on one thread as well.
"""

from numba import njit, prange

from .conv.tiles import _gemm6_acc

ROWS_PER_TASK = 22  # at most about the rows of c per parallel task, in six-row tiles:
                    # LeNet's 256, 120 and 84 rows make 12, 6 and 4 tasks (even counts: two
                    # threads share them evenly)
SERIAL_PRODUCT = 1 << 19  # multiply-adds below which a product runs on one thread
K_BLOCK = 64  # taps per block: a 64 x 64 panel of float32 b (16 KiB) in L1 (64 and 128
              # measured alike, 1024 (no blocking) 1.2x slower)


@njit(cache=True)
def _rows_acc(a, b, c):
    """c += a @ b for one task's rows (a function of its own: Numba's parfor passes cost
    seconds more on the product inlined in the ``prange`` body than on a call)."""
    _gemm6_acc(a, b, c, b.shape[1], K_BLOCK)


@njit(parallel=True, cache=True)
def matmul_acc(a, b, c):
    """c (M, P) += a (M, K) @ b (K, P); all C-contiguous, of one float dtype. Small products
    run on the calling thread alone (the same sums): starting the parallel loop costs more
    than they do (LeNet's 84 -> 10 layer's, 0.2 M multiply-adds each)."""
    m_size = a.shape[0]
    if m_size * a.shape[1] * b.shape[1] < SERIAL_PRODUCT:
        _rows_acc(a, b, c)
        return
    tiles = (m_size + 5) // 6
    n_tasks = max(1, (m_size + ROWS_PER_TASK - 1) // ROWS_PER_TASK)
    for task in prange(n_tasks):  # whole six-row tiles per task, the last one short
        first = min(m_size, task * tiles // n_tasks * 6)
        last = min(m_size, (task + 1) * tiles // n_tasks * 6)
        _rows_acc(a[first:last], b, c[first:last])
