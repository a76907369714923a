"""How a case is timed: warm-up, then both sides sampled alternately.

:func:`time_case`: one warm-up call per side (Numba compiles, PyTorch allocates) outside the
timed region, then ``repeat`` samples per side with ``time.perf_counter``, the two sides
interleaved sample by sample (and which goes first alternating) so that both see the same
machine noise. A fast case runs several calls per sample so that a sample lasts at least
``min_time`` seconds. The ratio reported is numbaconv's median over PyTorch's median; "best" is
the ratio of the minima.

Every sample starts with one untimed call of its own side, so that neither side is timed
while the other's threads are still busy: PyTorch's OpenMP workers spin for milliseconds after
each parallel region, on the core numbaconv's second thread needs (2-vCPU Intel Xeon, 2
threads, a ResNet-18 convolution timed right after PyTorch's: 9.7 ms, after one call of its
own: 6.0, alone: 5.7; PyTorch right after numbaconv: 5.5, 5.3 and 5.3). Each side is timed as
a loop of its own would run it.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cases import Case, Prepared
from .targets import verdict

__all__ = ["CaseResult", "time_case"]


@dataclass
class CaseResult:
    """Per-call seconds of both sides of one case (``torch_times`` empty without torch).

    ``flops``: floating-point operations per call (0 where the case does not count them);
    ``peak``: the machine's measured GFLOP/s for the run's thread count, or None.
    """

    case: Case
    numbaconv_times: list[float]
    torch_times: list[float]
    items: int = 0
    scale: float = 1.0
    detail: str = ""
    flops: int = 0
    peak: float | None = None

    @property
    def numbaconv_median(self) -> float:
        return statistics.median(self.numbaconv_times)

    @property
    def torch_median(self) -> float | None:
        return statistics.median(self.torch_times) if self.torch_times else None

    @property
    def ratio(self) -> float | None:
        """numbaconv's median time over PyTorch's."""
        t = self.torch_median
        return self.numbaconv_median / t if t else None

    @property
    def best_ratio(self) -> float | None:
        return min(self.numbaconv_times) / min(self.torch_times) if self.torch_times else None

    @property
    def numbaconv_gflops(self) -> float | None:
        return self.flops / self.numbaconv_median / 1e9 if self.flops else None

    @property
    def torch_gflops(self) -> float | None:
        t = self.torch_median
        return self.flops / t / 1e9 if self.flops and t else None

    @property
    def peak_fraction(self) -> float | None:
        """numbaconv's GFLOP/s over the peak (None without flops or a peak)."""
        g = self.numbaconv_gflops
        return g / self.peak if g is not None and self.peak else None

    @property
    def torch_peak_fraction(self) -> float | None:
        g = self.torch_gflops
        return g / self.peak if g is not None and self.peak else None

    @property
    def verdict(self) -> str:
        return verdict(self.case.target, self.ratio, self.peak_fraction)


def _calls_per_sample(warm_seconds: float, min_time: float) -> int:
    return max(1, math.ceil(min_time / max(warm_seconds, 1e-7)))


def _sample(fn: Callable[[], Any], calls: int) -> float:
    fn()  # settles: the other side's threads idle, this side's caches and threads warm
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def time_case(case: Case, prepared: Prepared, repeat: int = 7, min_time: float = 0.05,
              warmup: int = 1, peak: float | None = None) -> CaseResult:
    """Warm both sides up, then ``repeat`` interleaved samples of each (see the module doc).
    ``peak``: the machine's GFLOP/s for the thread count, for the result's share of it."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    sides = [prepared.numbaconv] + ([prepared.torch] if prepared.torch is not None else [])
    calls = []
    for fn in sides:
        fn()  # compiles (Numba) or allocates (PyTorch); never timed
        warm = min(_sample(fn, 1) for _ in range(max(warmup, 1)))
        calls.append(_calls_per_sample(warm, min_time))
    times: list[list[float]] = [[] for _ in sides]
    gc.collect()
    for r in range(repeat):
        order = range(len(sides)) if r % 2 == 0 else reversed(range(len(sides)))
        for i in order:
            times[i].append(_sample(sides[i], calls[i]))
    return CaseResult(case, times[0], times[1] if len(times) > 1 else [], prepared.items,
                      prepared.scale, prepared.detail, prepared.flops, peak)
