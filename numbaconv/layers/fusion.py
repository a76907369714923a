"""Fusion in ``Sequential``: a convolution, its activation and a pooling run as one stage.

``Sequential`` runs ``Conv2d → Sigmoid|ReLU → AvgPool2d|MaxPool2d`` through :class:`ConvActPool`
when the pool has D2L's 2x2 windows (kernel 2, stride 2, no padding, no dilation, floor mode):
the convolution as usual, then the activation and the pool in one pass over the
convolution's output (:mod:`numbaconv.kernels.cpu.activation`), which is activated in place (no
second full feature map), and the backward needs one pass instead of two before the
convolution's, with nothing to recompute. Where the convolution has unit stride and wide
images (LeNet's first), the forward is a single pass: each block of rows is activated and
pooled while the convolution's product leaves it in cache
(:mod:`numbaconv.kernels.cpu.conv_act_pool`). Results equal the unfused layers' bit for bit
(``tests/test_fusion.py``).

The fused stage keeps the state for the backward itself and clears the three layers' own
(their ``backward`` raises until they run a forward of their own). When they did run their
own forwards since (a loop calling ``layer.forward`` one by one), :meth:`ConvActPool.current`
is False and ``Sequential`` runs their own backwards instead. Layer subclasses are never fused
(they may change what the layer computes), nor is anything with another activation
(``Tanh``), other pools or other windows.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..kernels.cpu import activation as kernels
from ..shapes import as_pair
from .activation import ReLU, Sigmoid
from .conv import Conv2d
from .pool import AvgPool2d, MaxPool2d

__all__ = ["ConvActPool", "fusable"]

_ACTIVATIONS = {Sigmoid: kernels.SIGMOID, ReLU: kernels.RELU}
_POOLS = {AvgPool2d: kernels.AVG, MaxPool2d: kernels.MAX}
# what each fusable layer's own forward keeps for its backward (None before any forward)
_SAVED = {Conv2d: ("_x",), Sigmoid: ("_y",), ReLU: ("_y",), AvgPool2d: ("_input_shape",),
          MaxPool2d: ("_indices", "_input_shape")}


def _clear(layer) -> None:
    for name in _SAVED[type(layer)]:
        setattr(layer, name, None)


def _has_state(layer) -> bool:
    return any(getattr(layer, name) is not None for name in _SAVED[type(layer)])


def _pools_2x2(pool) -> bool:
    """Whether the pool's windows are the fused kernels' 2x2, stride 2, tiling its input."""
    return (as_pair(pool.kernel_size, "kernel_size") == (2, 2)
            and as_pair(pool.stride, "stride") == (2, 2)
            and as_pair(pool.padding, "padding") == (0, 0)
            and as_pair(pool.dilation, "dilation") == (1, 1) and not pool.ceil_mode
            and getattr(pool, "divisor_override", None) is None)


def fusable(conv, activation, pool) -> bool:
    """Whether these three consecutive layers can run as one :class:`ConvActPool`."""
    return (type(conv) is Conv2d and type(activation) in _ACTIVATIONS
            and type(pool) in _POOLS and _pools_2x2(pool))


class ConvActPool:
    """``pool(activation(conv(x)))`` with the last two fused; the three layers keep their
    parameters and gradients (the convolution's ``params``/``grads`` are updated as usual)."""

    def __init__(self, conv: Conv2d, activation, pool):
        if not fusable(conv, activation, pool):
            raise ValueError(f"cannot fuse {conv!r}, {activation!r}, {pool!r}")
        self.layers = (conv, activation, pool)
        self.activation_code = _ACTIVATIONS[type(activation)]  # the fused kernels' codes
        self.pool_code = _POOLS[type(pool)]
        self._x = None  # the input of the fused forward
        self._activated = None  # activation(conv output), which the backward differentiates

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """x (N, C_in, H, W) -> (N, C_out, H_conv // 2, W_conv // 2)."""
        conv, _, pool = self.layers
        # the layers' own errors first (the pool's for a feature map below its window)
        pool.output_shape(conv.output_shape(np.shape(x)))
        fused = F._conv2d_act_pool(x, conv.params["weight"], conv.params.get("bias"),
                                   conv.stride, conv.padding, conv.dilation, conv.groups,
                                   self.activation_code, self.pool_code)
        if fused is not None:  # all three in one pass
            z, y = fused
        else:  # z becomes activation(z), which the backward differentiates
            z = conv.forward(x, training=training)
            y = kernels.act_pool_forward(z, self.activation_code, self.pool_code)
        self._x, self._activated = x, z
        for layer in self.layers:  # from now on a layer's own state means its own forward
            _clear(layer)
        return y

    def current(self) -> bool:
        """Whether this stage's forward is the last one its layers saw (so that
        :meth:`backward` belongs to it): False before it, and once any of the three layers
        ran a forward of its own."""
        return self._activated is not None and not any(_has_state(layer) for layer in self.layers)

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """The gradient at the stage's input (``None`` without ``need_input_grad``); writes the
        convolution's ``grads``."""
        conv = self.layers[0]
        if self._activated is None:
            raise RuntimeError("ConvActPool.backward called before forward")
        activated = self._activated
        grad_y = np.asarray(grad_y)
        if grad_y.dtype != activated.dtype:
            raise TypeError(f"grad_y has dtype {grad_y.dtype} but the fused stage computes in "
                            f"{activated.dtype}; convert it with .astype()")
        expected = activated.shape[:2] + (activated.shape[2] // 2, activated.shape[3] // 2)
        if grad_y.shape != expected:
            raise ValueError(f"grad_y has shape {grad_y.shape}, the fused stage's output "
                             f"has {expected}")
        grad_z = kernels.act_pool_backward(np.ascontiguousarray(grad_y), activated,
                                           self.activation_code, self.pool_code)
        conv._x = self._x  # the convolution's backward reads its input from there
        try:
            return conv.backward(grad_z, need_input_grad=need_input_grad)
        finally:
            conv._x = None
