"""Fully connected layer (``torch.nn.Linear``): ``y = x @ W.T + b`` with NumPy's BLAS."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from ..init import as_generator, kaiming_uniform_default
from ..shapes import as_int
from .base import Layer, prod

__all__ = ["Linear"]

_blas = None  # threadpoolctl's view of the BLAS libraries loaded, made at the first product
_blas_lock = threading.Lock()
_blas_users = 0  # Linear products running now, in any thread
_blas_limit = None  # the limiter of the first of them, which restores the setting


@contextlib.contextmanager
def _one_blas_thread():
    """A context in which NumPy's BLAS runs on one thread (about 9 us to enter and leave).

    The products of a network this engine targets are small (LeNet's largest: 256x400 by
    400x120), and OpenBLAS's threads spin after each call, taking the cores from the Numba
    kernels that run next: a LeNet training step took 1.45x as long with BLAS on its default
    2 threads as on 1 with Numba on one thread, and 4.8x with Numba on two. The setting is
    global to the process: with several threads in here at once, the first to enter limits it
    and the last to leave restores it.
    """
    global _blas, _blas_users, _blas_limit
    with _blas_lock:
        if _blas is None:
            _blas = ThreadpoolController().select(user_api="blas")
        if _blas_users == 0:
            _blas_limit = _blas.limit(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limit.restore_original_limits()
                _blas_limit = None


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
        self._new_param("weight", kaiming_uniform_default(
            (self.out_features, self.in_features), fan_in, rng, self.dtype))
        if bias:
            self._new_param("bias", kaiming_uniform_default((self.out_features,), fan_in, rng,
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
        with _one_blas_thread():
            y = x @ self.params["weight"].T
        if self.bias:
            y += self.params["bias"]
        self._x = x
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Parameter gradients into ``grads``; returns ``grad_x`` (``None`` when
        ``need_input_grad`` is False)."""
        x = self._require_forward(self._x)
        gy = grad_y.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        with _one_blas_thread():
            np.matmul(gy.T, x2, out=self.grads["weight"])
            grad_x = grad_y @ self.params["weight"] if need_input_grad else None
        if self.bias:
            np.sum(gy, axis=0, out=self.grads["bias"])
        return grad_x

    def output_shape(self, input_shape) -> tuple:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) < 1 or shape[-1] != self.in_features:
            got = shape[-1] if shape else "none"
            raise self._shape_error(f"expects {self.in_features} input features, got {got} "
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
