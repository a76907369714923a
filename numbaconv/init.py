"""Parameter initialisers, following ``torch.nn.init``.

Functions ending in ``_`` fill an existing array in place and return it; the others return a
new array. Every function takes ``rng``: a ``numpy.random.Generator``, an int seed, or ``None``
(fresh OS entropy), so a model can be built reproducibly.

PyTorch's default for ``Conv2d`` and ``Linear`` is ``kaiming_uniform_(w, a=sqrt(5))``, which
works out to ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and the same bound for the bias:
:func:`kaiming_uniform_default`. D2L's LeNet re-initialises the weights (not the biases) with
Xavier-uniform: :func:`xavier_uniform_` and :func:`xavier_uniform_weights_`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .memory import array_bytes, check_fits

__all__ = [
    "as_generator",
    "calculate_fan_in_and_fan_out",
    "calculate_gain",
    "uniform_",
    "normal_",
    "zeros_",
    "constant_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "kaiming_uniform_default",
    "xavier_uniform_weights_",
]


def as_generator(rng=None) -> np.random.Generator:
    """A ``Generator`` from a ``Generator`` (returned as is), an int seed, or ``None``."""
    return np.random.default_rng(rng)


def calculate_fan_in_and_fan_out(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape``, as ``torch.nn.init`` computes them.

    ``(out, in)`` for a linear weight, ``(out, in/groups, kh, kw)`` for a convolution weight
    (the kernel's area multiplies both fans).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(
            f"fan in and fan out need an array of at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for ``nonlinearity`` (``torch.nn.init.calculate_gain``)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _check_float(array: np.ndarray, name: str) -> None:
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} fills a floating-point numpy array, got "
                        f"{type(array).__name__} of dtype {getattr(array, 'dtype', None)}")


def uniform_(array: np.ndarray, low: float = 0.0, high: float = 1.0, rng=None) -> np.ndarray:
    """Fill ``array`` with ``U(low, high)`` samples, in place; returns ``array``."""
    _check_float(array, "uniform_")
    array[...] = as_generator(rng).uniform(low, high, size=array.shape)
    return array


def normal_(array: np.ndarray, mean: float = 0.0, std: float = 1.0, rng=None) -> np.ndarray:
    """Fill ``array`` with ``N(mean, std**2)`` samples, in place; returns ``array``."""
    _check_float(array, "normal_")
    array[...] = as_generator(rng).normal(mean, std, size=array.shape)
    return array


def zeros_(array: np.ndarray) -> np.ndarray:
    """Fill ``array`` with zeros, in place; returns ``array``."""
    array[...] = 0
    return array


def constant_(array: np.ndarray, value: float) -> np.ndarray:
    """Fill ``array`` with ``value``, in place; returns ``array``."""
    array[...] = value
    return array


def xavier_uniform_(array: np.ndarray, rng=None, gain: float = 1.0) -> np.ndarray:
    """Glorot/Xavier uniform: ``U(-a, a)`` with ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(array.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return uniform_(array, -bound, bound, rng)


def xavier_normal_(array: np.ndarray, rng=None, gain: float = 1.0) -> np.ndarray:
    """Glorot/Xavier normal: ``N(0, std**2)`` with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(array.shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return normal_(array, 0.0, std, rng)


def _kaiming_std(shape, a: float, mode: str, nonlinearity: str) -> float:
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan) if fan else 0.0


def kaiming_uniform_(array: np.ndarray, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", rng=None) -> np.ndarray:
    """He/Kaiming uniform: ``U(-b, b)`` with ``b = sqrt(3) * gain / sqrt(fan)``."""
    bound = math.sqrt(3.0) * _kaiming_std(array.shape, a, mode, nonlinearity)
    return uniform_(array, -bound, bound, rng)


def kaiming_normal_(array: np.ndarray, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", rng=None) -> np.ndarray:
    """He/Kaiming normal: ``N(0, std**2)`` with ``std = gain / sqrt(fan)``."""
    return normal_(array, 0.0, _kaiming_std(array.shape, a, mode, nonlinearity), rng)


def kaiming_uniform_default(shape: Sequence[int], fan_in: int, rng=None,
                            dtype=np.float32) -> np.ndarray:
    """A new array of PyTorch's default ``Conv2d``/``Linear`` init: ``U(-1/sqrt(fan_in), +)``.

    Used for both weight (``kaiming_uniform_(w, a=sqrt(5))`` reduces to this bound) and bias.
    A ``fan_in`` of 0 gives zeros, as PyTorch's bias init does.
    """
    shape = tuple(int(s) for s in shape)
    check_fits(array_bytes(shape, np.dtype(dtype).itemsize), f"a parameter of shape {shape}")
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    out = np.empty(shape, dtype=dtype)
    return uniform_(out, -bound, bound, rng)


def xavier_uniform_weights_(layers: Iterable, rng=None, gain: float = 1.0) -> None:
    """Re-initialise the ``weight`` of every ``Conv2d`` and ``Linear`` in ``layers`` in place.

    This is D2L's ``init_cnn`` (``nn.init.xavier_uniform_`` on those weights; biases keep the
    PyTorch default). ``layers`` is a ``Sequential`` or any iterable of layers.
    """
    from .layers.conv import Conv2d
    from .layers.linear import Linear

    rng = as_generator(rng)
    for layer in layers:
        if isinstance(layer, (Conv2d, Linear)):
            xavier_uniform_(layer.params["weight"], rng, gain)
