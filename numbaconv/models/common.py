"""What the D2L models share: D2L's weight initialisation over a whole tree, the dense head
AlexNet and VGG end with, and the ``width_divisor`` option that narrows a network."""

from __future__ import annotations

from ..init import xavier_uniform_weights_
from ..layers import Dropout, Layer, Linear, ReLU, Sequential
from ..shapes import as_int
from .sizes import check_input_size

__all__ = ["init_cnn", "with_dense_head", "as_width_divisor", "narrowed"]

#: The dense head's hidden width in AlexNet and VGG.
DENSE_HEAD_WIDTH = 4096


def as_width_divisor(width_divisor) -> int:
    """The chapter 7 models' ``width_divisor`` option, checked: an int, at least 1."""
    return as_int(width_divisor, "width_divisor", 1)


def narrowed(width: int, width_divisor: int) -> int:
    """A layer's ``width`` (channels or units) divided by ``width_divisor``, at least 1: the
    width a model built with ``width_divisor`` gives that layer (1: D2L's own width)."""
    return max(1, width // width_divisor)


def init_cnn(model: Layer, rng) -> Layer:
    """Xavier-uniform weights for every ``Conv2d`` and ``Linear`` of the tree, biases left at
    PyTorch's default: what D2L's ``train_ch6`` applies to each network before training
    (``net.apply(init_weights)`` reaches nested blocks too). Returns ``model``."""
    xavier_uniform_weights_((layer for _, layer in model.named_layers()), rng)
    return model


def with_dense_head(features: Sequential, name: str, in_channels: int, input_size: int,
                    num_classes: int, rng, width_divisor: int = 1) -> Sequential:
    """``features`` (ending in ``Flatten``) followed by AlexNet's and VGG's head: Linear 4096,
    ReLU, Dropout 0.5, Linear 4096, ReLU, Dropout 0.5, Linear ``num_classes`` (4096 divided
    by ``width_divisor``: :func:`narrowed`). The first Linear takes what ``features`` leave
    of an ``input_size`` image (PyTorch's ``LazyLinear``); a size they cannot take is a
    one-line error naming ``name``."""
    check_input_size(features, input_size, name, in_channels)
    flat = features.output_shape((1, in_channels, input_size, input_size))[1]
    hidden = narrowed(DENSE_HEAD_WIDTH, width_divisor)
    return Sequential(features.layers + [
        Linear(flat, hidden, rng=rng), ReLU(), Dropout(0.5, rng=rng),
        Linear(hidden, hidden, rng=rng), ReLU(), Dropout(0.5, rng=rng),
        Linear(hidden, num_classes, rng=rng),
    ])
