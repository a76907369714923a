"""Fusion in ``Sequential``: a convolution, its activation and a pooling run as one stage.

``Sequential`` runs ``Conv2d → Sigmoid|ReLU → AvgPool2d|MaxPool2d`` through :class:`ConvActPool`
when the pool's windows tile its input (kernel == stride, no padding, no dilation, floor mode;
D2L's ``pool(2)``): the convolution as usual, then the activation and the pool in one pass
over the convolution's output (:mod:`numbaconv.kernels.cpu.fused`), so the activation's full
feature map is never stored, and the backward needs one pass instead of two before the
convolution's. Results equal the unfused layers' bit for bit (``tests/test_fusion.py``).

The fused stage keeps the state for the backward itself: after a fused forward, the
activation and pool layers hold none (their own ``backward`` raises until they run a forward
of their own). When the layers did run their own forwards since (a loop calling
``layer.forward`` one by one), :meth:`ConvActPool.current` is False and ``Sequential`` runs
their own backwards instead. Layer subclasses are never fused (they may change what the layer
computes), nor is anything with another activation (``Tanh``), other pools or another window.
"""

from __future__ import annotations

import numpy as np

from .kernels.cpu import fused
from .layers import AvgPool2d, Conv2d, MaxPool2d, ReLU, Sigmoid
from .shapes import as_pair

__all__ = ["ConvActPool", "fusable"]

_ACTIVATIONS = {Sigmoid: fused.SIGMOID, ReLU: fused.RELU}
_POOLS = {AvgPool2d: fused.AVG, MaxPool2d: fused.MAX}


def _tiles(pool) -> bool:
    """Whether the pool's windows tile its input (the only windows the fused kernel knows)."""
    kernel = as_pair(pool.kernel_size, "kernel_size")
    return (as_pair(pool.stride, "stride") == kernel and as_pair(pool.padding, "padding") == (0, 0)
            and as_pair(pool.dilation, "dilation") == (1, 1) and not pool.ceil_mode
            and getattr(pool, "divisor_override", None) is None)


def fusable(conv, activation, pool) -> bool:
    """Whether these three consecutive layers can run as one :class:`ConvActPool`."""
    return (type(conv) is Conv2d and type(activation) in _ACTIVATIONS
            and type(pool) in _POOLS and _tiles(pool))


class ConvActPool:
    """``pool(activation(conv(x)))`` with the last two fused; the three layers keep their
    parameters and gradients (the convolution's ``params``/``grads`` are updated as usual)."""

    def __init__(self, conv: Conv2d, activation, pool):
        if not fusable(conv, activation, pool):
            raise ValueError(f"cannot fuse {conv!r}, {activation!r}, {pool!r}")
        self.layers = (conv, activation, pool)
        self._activation = _ACTIVATIONS[type(activation)]
        self._pool = _POOLS[type(pool)]
        self._kernel = as_pair(pool.kernel_size, "kernel_size")
        self._z = None  # the convolution's output, which the backward activates again
        self._x = None  # the input of the fused forward

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """x (N, C_in, H, W) -> (N, C_out, H_conv // kH, W_conv // kW)."""
        conv, _, pool = self.layers
        z = conv.forward(x, training=training)
        pool.output_shape(z.shape)  # the pool's own error for a feature map below its window
        y = fused.act_pool_forward(z, self._activation, self._pool, *self._kernel)
        self._z, self._x = z, x
        return y

    def current(self) -> bool:
        """Whether the last forward of the convolution was this stage's (so that
        :meth:`backward` belongs to it), not one of its own or no forward at all."""
        return self._z is not None and self.layers[0]._x is self._x

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """The gradient at the stage's input (``None`` without ``need_input_grad``); writes the
        convolution's ``grads``."""
        conv, activation, _ = self.layers
        z = activation._require_forward(self._z)
        expected = z.shape[:2] + (z.shape[2] // self._kernel[0], z.shape[3] // self._kernel[1])
        grad_y = np.ascontiguousarray(grad_y, dtype=z.dtype)
        if grad_y.shape != expected:
            raise ValueError(f"grad_y has shape {grad_y.shape}, the fused stage's output "
                             f"has {expected}")
        grad_z = fused.act_pool_backward(grad_y, z, self._activation, self._pool,
                                         *self._kernel)
        return conv.backward(grad_z, need_input_grad=need_input_grad)
