"""What the D2L models share: D2L's weight initialisation over a whole tree, and the dense
head AlexNet and VGG end with."""

from __future__ import annotations

from ..init import xavier_uniform_weights_
from ..layers import Dropout, Layer, Linear, ReLU, Sequential
from .sizes import check_input_size

__all__ = ["init_cnn", "with_dense_head"]


def init_cnn(model: Layer, rng) -> Layer:
    """Xavier-uniform weights for every ``Conv2d`` and ``Linear`` of the tree, biases left at
    PyTorch's default: what D2L's ``train_ch6`` applies to each network before training
    (``net.apply(init_weights)`` reaches nested blocks too). Returns ``model``."""
    xavier_uniform_weights_((layer for _, layer in model.named_layers()), rng)
    return model


def with_dense_head(features: Sequential, name: str, in_channels: int, input_size: int,
                    num_classes: int, rng) -> Sequential:
    """``features`` (ending in ``Flatten``) followed by AlexNet's and VGG's head: Linear 4096,
    ReLU, Dropout 0.5, Linear 4096, ReLU, Dropout 0.5, Linear ``num_classes``. The first
    Linear takes what ``features`` leave of an ``input_size`` image (PyTorch's
    ``LazyLinear``); a size they cannot take is a one-line error naming ``name``."""
    check_input_size(features, input_size, name, in_channels)
    flat = features.output_shape((1, in_channels, input_size, input_size))[1]
    return Sequential(features.layers + [
        Linear(flat, 4096, rng=rng), ReLU(), Dropout(0.5, rng=rng),
        Linear(4096, 4096, rng=rng), ReLU(), Dropout(0.5, rng=rng),
        Linear(4096, num_classes, rng=rng),
    ])
