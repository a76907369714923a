"""The project's targets: upper bounds on numbaconv's time over PyTorch's, lower bounds on
the share of the machine's peak a kernel reaches, and the verdict of a result against one."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Target", "PeakTarget", "LENET_LAYER", "CONV64", "CONV64_FWDBWD", "EPOCH", "EVAL",
           "RESNET_STEP", "RESNET_EVAL", "CONV3X3_PEAK", "BATCH_NORM", "TARGETS", "verdict"]


@dataclass(frozen=True)
class Target:
    """An upper bound on numbaconv's time over PyTorch's."""

    max_ratio: float
    label: str

    def passed(self, ratio: float) -> bool:
        return ratio <= self.max_ratio

    def describe(self) -> str:
        return f"<= {self.max_ratio:g}x"


@dataclass(frozen=True)
class PeakTarget:
    """A lower bound on numbaconv's GFLOP/s over the machine's measured peak for the run's
    thread count (:mod:`numbaconv.benchmarks.peak`)."""

    min_fraction: float
    label: str

    def passed(self, fraction: float) -> bool:
        return fraction >= self.min_fraction

    def describe(self) -> str:
        return f">= {self.min_fraction:.0%} peak"


LENET_LAYER = Target(1.5, "LeNet layers <= 1.5x torch")
CONV64 = Target(2.0, "64-channel conv <= 2x torch")
CONV64_FWDBWD = Target(1.5, "64-channel conv forward+backward <= 1.5x torch")
EPOCH = Target(0.5, "training epoch <= 0.5x torch")
EVAL = Target(0.5, "evaluation images/s >= 2x torch (time <= 0.5x)")
RESNET_STEP = Target(1.0, "ResNet-18 training step <= 1x torch")
RESNET_EVAL = Target(1.0, "ResNet-18 evaluation images/s >= torch's (time <= 1x)")
CONV3X3_PEAK = PeakTarget(0.70, "ResNet-18 3x3 conv >= 70% of the measured peak")
BATCH_NORM = Target(1.0, "BatchNorm2d forward+backward <= 1x torch")
TARGETS = (LENET_LAYER, CONV64, CONV64_FWDBWD, EPOCH, EVAL, RESNET_STEP, RESNET_EVAL,
           CONV3X3_PEAK, BATCH_NORM)


def verdict(target: Target | PeakTarget | None, ratio: float | None,
            fraction: float | None = None) -> str:
    """``PASS``, ``FAIL``, or ``-`` when there is no target or not the value it judges: the
    time ratio for a :class:`Target`, the fraction of the peak for a :class:`PeakTarget`."""
    value = fraction if isinstance(target, PeakTarget) else ratio
    if target is None or value is None or not math.isfinite(value):
        return "-"
    return "PASS" if target.passed(value) else "FAIL"
