"""Numba CPU kernels for the dense layers' matrix products: ``c += a @ b``.

Two kernels, chosen by :func:`product_acc` by the size of ``b``:

* :func:`matmul_acc`, for a ``b`` that stays in cache (LeNet's 400 x 120): the rows of ``c``
  are split among parallel tasks, each of which runs the register-tiled product of
  :mod:`numbaconv.kernels.cpu.conv.tiles` in tiles of six rows, the taps in blocks whose panel
  of ``b`` stays in L1 while every row of the task passes over it
  (:func:`~numbaconv.kernels.cpu.conv.tiles._gemm_acc`). At LeNet's sizes (256x400 by
  400x120) it is faster than OpenBLAS on one thread.
* :func:`packed_matmul_acc`, for a large ``b`` (AlexNet's and VGG's 4096 x 4096 layers, 64 MiB):
  there every task of :func:`matmul_acc` read all of ``b`` from memory, its panel's rows a row
  of ``b`` apart (a page each: 128 x 4096 by 4096 x 4096 ran at 58 GFLOP/s on one thread of
  an Intel Xeon, 96 packed), and the forward first copied the weight transposed (141 ms for
  4096 x 4096, twice the product). Here each
  task owns a block of ``c`` (:data:`BLOCK_TILES` tiles of columns, all or some of its rows)
  and copies ``b``'s part of it, :data:`PANEL_TAPS` taps at a time, into a contiguous panel
  that stays in L2 while every row tile of the block passes over it (BLIS's packing). It
  reads ``b`` either way round (``transposed``: b is (P, K), as a Linear's weight), so the
  forward needs no transposed copy of the weight.

Every task owns what it writes and adds the taps in order, so both give the same sums, which
do not depend on the number of threads. No BLAS: NumPy's would run single-threaded beside
Numba's threads (OpenBLAS's own threads spin after each call and take the cores from the next
kernel).
"""

import numpy as np
from numba import njit, prange

from . import simd
from .conv.tiles import WIDE, _gemm_acc, _tile2, _tile4, _tile6

ROWS_PER_TASK = 22  # at most about the rows of c per parallel task, in six-row tiles:
                    # LeNet's 256, 120 and 84 rows make 12, 6 and 4 tasks (even counts: two
                    # threads share them evenly)
SERIAL_PRODUCT = 1 << 19  # multiply-adds below which a product runs on one thread
K_BLOCK = 64  # taps per block: a 64 x 64 panel of float32 b (16 KiB) in L1 (64 and 128
              # measured alike, 1024 (no blocking) 1.2x slower)
PACKED_B_BYTES = 1 << 20  # b from which products pack it (past L2's share of a core)
PANEL_TAPS = 128  # rows of b per packed panel: 128 x 256 float32 (128 KiB) in L2,
                  # each tile's 32 KiB in L1 (256 rows, 64 KiB a tile, measured 1.1x slower)
BLOCK_TILES = 4  # tiles of 4W columns per task (256 float32 columns with AVX-512)
CHUNK_ROWS = 96  # rows of a per pass over a panel's tiles: 96 x 128 taps (48 KiB) in L2
MIN_TASKS = 8  # blocks of c per product at least: where the columns make fewer, the rows
                # are split too (a few tasks per thread)


@njit(cache=True)
def _rows_acc(a, b, c):
    """c += a @ b for one task's rows (a function of its own: Numba's parfor passes cost
    seconds more on the product inlined in the ``prange`` body than on a call)."""
    _gemm_acc(a, b, c, b.shape[1], K_BLOCK)


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


@njit(cache=True)
def _pack(b, transposed, k0, k1, p0, p_size, panel, square):
    """panel[t, k - k0, j] = B[k, p0 + t * 4W + j] for taps k0:k1, zeros past column
    p_size, where B is b (K, P), or b.T (b (P, K)) where ``transposed``: there by W x W
    squares of b transposed in registers (:func:`.simd.move_transposed`), those past b's last
    row through ``square`` (W * W values of scratch) with zeros for the missing rows."""
    n_tiles, tile = panel.shape[0], panel.shape[2]
    w = simd.width(square)
    zeros = simd.splat(square, 0)
    if not transposed:  # b's row k: a run of BLOCK_TILES tiles, then zeros
        for k in range(k0, k1):
            row = b[k]
            for t in range(n_tiles):
                out = panel[t, k - k0]
                first = p0 + t * tile
                count = max(0, min(tile, p_size - first))
                simd.copy_run(row, first, out, 0, count)
                for j in range(count, tile, w):
                    simd.store_first(out, j, zeros, w)
        return
    flat = b.reshape(b.size)
    k_size = b.shape[1]
    for t in range(n_tiles):
        dst = panel[t]
        out = dst.reshape(dst.size)
        for j in range(0, tile, w):
            first = p0 + t * tile + j  # b's rows first:first + W, B's columns
            rows = max(0, min(w, p_size - first))
            for k in range(k0, k1, w):
                taps = min(w, k1 - k)
                if rows == w and taps == w:  # a whole square: in registers
                    simd.move_transposed(flat, first * k_size + k, k_size, out,
                                         (k - k0) * tile + j, tile)
                    continue
                for r in range(rows):
                    simd.store_first(square, r * w, simd.load_first(b[first + r], k, taps), w)
                for r in range(rows, w):
                    simd.store_first(square, r * w, zeros, w)
                simd.transpose(square)
                for s in range(taps):
                    simd.store_first(dst[k - k0 + s], j, simd.load_first(square, s * w, w), w)


@njit(cache=True)
def _block_acc(a, b, c, transposed, overwrite, m0, m1, p0, p1, panel, chan, no_offsets):
    """c[m0:m1, p0:p1] += a[m0:m1] @ B[:, p0:p1] (B as in :func:`_pack`; with ``overwrite``
    c's block is zeroed first), a packed panel of :data:`PANEL_TAPS` taps at a time; ``chan``
    (K,) is scratch, ``no_offsets`` K zeros."""
    k_size = a.shape[1]
    tile = panel.shape[2]
    w = simd.width(c[0])
    n_tiles = (p1 - p0 + tile - 1) // tile
    square = np.empty(w * w, dtype=c.dtype)
    if overwrite:  # here, while the block is in cache, not in a pass of its own over c
        zeros = simd.splat(square, 0)
        for i in range(m0, m1):
            for p in range(p0, p1, w):
                simd.store_first(c[i], p, zeros, p1 - p)
    for k0 in range(0, k_size, PANEL_TAPS):
        k1 = min(k_size, k0 + PANEL_TAPS)
        _pack(b, transposed, k0, k1, p0, p1, panel, square)
        for k in range(k0, k1):  # tap k is the panel's row k - k0
            chan[k] = k - k0
        for r0 in range(m0, m1, CHUNK_ROWS):  # a's rows a chunk at a time, in L2
            r1 = min(m1, r0 + CHUNK_ROWS)
            for t in range(n_tiles):
                p = p0 + t * tile
                n = min(tile, p1 - p)  # the last tile masked
                _rows_by_tiles(a, panel[t], chan, no_offsets, c, r0, r1, p, n, w, k0, k1)


@njit(inline="always")
def _rows_by_tiles(a, src, chan, no_offsets, c, r0, r1, p, n, w, k0, k1):
    """c[r0:r1, p:p + n] += a[r0:r1, k0:k1] @ the packed tile ``src``'s rows, in six-row
    tiles (where :data:`WIDE`), then one of four, then pairs (the last row alone computed
    twice)."""
    n0, n1, n2, n3 = n, n - w, n - 2 * w, n - 3 * w
    i = r0
    if WIDE:
        while i + 6 <= r1:
            _tile6(a, src, chan, no_offsets, 0, c, i, p, n0, n1, n2, n3, k0, k1)
            i += 6
        if i + 4 <= r1:
            _tile4(a, src, chan, no_offsets, 0, c, i, p, n0, n1, n2, n3, k0, k1)
            i += 4
    while i < r1:
        _tile2(a, src, chan, no_offsets, 0, c, i, min(i + 1, r1 - 1), p, n0, n1, n2, n3, k0,
               k1)
        i += 2


@njit(parallel=True, cache=True)
def packed_matmul_acc(a, b, c, transposed, overwrite):
    """c (M, P) += a (M, K) @ B, where B is b (K, P), or b.T for b (P, K) where
    ``transposed``; with ``overwrite``, c = a @ B (c's values unread); all C-contiguous, of
    one float dtype. Each parallel task owns a block of c: :data:`BLOCK_TILES` tiles of
    columns, and all the rows, or where that makes fewer than :data:`MIN_TASKS` tasks, an
    even share of them in six-row tiles."""
    m_size, p_size = c.shape
    k_size = a.shape[1]
    tile = 4 * simd.width(c[0])
    block_cols = BLOCK_TILES * tile
    n_cols = (p_size + block_cols - 1) // block_cols
    row_tiles = (m_size + 5) // 6
    n_rows = min(row_tiles, max(1, (MIN_TASKS + n_cols - 1) // n_cols))
    for task in prange(n_rows * n_cols):
        part = task // n_cols
        m0 = min(m_size, part * row_tiles // n_rows * 6)
        m1 = min(m_size, (part + 1) * row_tiles // n_rows * 6)
        p0 = task % n_cols * block_cols
        _block_acc(a, b, c, transposed, overwrite, m0, m1, p0, min(p_size, p0 + block_cols),
                   np.empty((BLOCK_TILES, PANEL_TAPS, tile), dtype=c.dtype),
                   np.empty(k_size, dtype=np.int64), np.zeros(k_size, dtype=np.int64))


def uses_packed(k_size, p_size, itemsize) -> bool:
    """Whether :func:`product_acc` packs a (K, P) b: from :data:`PACKED_B_BYTES`."""
    return k_size * p_size * itemsize >= PACKED_B_BYTES


def product_acc(a, b, c, transposed=False, overwrite=False):
    """c (M, P) += a (M, K) @ B, where B is b (K, P), or b.T for b (P, K) where
    ``transposed`` (a Linear's weight: no transposed copy); with ``overwrite``, c = a @ B.
    All C-contiguous, of one float dtype. By :func:`packed_matmul_acc` where
    :func:`uses_packed` says so, else :func:`matmul_acc`."""
    if uses_packed(a.shape[1], c.shape[1], c.itemsize):
        packed_matmul_acc(a, b, c, bool(transposed), bool(overwrite))
        return
    if overwrite:
        c[:] = 0
    matmul_acc(a, np.ascontiguousarray(b.T) if transposed else b, c)
