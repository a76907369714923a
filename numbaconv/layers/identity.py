"""``Identity`` (``torch.nn.Identity``): passes its input through, e.g. as the branch of a
``Concat`` that keeps the input beside what other branches compute (DenseNet)."""

from __future__ import annotations

from .base import Layer

__all__ = ["Identity"]


class Identity(Layer):
    """``y = x`` (the same array) and ``grad_x = grad_y``; no parameters, any shape."""

    def forward(self, x, training: bool = False):
        return x

    def backward(self, grad_y, need_input_grad: bool = True):
        return grad_y
