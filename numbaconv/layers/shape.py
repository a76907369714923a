"""``Flatten`` (``torch.nn.Flatten``): merges axes ``start_dim..end_dim`` into one."""

from __future__ import annotations

import numpy as np

from ..shapes import as_int
from .base import Layer, prod

__all__ = ["Flatten"]


class Flatten(Layer):
    """Reshape ``(N, C, H, W)`` to ``(N, C*H*W)`` (by default); backward reshapes back.

    Negative dims count from the end, as in PyTorch. The output is a view when the input is
    contiguous (a device array must be).
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = as_int(start_dim, "start_dim")
        self.end_dim = as_int(end_dim, "end_dim")
        self.saved = None  #: the input shape of the last forward (None before any)

    def _dims(self, shape: tuple) -> tuple[int, int]:
        ndim = len(shape)
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not (0 <= start < ndim and 0 <= end < ndim) or start > end:
            raise self.shape_error(f"cannot flatten dims {self.start_dim}..{self.end_dim} of "
                                    f"a {ndim}-D input of shape {shape}")
        return start, end

    def output_shape(self, input_shape) -> tuple:
        shape = tuple(int(s) for s in input_shape)
        start, end = self._dims(shape)
        return shape[:start] + (prod(shape[start:end + 1]),) + shape[end + 1:]

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        shape = tuple(int(s) for s in x.shape)
        out = self.output_shape(shape)
        self.saved = shape
        return x.reshape(out)  # a NumPy or device array's own reshape: it stays where it is

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        return grad_y.reshape(self.require_forward(self.saved))

    def config(self) -> dict:
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}
