"""The ``Layer`` base class: the contract every built-in and plugin layer follows.

A layer is a small object with explicit forward and backward passes (no autograd):

``forward(x, training=False) -> y``
    Computes the output of a NumPy array ``x`` and **always** keeps whatever its backward
    needs (the input, a mask, pooling indices...), so ``backward`` may follow any forward.
    ``training`` only changes behaviour for layers that differ between training and
    evaluation (``Dropout``). A plugin may also define ``forward(self, x)`` without it;
    ``Sequential`` then calls it without the keyword.
``backward(grad_y) -> grad_x``
    Returns the gradient with respect to the input of the last forward and **overwrites**
    (does not accumulate) the gradient of each parameter in ``grads``: one backward per
    batch, then an optimizer step. Built-in layers write into the same ``grads`` arrays
    every time, so a dict of them taken once stays current.
``params`` / ``grads``
    ``dict[str, numpy.ndarray]`` with the same keys and shapes; both empty for a layer
    without parameters (the base class supplies the empty dicts, so a parameter-free plugin
    needs only ``__init__``, ``forward`` and ``backward``). Optimizers update ``params``
    arrays in place.
``buffers``
    ``dict[str, numpy.ndarray]`` of non-trainable state that checkpoints must keep (batch
    norm's running statistics), updated in place; empty by default. Optimizers never see it.
``output_shape(input_shape) -> tuple``
    The output shape for an input shape, without computing anything. The default returns
    ``input_shape`` (shape-preserving layers). Layers raise :class:`ShapeError` (a
    ``ValueError``) naming themselves and the shapes when the input does not fit.
``geometry``
    ``(kernel_size, stride, dilation)`` of the layer's window over the spatial axes, for
    receptive fields; ``(1, 1, 1)`` for layers that do not look at neighbours. A layer whose
    every output depends on every input (``Linear`` after ``Flatten``) sets the class
    attribute ``global_field = True`` instead.
``flops(input_shape) -> int``
    Floating-point operations of the forward (a multiply-add counts 2); 0 by default.
``config() -> dict``
    The constructor arguments as plain JSON/TOML-able values, so that
    ``type(layer)(**layer.config())`` builds an equivalent (freshly initialised) layer.

Parameters are float32 unless a layer is built with another ``dtype``; layers never cast
their inputs (the functional kernels raise on a dtype mismatch).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Layer", "ShapeError", "plain"]


class ShapeError(ValueError):
    """An input shape that does not fit a layer. ``detail`` holds the message without the
    layer's name, ``index`` the position in a ``Sequential`` when known."""

    def __init__(self, message: str, detail: str | None = None, index: int | None = None):
        super().__init__(message)
        self.detail = message if detail is None else detail
        self.index = index


def plain(value):
    """``value`` as plain Python (tuples to lists, NumPy scalars to int/float/bool)."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype):
        return value.name
    return value


class Layer:
    """Base class of all layers; see the module docstring for the contract."""

    #: True when every output element depends on every input element (e.g. ``Linear``).
    global_field: bool = False

    # params and grads are created on first use, so that a subclass whose ``__init__`` does not
    # call ``super().__init__()`` still has its own (empty) dicts.
    @property
    def params(self) -> dict[str, np.ndarray]:
        d = self.__dict__.get("_params")
        if d is None:
            d = self.__dict__["_params"] = {}
        return d

    @params.setter
    def params(self, value: dict[str, np.ndarray]) -> None:
        self.__dict__["_params"] = value

    @property
    def grads(self) -> dict[str, np.ndarray]:
        d = self.__dict__.get("_grads")
        if d is None:
            d = self.__dict__["_grads"] = {}
        return d

    @grads.setter
    def grads(self, value: dict[str, np.ndarray]) -> None:
        self.__dict__["_grads"] = value

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state saved with the weights (e.g. batch norm's running stats);
        updated in place by ``forward``. Empty by default."""
        d = self.__dict__.get("_buffers")
        if d is None:
            d = self.__dict__["_buffers"] = {}
        return d

    @buffers.setter
    def buffers(self, value: dict[str, np.ndarray]) -> None:
        self.__dict__["_buffers"] = value

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self.forward(x, training=training)

    def output_shape(self, input_shape) -> tuple:
        return tuple(int(s) for s in input_shape)

    @property
    def geometry(self) -> tuple:
        return (1, 1, 1)

    def flops(self, input_shape) -> int:
        return 0

    def num_params(self) -> int:
        """Number of scalar parameters."""
        return int(sum(p.size for p in self.params.values()))

    def config(self) -> dict:
        return {}

    def extra_repr(self) -> str:
        """The text between the parentheses of ``repr``; by default ``config()`` as kwargs."""
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # helpers for subclasses -------------------------------------------------------------

    def _shape_error(self, detail: str) -> ShapeError:
        return ShapeError(f"{self!r}: {detail}", detail=detail)

    def _require_forward(self, value):
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return value

    def _new_param(self, name: str, array: np.ndarray) -> None:
        """Register a parameter and its gradient buffer (zeros, same shape and dtype)."""
        self.params[name] = array
        self.grads[name] = np.zeros_like(array)

    def _set_grad(self, name: str, value: np.ndarray) -> None:
        """Overwrite the gradient of ``name`` in place (keeps the array object)."""
        grad = self.grads[name]
        if grad.shape != value.shape:
            raise ValueError(f"{type(self).__name__}: gradient of {name!r} has shape "
                             f"{value.shape}, expected {grad.shape}")
        np.copyto(grad, value, casting="same_kind")


def check_ndim(layer: Layer, input_shape, ndim: int, what: str) -> tuple:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != ndim:
        raise layer._shape_error(f"expects a {ndim}-D {what} input, got shape {shape}")
    return shape


def prod(shape) -> int:
    return int(math.prod(shape))
