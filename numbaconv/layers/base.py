"""The ``Layer`` base class: the contract every built-in and plugin layer follows.

A layer is a small object with explicit forward and backward passes (no autograd):

``forward(x, training=False) -> y``
    Computes the output of an array ``x`` and **always** keeps whatever its backward
    needs (the input, a mask, pooling indices...), so ``backward`` may follow any forward.
    Containers always pass ``training``; it only changes behaviour for layers that differ
    between training and evaluation (``Dropout``, batch norm).
``backward(grad_y, need_input_grad=True) -> grad_x``
    Returns the gradient with respect to the input of the last forward and **overwrites**
    (does not accumulate) the gradient of each parameter in ``grads``: one backward per
    batch, then an optimizer step. Containers always pass ``need_input_grad``; when it is
    False (the network's first layer) nobody reads the result, so a layer may skip computing
    it and return ``None``. Built-in layers write into the same ``grads`` arrays every time,
    so a dict of them taken once stays current.
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
``children() -> [(name, layer), ...]``
    The layers a container is made of (``Sequential``, ``Residual``, ``Concat``); empty for a
    leaf. :meth:`Layer.named_params`, :meth:`Layer.state_dict` and friends walk the tree and
    key every array by its path, as PyTorch's ``state_dict`` does (``"3.body.0.weight"``).

Helpers for layer authors: :meth:`Layer.add_param` registers a parameter with its gradient,
:meth:`Layer.set_grad` overwrites a gradient in place, :meth:`Layer.shape_error` builds the
error ``output_shape`` raises, :meth:`Layer.require_forward` guards a backward that ran before
any forward. :func:`numbaconv.testing.check_layer` checks a layer the way numbaconv's own tests
do.

Parameters are float32 unless a layer is built with another ``dtype``; layers never cast
their inputs (the functional kernels raise on a dtype mismatch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..devices import copy_into, get_device, host_copy

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

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
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

    def config(self) -> dict:
        return {}

    def extra_repr(self) -> str:
        """The text between the parentheses of ``repr``; by default ``config()`` as kwargs."""
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # the tree -------------------------------------------------------------------------

    def children(self) -> list[tuple[str, Layer]]:
        """``[(name, layer), ...]``: the layers this one is made of (containers); ``[]`` for a
        leaf. Names are path components: ``"0"``, ``"body"``..."""
        return []

    def named_layers(self, prefix: str = ""):
        """Every layer of the tree, depth first, as ``(path, layer)``; this one's path is
        ``prefix`` (``""`` at the root)."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_layers(f"{prefix}{name}." if prefix else f"{name}.")

    def _named(self, attribute: str) -> dict[str, np.ndarray]:
        return {f"{path}{name}": array for path, layer in self.named_layers()
                for name, array in getattr(layer, attribute).items()}

    def named_params(self) -> dict[str, np.ndarray]:
        """``{path: array}`` of every parameter in the tree, as PyTorch's ``state_dict`` keys
        them (``"0.weight"``, ``"3.body.0.bias"``): the layers' own arrays, so an optimizer
        built on it updates the model in place."""
        return self._named("params")

    def named_grads(self) -> dict[str, np.ndarray]:
        """Like :meth:`named_params` for the gradients of the last backward."""
        return self._named("grads")

    def named_buffers(self) -> dict[str, np.ndarray]:
        """Like :meth:`named_params` for the non-trainable state (running statistics)."""
        return self._named("buffers")

    def num_params(self) -> int:
        """Number of scalar parameters in the tree (``sum(p.numel() ...)`` in PyTorch)."""
        return int(sum(p.size for p in self.named_params().values()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter and buffer (on either device), keyed like
        :meth:`named_params` (``np.savez``-able)."""
        return {name: host_copy(p)  # host arrays from either device
                for name, p in {**self.named_params(), **self.named_buffers()}.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy ``state`` into the parameters and buffers in place (arrays keep their identity
        and dtype).

        Keys and shapes must match exactly; otherwise ``ValueError`` names every missing,
        unexpected and mis-shaped key, and nothing is changed.
        """
        targets = {**self.named_params(), **self.named_buffers()}
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for name, p in targets.items():
            if name in state and np.shape(state[name]) != p.shape:
                problems.append(f"{name!r} has shape {tuple(np.shape(state[name]))}, "
                                f"the model's is {p.shape}")
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for name, p in targets.items():
            copy_into(p, state[name])  # onto the array's device

    # helpers for subclasses -------------------------------------------------------------

    def shape_error(self, detail: str) -> ShapeError:
        """A :class:`ShapeError` for ``output_shape`` to raise: ``"<repr>: <detail>"``."""
        return ShapeError(f"{self!r}: {detail}", detail=detail)

    def require_forward(self, saved):
        """``saved`` (what ``forward`` kept for the backward), or ``RuntimeError`` when it is
        ``None``: ``backward`` called before any ``forward``."""
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return saved

    def add_param(self, name: str, array: np.ndarray) -> None:
        """Register a parameter and its gradient buffer (zeros, same shape and dtype)."""
        self.params[name] = array
        self.grads[name] = np.zeros_like(array)

    def set_grad(self, name: str, value: np.ndarray) -> None:
        """Overwrite the gradient of ``name`` in place (keeps the array object)."""
        grad = self.grads[name]
        if tuple(grad.shape) != tuple(value.shape):
            raise ValueError(f"{type(self).__name__}: gradient of {name!r} has shape "
                             f"{tuple(value.shape)}, expected {tuple(grad.shape)}")
        copy_into(grad, value)  # on the gradient's device

    def to(self, device) -> Layer:
        """Move the parameters, gradients and buffers of this layer and of every layer below
        it to ``device`` (a :class:`numbaconv.devices.Device` or its name, ``"cpu"`` or
        ``"cuda"``): each dict entry is replaced by the array on that device (arrays already
        there are kept). From then on the layers compute there, as
        :mod:`numbaconv.functional` follows its arrays; build optimizers after the move.
        Returns ``self``."""
        device = get_device(device)
        for table in (self.params, self.grads, self.buffers):
            for name, array in table.items():
                table[name] = device.put(array)
        for _, child in self.children():
            child.to(device)
        return self


def check_ndim(layer: Layer, input_shape, ndim: int, what: str) -> tuple:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != ndim:
        raise layer.shape_error(f"expects a {ndim}-D {what} input, got shape {shape}")
    return shape


def prod(shape) -> int:
    return int(math.prod(shape))
