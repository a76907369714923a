"""Where arrays live: :func:`get_device` gives the CPU (NumPy arrays) or, with the ``cuda``
extra, the GPU (numba-cuda device arrays). The training loop moves data and models through
it and reads its per-epoch totals back in one copy; layers never see it (functional picks the
kernels by array type)."""

from __future__ import annotations

import numpy as np

__all__ = ["Device", "Totals", "get_device", "DEVICES"]

DEVICES = ("cpu", "cuda")


class Totals:
    """Running sums kept where the arrays live (host float64 here)."""

    def __init__(self, n: int):
        self.values = np.zeros(n, dtype=np.float64)

    def add(self, index: int, value, scale: float = 1.0) -> None:
        """``totals[index] += value * scale`` for a 0-d array ``value``."""
        self.values[index] += float(value) * scale

    def read(self) -> np.ndarray:
        """The sums as a host float64 array."""
        return self.values.copy()


class Device:
    """The CPU: arrays are NumPy's, and moving them is free."""

    name = "cpu"
    is_gpu = False

    def put(self, array) -> np.ndarray:
        """``array`` on this device."""
        return np.asarray(array)

    def get(self, array) -> np.ndarray:
        """``array`` as a host ndarray."""
        return np.asarray(array)

    def zeros(self, shape, dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def take(self, images, labels, order, start: int, stop: int):
        """Rows ``order[start:stop]`` of ``images`` (N, ...) and ``labels`` (N,); rows
        ``start:stop`` when ``order`` is None."""
        if order is None:
            return images[start:stop], labels[start:stop]
        index = order[start:stop]
        return images[index], labels[index]

    def totals(self, n: int) -> Totals:
        return Totals(n)


def get_device(name: str = "cpu") -> Device:
    """The device called ``name`` (``"cpu"`` or ``"cuda"``)."""
    if name == "cpu":
        return Device()
    if name == "cuda":
        raise ValueError("the cuda device is not available in this build")
    raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
