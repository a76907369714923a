"""Fully connected layer (``torch.nn.Linear``): ``y = x @ W.T + b``, computed by
``numbaconv.functional``."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..init import as_generator, kaiming_uniform_default
from ..shapes import as_int
from .base import Layer, prod

__all__ = ["Linear"]


class Linear(Layer):
    """``y = x @ weight.T + bias`` over the last axis of ``x`` (shape ``(*, in_features)``).

    ``weight`` is ``(out_features, in_features)``, ``bias`` ``(out_features,)``, both
    ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` as in PyTorch. The input's dtype must be
    the parameters' dtype (NumPy would otherwise silently upcast float32 to float64).
    """

    global_field = True

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features = as_int(in_features, "in_features", 1)
        self.out_features = as_int(out_features, "out_features", 1)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        rng = as_generator(rng)
        fan_in = self.in_features
        self.add_param("weight", kaiming_uniform_default(
            (self.out_features, self.in_features), fan_in, rng, self.dtype))
        if bias:
            self.add_param("bias", kaiming_uniform_default((self.out_features,), fan_in, rng,
                                                            self.dtype))
        self.saved = None  #: the input of the last forward (None before any)

    @property
    def bias(self) -> bool:
        return "bias" in self.params

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self.output_shape(np.shape(x))
        y = F.linear(x, self.params["weight"], self.params.get("bias"))
        self.saved = x
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Parameter gradients into ``grads``; returns ``grad_x`` (``None`` when
        ``need_input_grad`` is False)."""
        x = self.require_forward(self.saved)
        grad_x, _, _ = F.linear_backward(grad_y, x, self.params["weight"], need_input_grad,
                                         self.bias, grad_weight=self.grads["weight"],
                                         grad_bias=self.grads.get("bias"))
        return grad_x

    def output_shape(self, input_shape) -> tuple:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) < 1 or shape[-1] != self.in_features:
            got = shape[-1] if shape else "none"
            raise self.shape_error(f"expects {self.in_features} input features, got {got} "
                                    f"from shape {shape}")
        return shape[:-1] + (self.out_features,)

    def flops(self, input_shape) -> int:
        rows = prod(self.output_shape(input_shape)[:-1])
        return 2 * rows * self.in_features * self.out_features

    def config(self) -> dict:
        cfg = {"in_features": self.in_features, "out_features": self.out_features,
               "bias": self.bias}
        if self.dtype != np.float32:
            cfg["dtype"] = self.dtype.name
        return cfg

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias}"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s
