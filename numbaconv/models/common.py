"""What the D2L models share: D2L's weight initialisation over a whole tree."""

from __future__ import annotations

from ..init import xavier_uniform_weights_
from ..layers import Layer

__all__ = ["init_cnn"]


def init_cnn(model: Layer, rng) -> Layer:
    """Xavier-uniform weights for every ``Conv2d`` and ``Linear`` of the tree, biases left at
    PyTorch's default: what D2L's ``train_ch6`` applies to each network before training
    (``net.apply(init_weights)`` reaches nested blocks too). Returns ``model``."""
    xavier_uniform_weights_((layer for _, layer in model.named_layers()), rng)
    return model
