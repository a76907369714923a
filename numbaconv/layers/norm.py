"""Batch normalization layers (``torch.nn.BatchNorm1d``/``BatchNorm2d``), computed by
:func:`numbaconv.functional.batch_norm` on either device.

Trainable parameters (in ``params``/``grads``): ``weight`` (the scale, 1 at first) and ``bias``
(the shift, 0 at first), both ``(num_features,)``, when ``affine`` (``bias=False``: the scale
only, as PyTorch 2.13's keyword).

Non-trainable state in ``buffers`` (saved in checkpoints by ``state_dict``, keyed as PyTorch
keys them), when ``track_running_stats``:

``running_mean``  ``(num_features,)``, 0 at first
``running_var``   ``(num_features,)``, 1 at first
``num_batches_tracked``  a 0-d int64 array

Every ``forward(x, training=True)`` updates them in place on the layer's device (a model moved
to a GPU keeps them there): ``running = (1 - momentum) * running + momentum * batch``, with the
batch's unbiased variance, or the cumulative average with ``momentum=None``. In training the
layer normalises by the batch's mean and biased variance, in evaluation by the running
statistics (by the batch's when it keeps none).
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..devices import copy_into
from .base import Layer, prod

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Layer):
    """Shared implementation; subclasses set the accepted input dimensions."""

    #: accepted ``len(input_shape)`` values, and how to describe them in errors
    _ndims: tuple[int, ...] = ()
    _layout: str = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, dtype=np.float32):
        super().__init__()
        if isinstance(num_features, bool) or not hasattr(num_features, "__index__") \
                or int(num_features) < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if isinstance(eps, bool) or not float(eps) >= 0.0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        if momentum is not None and (isinstance(momentum, bool)
                                     or not 0.0 <= float(momentum) <= 1.0):
            raise ValueError(f"momentum must be in [0, 1] or None (cumulative average), "
                             f"got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.bias = bool(bias)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        channels = self.num_features
        if self.affine:
            self.add_param("weight", np.ones(channels, dtype=self.dtype))
            if self.bias:
                self.add_param("bias", np.zeros(channels, dtype=self.dtype))
        if self.track_running_stats:
            self.buffers["running_mean"] = np.zeros(channels, dtype=self.dtype)
            self.buffers["running_var"] = np.ones(channels, dtype=self.dtype)
            self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)
        #: (input, mean, invstd, batch_stats) of the last forward, which the backward needs
        self.saved = None

    @property
    def running_mean(self):
        return self.buffers.get("running_mean")

    @property
    def running_var(self):
        return self.buffers.get("running_var")

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batch tracked (in place, on the buffers'
        device)."""
        if self.track_running_stats:
            copy_into(self.buffers["running_mean"], np.zeros(self.num_features, self.dtype))
            copy_into(self.buffers["running_var"], np.ones(self.num_features, self.dtype))
            copy_into(self.buffers["num_batches_tracked"], np.zeros((), np.int64))

    def forward(self, x, training: bool = False):
        """Normalise by the batch's statistics when ``training`` (moving the running ones),
        else by the running statistics; without running statistics always by the batch's."""
        return self._normalised(F.batch_norm, x, training)

    def forward_relu(self, x, training: bool = False):
        """``relu(self.forward(x, training))`` in one pass (:func:`functional.batch_norm_relu`),
        keeping this layer's state as :meth:`forward` does: ``Sequential``'s fused
        ``BatchNorm -> ReLU`` stage (the ReLU's state is the result)."""
        return self._normalised(F.batch_norm_relu, x, training)

    def _normalised(self, function, x, training):
        self.output_shape(np.shape(x))
        if x.dtype != self.dtype:
            raise TypeError(f"{self!r}: input dtype {x.dtype} does not match the layer's "
                            f"dtype {self.dtype}")
        batch_stats = bool(training) or not self.track_running_stats
        y, mean, invstd = function(
            x, self.running_mean, self.running_var, self.params.get("weight"),
            self.params.get("bias"), training=batch_stats, momentum=self.momentum,
            eps=self.eps, num_batches_tracked=self.buffers.get("num_batches_tracked"))
        self.saved = (x, mean, invstd, batch_stats)
        return y

    def backward(self, grad_y, need_input_grad: bool = True):
        """Overwrites ``grads`` (when affine); returns grad_x, or None without
        ``need_input_grad``."""
        x, mean, invstd, batch_stats = self.require_forward(self.saved)
        grad_x, _, _ = F.batch_norm_backward(
            grad_y, x, mean, invstd, self.params.get("weight"), batch_stats=batch_stats,
            need_input_grad=need_input_grad, grad_weight=self.grads.get("weight"),
            grad_bias=self.grads.get("bias"))
        return grad_x

    def output_shape(self, input_shape) -> tuple:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in self._ndims:
            raise self.shape_error(f"expects a {self._layout} input, got shape {shape}")
        if shape[1] != self.num_features:
            raise self.shape_error(f"expects {self.num_features} channels on axis 1, got "
                                   f"{shape[1]} from shape {shape}")
        return shape

    def flops(self, input_shape) -> int:
        """2 per element (``y = x * scale + shift``); the statistics are not counted."""
        return 2 * prod(self.output_shape(input_shape))

    def config(self) -> dict:
        cfg = {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
               "affine": self.affine, "bias": self.bias,
               "track_running_stats": self.track_running_stats}
        if self.dtype != np.float32:
            cfg["dtype"] = self.dtype.name
        return cfg

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
             f"affine={self.affine}, bias={'bias' in self.params}, "
             f"track_running_stats={self.track_running_stats}")
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) images, as ``torch.nn.BatchNorm2d``: statistics
    per channel over the batch and both spatial axes (see the module docstring)."""

    _ndims = (4,)
    _layout = "4-D (N, C, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs, as ``torch.nn.BatchNorm1d``:
    statistics per feature over the batch (and L), e.g. after a ``Linear`` (see the module
    docstring)."""

    _ndims = (2, 3)
    _layout = "2-D (N, C) or 3-D (N, C, L)"
