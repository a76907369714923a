"""Check a layer the way numbaconv's own tests do: :func:`check_layer`.

For plugin authors (and numbaconv's tests)::

    from numbaconv.testing import check_layer
    check_layer(MyLayer(4), (2, 4, 8, 8))

raises ``AssertionError`` with a message naming what disagrees, and returns nothing when the
layer keeps the :class:`~numbaconv.layers.Layer` contract.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import numpy as np

from .layers import Layer, build_layer, layer_spec

__all__ = ["check_layer", "finite_difference", "numeric_gradient", "as_float64"]


def as_float64(layer: Layer) -> Layer:
    """A deep copy of ``layer`` (a tree) whose parameters, gradients and buffers are float64
    copies of the original's: the same function, computed in double precision. A layer's
    ``dtype`` attribute (the constructor's ``dtype=``, by convention) becomes float64 too."""
    twin = copy.deepcopy(layer)
    for _, node in twin.named_layers():
        if isinstance(getattr(node, "dtype", None), np.dtype):
            node.dtype = np.dtype(np.float64)
        for store in (node.params, node.grads, node.buffers):
            for name, array in store.items():
                if np.issubdtype(array.dtype, np.floating):
                    store[name] = array.astype(np.float64)
    return twin


def finite_difference(f: Callable[[], float], array: np.ndarray, index, eps: float) -> float:
    """The central difference of ``f()`` in ``array[index]`` (changed in place, restored)."""
    saved = array[index]
    array[index] = saved + eps
    plus = f()
    array[index] = saved - eps
    minus = f()
    array[index] = saved
    return (plus - minus) / (2 * eps)


def numeric_gradient(f: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of ``f()`` in every element of ``array`` (changed in place,
    restored): the whole gradient, for small arrays."""
    grad = np.zeros(array.shape, dtype=np.float64)
    for index in np.ndindex(array.shape):
        grad[index] = finite_difference(f, array, index, eps)
    return grad


def _sample(shape, count: int, rng) -> list[tuple]:
    total = int(np.prod(shape))
    picks = np.arange(total) if total <= count else rng.choice(total, count, replace=False)
    return [np.unravel_index(int(i), shape) for i in picks]


def check_layer(layer: Layer, input_shape, *, training: bool = False,
                reference: Callable[..., np.ndarray] | None = None,
                layer_types: Mapping[str, type] | None = None, seed: int = 0,
                points: int = 24, eps: float = 1e-6, rtol: float = 1e-4,
                atol: float = 1e-5, threads: bool = True,
                input_values: Callable[[np.random.Generator, tuple], np.ndarray] | None = None
                ) -> None:
    """Check that ``layer`` keeps the layer contract for inputs of ``input_shape``.

    * ``output_shape(input_shape)`` is the shape ``forward`` returns;
    * ``backward``'s input gradient and every parameter's gradient agree with central finite
      differences of ``sum(forward(x) * c)`` (a random ``c``), computed on a float64 copy of
      the layer (:func:`as_float64`) at ``points`` sampled elements per array;
    * the layer in its own dtype (float32) agrees with that float64 copy (``rtol``/``atol``,
      forward and every gradient), and ``backward(..., need_input_grad=False)`` gives the same
      parameter gradients;
    * its spec (``{"type": ..., **config()}``) rebuilds an equal layer (the tree's own classes
      are known; ``layer_types`` may name more, e.g. ``numbaconv.get_layers()``), and
      ``state_dict`` /
      ``load_state_dict`` carry its state: the rebuilt layer computes the same output;
    * with ``threads``, the results are bit for bit the same on 1 thread and on all;
    * ``reference(x, **params)`` (optional, e.g. a PyTorch function on NumPy arrays) gives the
      same output.

    ``training`` is passed to every ``forward``; a layer that draws random numbers while
    training (``Dropout``) is checked with ``training=False``. ``input_values(rng, shape)``
    draws the input (default: standard normal); pass one that keeps away from kinks (ReLU's
    0, max pooling's ties) for exact finite differences.
    """
    rng = np.random.default_rng(seed)
    input_shape = tuple(int(s) for s in input_shape)
    params = layer.named_params()
    dtype = next((p.dtype for p in params.values()), np.dtype(np.float32))
    draw = input_values or (lambda r, shape: r.standard_normal(shape))
    x64 = np.asarray(draw(rng, input_shape), dtype=np.float64)
    x = x64.astype(dtype)

    y = layer.forward(x, training=training)
    expected_shape = tuple(int(s) for s in layer.output_shape(input_shape))
    assert tuple(y.shape) == expected_shape, (
        f"{layer!r}: forward gave shape {tuple(y.shape)}, output_shape says {expected_shape}")
    assert y.dtype == dtype, f"{layer!r}: forward gave {y.dtype} for a {dtype} layer"
    c64 = rng.standard_normal(y.shape)
    c = c64.astype(dtype)
    grad_x = layer.backward(c, need_input_grad=True)
    grads = {k: np.array(g, copy=True) for k, g in layer.named_grads().items()}

    # finite differences on the float64 twin
    twin = as_float64(layer)
    y64 = twin.forward(x64, training=training)
    grad_x64 = twin.backward(c64, need_input_grad=True)
    grads64 = {k: np.array(g, copy=True) for k, g in twin.named_grads().items()}

    def objective() -> float:
        return float(np.sum(twin.forward(x64, training=training) * c64))

    arrays = {"the input": (x64, grad_x64)}
    arrays.update({name: (p, grads64[name]) for name, p in twin.named_params().items()})
    for what, (array, analytic) in arrays.items():
        assert analytic is not None and tuple(analytic.shape) == array.shape, (
            f"{layer!r}: the gradient of {what} has shape "
            f"{None if analytic is None else tuple(analytic.shape)}, expected {array.shape}")
        for index in _sample(array.shape, points, rng):
            numeric = finite_difference(objective, array, index, eps)
            assert abs(numeric - analytic[index]) <= 1e-6 + 1e-4 * abs(numeric), (
                f"{layer!r}: d/d {what}{[int(i) for i in index]} is "
                f"{analytic[index]:.8g} by backward, {numeric:.8g} by finite differences")

    # the layer's own dtype against double precision
    close = {"rtol": rtol, "atol": atol}
    np.testing.assert_allclose(y, y64, err_msg=f"{layer!r}: forward, {dtype} vs float64",
                               **close)
    np.testing.assert_allclose(grad_x, grad_x64, err_msg=f"{layer!r}: input gradient", **close)
    for name, g in grads.items():
        np.testing.assert_allclose(g, grads64[name], err_msg=f"{layer!r}: gradient of {name}",
                                   **close)
    layer.forward(x, training=training)
    layer.backward(c, need_input_grad=False)  # may skip the input gradient, not the others
    for name, g in layer.named_grads().items():
        np.testing.assert_array_equal(g, grads[name], err_msg=(
            f"{layer!r}: gradient of {name} differs with need_input_grad=False"))

    # spec and state round trips
    spec = layer_spec(layer)
    types = {type(node).__name__: type(node) for _, node in layer.named_layers()}
    rebuilt = build_layer(spec, {**types, **(layer_types or {})})
    assert layer_spec(rebuilt) == spec, (
        f"{layer!r}: its spec {spec} rebuilds {layer_spec(rebuilt)}")
    rebuilt.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(rebuilt.forward(x, training=training), y,
                                  err_msg=f"{layer!r}: rebuilt from spec and state")

    if threads:
        _check_threads(layer, x, c, y, grad_x, grads, training)

    if reference is not None:
        expected = reference(x64, **{k: np.asarray(v, np.float64)
                                     for k, v in twin.named_params().items()})
        np.testing.assert_allclose(y, np.asarray(expected, np.float64),
                                   err_msg=f"{layer!r}: against the reference", **close)


def _check_threads(layer, x, c, y, grad_x, grads, training) -> None:
    import numba

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1 = layer.forward(x, training=training)
        grad_x1 = layer.backward(c, need_input_grad=True)
        grads1 = layer.named_grads()
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(y1, y, err_msg=f"{layer!r}: forward on 1 thread")
    np.testing.assert_array_equal(grad_x1, grad_x, err_msg=f"{layer!r}: input grad, 1 thread")
    for name, g in grads1.items():
        np.testing.assert_array_equal(g, grads[name], err_msg=f"{layer!r}: {name}, 1 thread")
