"""Layers with explicit forward/backward passes; see :mod:`numbaconv.layers.base`."""

from .activation import ReLU, Sigmoid, Tanh
from .adaptive import AdaptiveAvgPool2d, AdaptiveMaxPool2d
from .base import Layer, ShapeError
from .containers import CONTAINER_TYPES, Concat, Residual, Sequential, build_layer, layer_spec
from .conv import Conv2d
from .dropout import Dropout
from .identity import Identity
from .linear import Linear
from .norm import BatchNorm1d, BatchNorm2d
from .pool import AvgPool2d, MaxPool2d
from .shape import Flatten

#: The built-in layer classes by name, as specs write them (containers included).
LAYER_TYPES: dict[str, type[Layer]] = {
    **{cls.__name__: cls
       for cls in (Conv2d, MaxPool2d, AvgPool2d, Linear, ReLU, Sigmoid, Tanh, Flatten, Dropout)},
    **{cls.__name__: cls
       for cls in (BatchNorm1d, BatchNorm2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, Identity)},
    **CONTAINER_TYPES,
}

__all__ = [
    "Layer",
    "ShapeError",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "Linear",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Flatten",
    "Dropout",
    "BatchNorm1d",
    "BatchNorm2d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "Identity",
    "Sequential",
    "Residual",
    "Concat",
    "build_layer",
    "layer_spec",
    "LAYER_TYPES",
]
