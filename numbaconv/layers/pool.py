"""2-D max and average pooling layers (``torch.nn.MaxPool2d``/``AvgPool2d``)."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..shapes import as_divisor, as_pair, pool2d_output_shape
from .base import Layer, check_ndim, plain

__all__ = ["MaxPool2d", "AvgPool2d"]


def _as_given(value, name: str, minimum: int):
    """Validate an int or pair and keep the form the user gave (as PyTorch's repr shows)."""
    pair = as_pair(value, name, minimum)
    return pair[0] if hasattr(value, "__index__") else pair


class _Pool2d(Layer):
    """Shared argument handling; subclasses set ``dilation`` and implement the passes."""

    def _init_window(self, kernel_size, stride, padding, dilation) -> None:
        self.kernel_size = _as_given(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _as_given(stride, "stride", 1)
        self.padding = _as_given(padding, "padding", 0)
        self.dilation = _as_given(dilation, "dilation", 1)
        kernel, pad = as_pair(self.kernel_size, "kernel_size"), as_pair(self.padding, "padding")
        if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
            raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most "
                             f"half the kernel size {self.kernel_size}")

    def output_shape(self, input_shape) -> tuple:
        shape = check_ndim(self, input_shape, 4, "(N, C, H, W)")
        out = pool2d_output_shape(shape, self.kernel_size, self.stride, self.padding,
                                  self.dilation, self.ceil_mode)
        if out[2] < 1 or out[3] < 1:
            raise self.shape_error(
                f"input of spatial size {shape[2:]} is too small for a window of "
                f"{self.kernel_size} with padding {self.padding}: output would be {out[2:]}")
        return out

    @property
    def geometry(self) -> tuple:
        return (self.kernel_size, self.stride, self.dilation)


class MaxPool2d(_Pool2d):
    """Maximum over each window; padding counts as ``-inf``. Gradient goes to the argmax."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self._init_window(kernel_size, stride, padding, dilation)
        self.ceil_mode = bool(ceil_mode)
        #: (indices of the maxima, input shape) of the last forward, which the backward needs
        #: (None before any forward, and after a fused stage computed this layer in its
        #: place: layers.fusion)
        self.saved = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self.output_shape(np.shape(x))
        y, indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                  self.dilation, self.ceil_mode, return_indices=True)
        self.saved = indices, tuple(int(s) for s in x.shape)
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        indices, input_shape = self.require_forward(self.saved)
        return F.max_pool2d_backward(grad_y, indices, input_shape, self.kernel_size,
                                     self.stride, self.padding, self.dilation)

    def config(self) -> dict:
        return {"kernel_size": plain(self.kernel_size), "stride": plain(self.stride),
                "padding": plain(self.padding), "dilation": plain(self.dilation),
                "ceil_mode": self.ceil_mode}

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(_Pool2d):
    """Mean over each window (PyTorch's ``count_include_pad`` and ``divisor_override``)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self._init_window(kernel_size, stride, padding, 1)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = as_divisor(divisor_override) or None
        #: the input shape of the last forward, which the backward needs (None before any
        #: forward, and after a fused stage computed this layer in its place: layers.fusion)
        self.saved = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self.output_shape(np.shape(x))
        y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                         self.count_include_pad, self.divisor_override)
        self.saved = tuple(int(s) for s in x.shape)
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        input_shape = self.require_forward(self.saved)
        return F.avg_pool2d_backward(grad_y, input_shape, self.kernel_size, self.stride,
                                     self.padding, self.ceil_mode, self.count_include_pad,
                                     self.divisor_override)

    def config(self) -> dict:
        cfg = {"kernel_size": plain(self.kernel_size), "stride": plain(self.stride),
               "padding": plain(self.padding), "ceil_mode": self.ceil_mode,
               "count_include_pad": self.count_include_pad}
        if self.divisor_override is not None:  # TOML has no null: leave the default out
            cfg["divisor_override"] = self.divisor_override
        return cfg

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
