"""Fully connected layer (``torch.nn.Linear``): ``y = x @ W.T + b``, its products in Numba
(:mod:`numbaconv.kernels.cpu.dense`)."""

from __future__ import annotations

import numpy as np

from ..init import as_generator, kaiming_uniform_default
from ..kernels.cpu.dense import matmul_acc
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
        self._x = None

    @property
    def bias(self) -> bool:
        return "bias" in self.params

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        x = np.asarray(x)
        self.output_shape(x.shape)
        if x.dtype != self.dtype:
            raise TypeError(f"{self!r}: input dtype {x.dtype} does not match the parameters' "
                            f"dtype {self.dtype}")
        rows = x.reshape(-1, self.in_features)
        y = np.empty((rows.shape[0], self.out_features), dtype=self.dtype)
        y[:] = self.params["bias"] if self.bias else 0  # the product adds to it
        matmul_acc(np.ascontiguousarray(rows), np.ascontiguousarray(self.params["weight"].T), y)
        self._x = x
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Parameter gradients into ``grads``; returns ``grad_x`` (``None`` when
        ``need_input_grad`` is False)."""
        x = self.require_forward(self._x)
        grad_y = np.asarray(grad_y)
        expected = x.shape[:-1] + (self.out_features,)
        if grad_y.shape != expected:
            raise ValueError(f"{self!r}: grad_y has shape {grad_y.shape}, the output had "
                             f"{expected}")
        if grad_y.dtype != self.dtype:
            raise TypeError(f"{self!r}: grad_y dtype {grad_y.dtype} does not match the "
                            f"parameters' dtype {self.dtype}")
        gy = np.ascontiguousarray(grad_y.reshape(-1, self.out_features))
        rows = np.ascontiguousarray(x.reshape(-1, self.in_features))
        grad_w = self.grads["weight"]
        grad_w[:] = 0
        matmul_acc(np.ascontiguousarray(gy.T), rows, grad_w)
        if self.bias:
            np.sum(gy, axis=0, out=self.grads["bias"])
        if not need_input_grad:
            return None
        grad_x = np.zeros(rows.shape, dtype=self.dtype)
        matmul_acc(gy, np.ascontiguousarray(self.params["weight"]), grad_x)
        return grad_x.reshape(x.shape)

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
