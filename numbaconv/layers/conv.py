"""2-D convolution layer (``torch.nn.Conv2d``), computed by ``numbaconv.functional``."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..init import as_generator, kaiming_uniform_default
from ..shapes import as_int, as_pair, conv2d_flops, conv2d_output_shape, conv_padding
from .base import Layer, check_ndim, plain

__all__ = ["Conv2d"]


class Conv2d(Layer):
    """``y = conv(x, weight) + bias`` on NCHW arrays, with PyTorch's arguments and init.

    ``weight`` has shape ``(out_channels, in_channels // groups, kh, kw)``, ``bias``
    ``(out_channels,)``; both ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with
    ``fan_in = in_channels // groups * kh * kw`` (PyTorch's default). ``padding`` is an int,
    a pair, ``((top, bottom), (left, right))``, ``'valid'`` or ``'same'``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, *, rng=None, dtype=np.float32):
        super().__init__()
        self.in_channels = as_int(in_channels, "in_channels")
        self.out_channels = as_int(out_channels, "out_channels")
        self.groups = as_int(groups, "groups")
        if self.in_channels < 1 or self.out_channels < 1 or self.groups < 1:
            raise ValueError(f"in_channels, out_channels and groups must be positive, got "
                             f"{in_channels}, {out_channels}, {groups}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        self.kernel_size = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.dilation = as_pair(dilation, "dilation", 1)
        # validates every padding form ('same' with a stride raises here, as in PyTorch)
        sides = conv_padding(padding, self.kernel_size, self.stride, self.dilation)
        if isinstance(padding, str):
            self.padding = padding
        elif sides[0][0] == sides[0][1] and sides[1][0] == sides[1][1]:
            self.padding = (sides[0][0], sides[1][0])
        else:
            self.padding = sides
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")

        rng = as_generator(rng)
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        w_shape = (self.out_channels, self.in_channels // self.groups, kh, kw)
        self.add_param("weight", kaiming_uniform_default(w_shape, fan_in, rng, self.dtype))
        if bias:
            self.add_param("bias", kaiming_uniform_default((self.out_channels,), fan_in, rng,
                                                            self.dtype))
        #: the input of the last forward, which the backward needs (None before any forward,
        #: and after a fused stage computed this layer in its place: layers.fusion)
        self.saved = None

    @property
    def bias(self) -> bool:
        return "bias" in self.params

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self.output_shape(np.shape(x))
        y = F.conv2d(x, self.params["weight"], self.params.get("bias"), self.stride,
                     self.padding, self.dilation, self.groups)
        self.saved = x
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Parameter gradients into ``grads``; returns ``grad_x`` (``None`` when
        ``need_input_grad`` is False, which skips its computation: a network's first layer)."""
        x = self.require_forward(self.saved)
        grad_x, _, _ = F.conv2d_backward(grad_y, x, self.params["weight"], self.stride,
                                         self.padding, self.dilation, self.groups,
                                         need_input_grad, self.bias,
                                         grad_weight=self.grads["weight"],
                                         grad_bias=self.grads.get("bias"))
        return grad_x

    def output_shape(self, input_shape) -> tuple:
        shape = check_ndim(self, input_shape, 4, "(N, C, H, W)")
        if shape[1] != self.in_channels:
            raise self.shape_error(f"expects {self.in_channels} input channels, got "
                                    f"{shape[1]} from shape {shape}")
        out = conv2d_output_shape(shape, self.out_channels, self.kernel_size, self.stride,
                                  self.padding, self.dilation)
        if out[2] < 1 or out[3] < 1:
            raise self.shape_error(
                f"input of spatial size {shape[2:]} is too small for a kernel of "
                f"{self.kernel_size} with dilation {self.dilation} and padding "
                f"{self.padding}: output would be {out[2:]}")
        return out

    @property
    def geometry(self) -> tuple:
        return (self.kernel_size, self.stride, self.dilation)

    def flops(self, input_shape) -> int:
        return conv2d_flops(self.output_shape(input_shape), self.in_channels // self.groups,
                            self.kernel_size)

    def config(self) -> dict:
        cfg = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": plain(self.kernel_size),
            "stride": plain(self.stride),
            "padding": plain(self.padding),
            "dilation": plain(self.dilation),
            "groups": self.groups,
            "bias": self.bias,
        }
        if self.dtype != np.float32:
            cfg["dtype"] = self.dtype.name
        return cfg

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"  # 'same' prints bare, as in PyTorch
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if not self.bias:
            s += ", bias=False"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s
