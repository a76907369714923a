"""Elementwise activations: ``ReLU``, ``Sigmoid`` (numerically stable) and ``Tanh``, computed
by ``numbaconv.functional``.

All keep the input's dtype: float32 stays float32. Each forward allocates its output and keeps
it for the backward, which works from the output alone.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .base import Layer

__all__ = ["ReLU", "Sigmoid", "Tanh"]


class _Activation(Layer):
    """An elementwise activation: ``function(x)`` forward, ``derivative(grad_y, y)`` backward
    from the forward's output ``y`` (functional's pairs)."""

    def __init__(self):
        super().__init__()
        #: the output of the last forward, which the backward needs (None before any forward,
        #: and after a fused stage computed this layer in its place: layers.fusion)
        self.saved = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        y = self.function(x)
        self.saved = y
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        return self.derivative(grad_y, self.require_forward(self.saved))


class ReLU(_Activation):
    """``max(x, 0)``; the gradient is 0 where the output is 0 (as in PyTorch)."""

    function = staticmethod(F.relu)
    derivative = staticmethod(F.relu_backward)


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))`` computed without overflow; ``dy/dx = y (1 - y)``."""

    function = staticmethod(F.sigmoid)
    derivative = staticmethod(F.sigmoid_backward)


class Tanh(_Activation):
    """``tanh(x)``; ``dy/dx = 1 - y**2``."""

    function = staticmethod(F.tanh)
    derivative = staticmethod(F.tanh_backward)
