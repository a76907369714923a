"""``BatchNorm1d`` and ``BatchNorm2d``: numbaconv layers with PyTorch's semantics.

Trainable parameters (in ``params``/``grads``, so optimizers see them): ``weight`` (the
scale, gamma, initialised to 1) and ``bias`` (the shift, beta, initialised to 0), both
``(num_features,)``, present when ``affine=True``.

Non-trainable state lives in the documented attribute ``buffers`` (``dict[str, ndarray]``,
like PyTorch's buffers; empty when ``track_running_stats=False``):

``running_mean``  ``(num_features,)``, initialised to 0
``running_var``   ``(num_features,)``, initialised to 1
``num_batches_tracked``  a 0-d int64 array

They are updated **in place** by every ``forward(x, training=True)``, so a dict of them taken
once stays current, and a checkpoint can save ``{f"{i}.{k}": v.copy() ...}`` next to the
parameters (PyTorch's ``state_dict`` keys are the same names) and restore them with
``np.copyto``.
"""

from __future__ import annotations

import numpy as np
from numbaconv.layers import Layer

from .kernels import batch_norm, batch_norm_backward

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Layer):
    """Shared implementation; subclasses set the accepted input dimensions."""

    #: accepted ``len(input_shape)`` values, and how to describe them in errors
    _ndims: tuple[int, ...] = ()
    _layout: str = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32):
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
        self.track_running_stats = bool(track_running_stats)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        c = self.num_features
        if self.affine:
            self.add_param("weight", np.ones(c, dtype=self.dtype))
            self.add_param("bias", np.zeros(c, dtype=self.dtype))
        #: Non-trainable state (see the module docstring); updated in place.
        self.buffers: dict[str, np.ndarray] = {}
        if self.track_running_stats:
            self.buffers["running_mean"] = np.zeros(c, dtype=self.dtype)
            self.buffers["running_var"] = np.ones(c, dtype=self.dtype)
            self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)
        self._saved = None

    @property
    def running_mean(self) -> np.ndarray | None:
        return self.buffers.get("running_mean")

    @property
    def running_var(self) -> np.ndarray | None:
        return self.buffers.get("running_var")

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batch tracked (in place)."""
        if self.track_running_stats:
            self.buffers["running_mean"][...] = 0
            self.buffers["running_var"][...] = 1
            self.buffers["num_batches_tracked"][...] = 0

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Normalise by the batch's statistics when ``training`` (updating the running ones),
        else by the running statistics; without running statistics always by the batch's."""
        x = np.asarray(x)
        self.output_shape(x.shape)
        if x.dtype != self.dtype:
            raise TypeError(f"{self!r}: input dtype {x.dtype} does not match the layer's "
                            f"dtype {self.dtype}")
        weight, bias = self.params.get("weight"), self.params.get("bias")
        batch_stats = training or not self.track_running_stats
        if batch_stats:
            update = training and self.track_running_stats
            factor = 0.0
            if update:
                tracked = int(self.buffers["num_batches_tracked"]) + 1
                factor = 1.0 / tracked if self.momentum is None else self.momentum
            y, mean, invstd = batch_norm(
                x, self.running_mean if update else None, self.running_var if update else None,
                weight, bias, training=True, momentum=factor, eps=self.eps)
            if update:
                self.buffers["num_batches_tracked"] += 1
        else:
            y, mean, invstd = batch_norm(x, self.running_mean, self.running_var, weight, bias,
                                         training=False, eps=self.eps)
        self._saved = (x, mean, invstd, batch_stats)
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        x, mean, invstd, batch_stats = self.require_forward(self._saved)
        grad_x, grad_weight, grad_bias = batch_norm_backward(
            grad_y, x, mean, invstd, self.params.get("weight"), batch_stats=batch_stats)
        if self.affine:
            self.set_grad("weight", grad_weight)
            self.set_grad("bias", grad_bias)
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
        return 2 * int(np.prod(self.output_shape(input_shape)))

    def config(self) -> dict:
        cfg = {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
               "affine": self.affine, "track_running_stats": self.track_running_stats}
        if self.dtype != np.float32:
            cfg["dtype"] = self.dtype.name
        return cfg

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
             f"affine={self.affine}, track_running_stats={self.track_running_stats}")
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) images, as torch.nn.BatchNorm2d.

    Per-channel statistics over the batch and both spatial axes; see the module docstring
    for the parameters and the running statistics in ``buffers``.
    """

    _ndims = (4,)
    _layout = "4-D (N, C, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs, as torch.nn.BatchNorm1d.

    Per-feature statistics over the batch (and ``L``), e.g. after a ``Linear`` layer; see the
    module docstring for the parameters and the running statistics in ``buffers``.
    """

    _ndims = (2, 3)
    _layout = "2-D (N, C) or 3-D (N, C, L)"
