"""Elementwise activations: ``ReLU``, ``Sigmoid`` (numerically stable) and ``Tanh``.

Vectorised NumPy that keeps the input's dtype (float32 stays float32: only NumPy ufuncs on
the array and Python scalars, never float64 constants). Each forward allocates its output
and keeps it for the backward, which works from the output alone.
"""

from __future__ import annotations

import numpy as np

from .base import Layer

__all__ = ["ReLU", "Sigmoid", "Tanh", "sigmoid"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` without overflow: ``exp`` only ever sees ``-|x|``.

    For ``x >= 0`` it is ``1 / (1 + e)``, otherwise ``e / (1 + e)``, with ``e = exp(-|x|)``.
    """
    x = np.asarray(x)
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)                      # e = exp(-|x|) in (0, 1]
    denom = e + 1
    y = np.where(x >= 0, 1, e)            # numerator, same dtype as e
    np.divide(y, denom, out=y)
    return y


class ReLU(Layer):
    """``max(x, 0)``; the gradient is 0 where the output is 0 (as in PyTorch)."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        y = np.maximum(x, 0)
        self._y = y
        return y

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        y = self._require_forward(self._y)
        grad_x = np.multiply(grad_y, y > 0, dtype=np.result_type(grad_y, y))
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

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        y = self._require_forward(self._y)
        grad_x = 1 - y                    # PyTorch: grad * (1 - y) * y
        np.multiply(grad_x, y, out=grad_x)
        return np.multiply(grad_y, grad_x, out=grad_x)


class Tanh(Layer):
    """``tanh(x)``; ``dy/dx = 1 - y**2``."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        y = np.tanh(x)
        self._y = y
        return y

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        y = self._require_forward(self._y)
        grad_x = np.multiply(y, y)
        np.subtract(1, grad_x, out=grad_x)
        return np.multiply(grad_y, grad_x, out=grad_x)
