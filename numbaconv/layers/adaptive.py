"""Adaptive pooling layers (``torch.nn.AdaptiveAvgPool2d``/``AdaptiveMaxPool2d``): a fixed
output size whatever the input's, computed by :mod:`numbaconv.functional`.

Output row ``i`` of ``out_h`` pools input rows ``floor(i * H / out_h)`` to ``ceil((i + 1) *
H / out_h)`` (exclusive), likewise for columns. ``output_size=1`` (or ``(1, 1)``) is the global
pooling that NiN, GoogLeNet, ResNet and DenseNet end with; it sets ``global_field`` (every
output sees the whole plane). Other sizes have windows that depend on the input's size, which
receptive fields (:attr:`~numbaconv.layers.Layer.geometry`) cannot express: they count as 1x1.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .base import Layer, check_ndim, plain

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d"]


class _AdaptivePool2d(Layer):
    """Shared argument handling; subclasses implement the passes."""

    def __init__(self, output_size):
        super().__init__()
        size = F.adaptive_output_size(output_size)
        #: as given (an int or a pair), as PyTorch keeps and shows it
        self.output_size = size[0] if not isinstance(output_size, (tuple, list)) else size
        self.global_field = size == (1, 1)
        #: what the backward needs from the last forward (None before any)
        self.saved = None

    def output_shape(self, input_shape) -> tuple:
        shape = check_ndim(self, input_shape, 4, "(N, C, H, W)")
        if min(shape[2:]) < 1:
            raise self.shape_error(f"needs an input of at least 1x1, got shape {shape}")
        return F.adaptive_pool2d_output_shape(shape, self.output_size)

    def config(self) -> dict:
        return {"output_size": plain(self.output_size)}

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Mean over each adaptive window; ``AdaptiveAvgPool2d(1)`` is the global average."""

    def forward(self, x, training: bool = False):
        self.output_shape(np.shape(x))
        y = F.adaptive_avg_pool2d(x, self.output_size)
        self.saved = tuple(int(s) for s in x.shape)
        return y

    def backward(self, grad_y, need_input_grad: bool = True):
        input_shape = self.require_forward(self.saved)
        return F.adaptive_avg_pool2d_backward(grad_y, input_shape)


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Maximum over each adaptive window; the gradient goes to the argmax (PyTorch's
    indices: the first maximum, a NaN always winning)."""

    def forward(self, x, training: bool = False):
        self.output_shape(np.shape(x))
        y, indices = F.adaptive_max_pool2d(x, self.output_size, return_indices=True)
        self.saved = indices, tuple(int(s) for s in x.shape)
        return y

    def backward(self, grad_y, need_input_grad: bool = True):
        indices, input_shape = self.require_forward(self.saved)
        return F.adaptive_max_pool2d_backward(grad_y, indices, input_shape)
