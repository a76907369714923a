"""The project's targets: upper bounds on numbaconv's time over PyTorch's, and the verdict
of a ratio against one."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Target", "LENET_LAYER", "CONV64", "CONV64_FWDBWD", "EPOCH", "EVAL", "TARGETS",
           "verdict"]


@dataclass(frozen=True)
class Target:
    """An upper bound on numbaconv's time over PyTorch's."""

    max_ratio: float
    label: str

    def passed(self, ratio: float) -> bool:
        return ratio <= self.max_ratio

    def describe(self) -> str:
        return f"<= {self.max_ratio:g}x"


LENET_LAYER = Target(1.5, "LeNet layers <= 1.5x torch")
CONV64 = Target(2.0, "64-channel conv <= 2x torch")
CONV64_FWDBWD = Target(1.5, "64-channel conv forward+backward <= 1.5x torch")
EPOCH = Target(0.5, "training epoch <= 0.5x torch")
EVAL = Target(0.5, "evaluation images/s >= 2x torch (time <= 0.5x)")
TARGETS = (LENET_LAYER, CONV64, CONV64_FWDBWD, EPOCH, EVAL)


def verdict(target: Target | None, ratio: float | None) -> str:
    """``PASS``, ``FAIL``, or ``-`` when there is no target or no ratio."""
    if target is None or ratio is None or not math.isfinite(ratio):
        return "-"
    return "PASS" if target.passed(ratio) else "FAIL"
