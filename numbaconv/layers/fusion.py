"""Fusion in ``Sequential``: a convolution, its activation and a pooling run as one stage;
a batch norm and its ReLU as another.

``Sequential`` runs ``Conv2d → Sigmoid|ReLU → AvgPool2d|MaxPool2d`` through :class:`ConvActPool`
when the pool has D2L's 2x2 windows (kernel 2, stride 2, no padding, no dilation, floor mode),
by :func:`numbaconv.functional.conv2d_act_pool` and its backward, on either device. On the
CPU the convolution runs as usual, then the activation and the pool in one pass over the
convolution's output, which is activated in place (no second full feature map), and the
backward needs one pass instead of two before the convolution's, with nothing to recompute.
Where the convolution has unit stride and wide images (LeNet's first), the forward is a single
pass: each block of rows is activated and pooled while the convolution's product leaves it in
cache. On a GPU the activation is fused into the convolution's launch and the backward of the
pool and the activation is one launch. Results equal the unfused layers' bit for bit on the
CPU (``tests/test_fusion.py``).

The fused stage keeps the state for the backward itself, and clears the three layers' own
(their public ``saved``: their ``backward`` raises until they run a forward of their own).
When they did run their own forwards since (a loop calling ``layer.forward`` one by one),
:meth:`ConvActPool.current` is False and ``Sequential`` runs their own backwards instead. Layer
subclasses are never fused (they may change what the layer computes), nor is anything with
another activation (``Tanh``), other pools or other windows.

``BatchNorm2d|BatchNorm1d -> ReLU`` (every block of ResNet, GoogLeNet's, DenseNet's) runs
through :class:`NormReLU`: the normalisation writes ``max(y, 0)`` in its own pass
(:func:`numbaconv.functional.batch_norm_relu`), so the normalised values are never written
nor read again (on a GPU: two launches, as unfused). Each layer keeps the state its own
forward would (the batch norm its input and statistics, the ReLU its output), so the
backward is the two layers' own, and results equal the unfused layers' bit for bit.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..shapes import as_pair
from .activation import ReLU, Sigmoid
from .conv import Conv2d
from .norm import BatchNorm1d, BatchNorm2d
from .pool import AvgPool2d, MaxPool2d

__all__ = ["ConvActPool", "fusable", "NormReLU", "norm_relu_fusable"]

_ACTIVATIONS = {Sigmoid: "sigmoid", ReLU: "relu"}
_POOLS = {AvgPool2d: "avg", MaxPool2d: "max"}


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
    parameters and gradients (the convolution's ``grads`` are written as its own backward
    writes them)."""

    def __init__(self, conv: Conv2d, activation, pool):
        if not fusable(conv, activation, pool):
            raise ValueError(f"cannot fuse {conv!r}, {activation!r}, {pool!r}")
        self.layers = (conv, activation, pool)
        self.activation = _ACTIVATIONS[type(activation)]  # functional's names
        self.pool = _POOLS[type(pool)]
        # the CPU kernels' codes for them (precompile names the kernels by them)
        self.activation_code = F.FUSED_ACTIVATIONS[self.activation]
        self.pool_code = F.FUSED_POOLS[self.pool]
        self._x = None  # the input of the fused forward
        self._activated = None  # activation(conv output), which the backward differentiates

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """x (N, C_in, H, W) -> (N, C_out, H_conv // 2, W_conv // 2)."""
        conv, _, pool = self.layers
        # the layers' own errors first (the pool's for a feature map below its window)
        pool.output_shape(conv.output_shape(np.shape(x)))
        z, y = F.conv2d_act_pool(x, conv.params["weight"], conv.params.get("bias"),
                                 conv.stride, conv.padding, conv.dilation, conv.groups,
                                 self.activation, self.pool)
        self._x, self._activated = x, z
        for layer in self.layers:  # from now on a layer's own state means its own forward
            layer.saved = None
        return y

    def current(self) -> bool:
        """Whether this stage's forward is the last one its layers saw (so that
        :meth:`backward` belongs to it): False before it, and once any of the three layers
        ran a forward of its own."""
        return self._activated is not None and all(layer.saved is None for layer in self.layers)

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """The gradient at the stage's input (``None`` without ``need_input_grad``); writes the
        convolution's ``grads``."""
        if self._activated is None:
            raise RuntimeError("ConvActPool.backward called before forward")
        conv = self.layers[0]
        grad_x, _, _ = F.conv2d_act_pool_backward(
            grad_y, self._x, self._activated, conv.params["weight"], conv.stride, conv.padding,
            conv.dilation, conv.groups, self.activation, self.pool, need_input_grad, conv.bias,
            grad_weight=conv.grads["weight"], grad_bias=conv.grads.get("bias"))
        return grad_x


def norm_relu_fusable(norm, activation) -> bool:
    """Whether these two consecutive layers can run as one :class:`NormReLU`."""
    return type(norm) in (BatchNorm2d, BatchNorm1d) and type(activation) is ReLU


class NormReLU:
    """``relu(norm(x))`` in one pass; each layer keeps its own forward's state, so the
    backward is theirs."""

    def __init__(self, norm, activation):
        if not norm_relu_fusable(norm, activation):
            raise ValueError(f"cannot fuse {norm!r}, {activation!r}")
        self.layers = (norm, activation)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """x -> relu(norm(x)), x's shape."""
        norm, activation = self.layers
        y = norm.forward_relu(x, training=training)
        activation.saved = y
        return y

    def current(self) -> bool:
        """Always: the layers hold their state themselves."""
        return True

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """The two layers' backwards; writes the batch norm's ``grads``."""
        norm, activation = self.layers
        return norm.backward(activation.backward(grad_y), need_input_grad=need_input_grad)
