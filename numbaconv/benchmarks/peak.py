"""The machine's peak float32 throughput: a loop of nothing but fused multiply-adds.

:func:`measure_peak` times a Numba loop of independent multiply-add chains on the SIMD vectors
numbaconv's kernels use (:mod:`numbaconv.kernels.cpu.simd`: one register, 16 float32 lanes
with AVX-512, 8 with AVX2), on one thread and on ``threads`` threads at once (one
copy of the loop per thread, started together, timed as a whole). An FMA counts as 2
floating-point operations. A convolution's GFLOP/s over this peak is the share of the
machine's arithmetic it uses.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from ..kernels.cpu.simd import fma, splat, total, width

__all__ = ["CHAINS", "Peak", "measure_peak", "fma_loop"]

#: Independent accumulators: an FMA's latency (4 cycles) times the FMA units (2) and then
#: some, so each unit starts one every cycle; with the two constants, 14 registers (AVX2 has
#: 16).
CHAINS = 12


@njit(nogil=True)
def fma_loop(iterations, start):
    """``iterations`` rounds of ``CHAINS`` vector FMAs ``a = a * m + c``, each on its own
    accumulator (m slightly below 1: the values settle, no overflow, no denormals).

    Returns ``(sum of the accumulators, the FMAs' floating-point operations)``.
    """
    row = np.zeros(1, np.float32)
    m = splat(row, np.float32(0.9999))
    c = splat(row, np.float32(1e-4))
    a0 = splat(row, start)
    a1 = splat(row, start + 1)
    a2 = splat(row, start + 2)
    a3 = splat(row, start + 3)
    a4 = splat(row, start + 4)
    a5 = splat(row, start + 5)
    a6 = splat(row, start + 6)
    a7 = splat(row, start + 7)
    a8 = splat(row, start + 8)
    a9 = splat(row, start + 9)
    a10 = splat(row, start + 10)
    a11 = splat(row, start + 11)
    for _ in range(iterations):
        a0 = fma(a0, m, c)
        a1 = fma(a1, m, c)
        a2 = fma(a2, m, c)
        a3 = fma(a3, m, c)
        a4 = fma(a4, m, c)
        a5 = fma(a5, m, c)
        a6 = fma(a6, m, c)
        a7 = fma(a7, m, c)
        a8 = fma(a8, m, c)
        a9 = fma(a9, m, c)
        a10 = fma(a10, m, c)
        a11 = fma(a11, m, c)
    result = (total(a0) + total(a1) + total(a2) + total(a3) + total(a4) + total(a5)
              + total(a6) + total(a7) + total(a8) + total(a9) + total(a10) + total(a11))
    return result, 2.0 * CHAINS * width(row) * iterations


@dataclass(frozen=True)
class Peak:
    """Measured peak GFLOP/s on one thread and on ``threads`` threads at once."""

    one_thread: float
    threads: int
    all_threads: float
    lanes: int

    def at(self, threads: int) -> float:
        """The peak for ``threads`` threads (GFLOP/s)."""
        if threads == 1:
            return self.one_thread
        if threads == self.threads:
            return self.all_threads
        raise ValueError(f"peak measured for 1 and {self.threads} threads, not {threads}")

    def describe(self) -> str:
        text = (f"peak (FMA loop, {CHAINS} chains of {self.lanes} float32 lanes): "
                f"{self.one_thread:,.1f} GFLOP/s on 1 thread")
        if self.threads > 1:
            text += f", {self.all_threads:,.1f} GFLOP/s on {self.threads} threads"
        return text


def _parallel_rate(copies: int, iterations: int) -> float:
    """GFLOP/s of ``copies`` loops run at once on their own threads (wall time of all)."""
    flops = [0.0] * copies

    def work(i):
        flops[i] = fma_loop(iterations, np.float32(i))[1]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(copies)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(flops) / (time.perf_counter() - start) / 1e9


def measure_peak(threads: int = 1, seconds: float = 0.05, repeat: int = 5) -> Peak:
    """The best of ``repeat`` runs of the FMA loop lasting about ``seconds`` each, on one
    thread and (when ``threads`` > 1) on ``threads`` threads together."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    fma_loop(1, np.float32(0))  # compiles
    probe = 1 << 16
    start = time.perf_counter()
    fma_loop(probe, np.float32(0))
    elapsed = max(time.perf_counter() - start, 1e-6)
    iterations = max(probe, int(probe * seconds / elapsed))
    one = max(_parallel_rate(1, iterations) for _ in range(repeat))
    many = max(_parallel_rate(threads, iterations) for _ in range(repeat)) \
        if threads > 1 else one
    lanes = int(fma_loop(1, np.float32(0))[1] / (2 * CHAINS))
    return Peak(one, threads, many, lanes)
