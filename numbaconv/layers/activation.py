"""Elementwise activations: ``ReLU``, ``Sigmoid`` (numerically stable) and ``Tanh``.

ReLU and Tanh in NumPy; the sigmoid and its gradient as one-pass Numba kernels
(:mod:`numbaconv.kernels.cpu.activation`). All keep the input's dtype: float32 stays float32.
Each forward allocates its output and keeps it for the backward, which works from the output
alone.
"""

from __future__ import annotations

import numpy as np

from ..kernels.cpu import activation as kernels
from .base import Layer

__all__ = ["ReLU", "Sigmoid", "Tanh", "sigmoid"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` of an array of any shape, in one pass (float32 within 2.5 ulps
    of the exact value, float64 with libm's ``exp``). ``exp(-x)`` overflowing gives
    exactly 0, so large inputs of either sign are safe; NaN stays NaN."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"sigmoid needs float32 or float64, got {x.dtype}")
    flat = np.ascontiguousarray(x).reshape(-1)
    return kernels.sigmoid_forward(flat).reshape(x.shape)


class ReLU(Layer):
    """``max(x, 0)``; the gradient is 0 where the output is 0 (as in PyTorch)."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        y = np.maximum(x, 0)
        self._y = y
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        y = self.require_forward(self._y)
        # ~(y <= 0), not y > 0: where the output is NaN the gradient passes, as in PyTorch.
        grad_x = np.multiply(grad_y, ~(y <= 0), dtype=np.result_type(grad_y, y))
        return grad_x


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))`` computed without overflow; ``dy/dx = y (1 - y)``."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        y = sigmoid(x)
        self._y = y
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        y = self.require_forward(self._y)
        grad_y = np.ascontiguousarray(grad_y, dtype=y.dtype)
        if grad_y.shape != y.shape:
            raise ValueError(f"Sigmoid.backward: grad_y has shape {grad_y.shape}, the output's "
                             f"is {y.shape}")
        # PyTorch's grad * (1 - y) * y, on flat views: one compiled kernel for every shape
        return kernels.sigmoid_backward(grad_y.reshape(-1), y.reshape(-1)).reshape(y.shape)


class Tanh(Layer):
    """``tanh(x)``; ``dy/dx = 1 - y**2``."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        y = np.tanh(x)
        self._y = y
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        y = self.require_forward(self._y)
        grad_x = np.multiply(y, y)
        np.subtract(1, grad_x, out=grad_x)
        return np.multiply(grad_y, grad_x, out=grad_x)
