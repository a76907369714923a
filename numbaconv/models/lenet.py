"""LeNet-5 as "Dive into Deep Learning" builds it (section 6.6)."""

from __future__ import annotations

from ..init import as_generator, xavier_uniform_weights_
from ..layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, Sigmoid, Tanh

ACTIVATIONS = {"sigmoid": Sigmoid, "relu": ReLU, "tanh": Tanh}
POOLS = {"avg": AvgPool2d, "max": MaxPool2d}

#: D2L's training recipe for LeNet on Fashion-MNIST.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.9, "batch_size": 256, "epochs": 10}


def lenet(activation: str = "sigmoid", pool: str = "avg", num_classes: int = 10,
          rng=None, in_channels: int = 1) -> Sequential:
    """LeNet-5 for 1x28x28 images (``in_channels`` x 28 x 28): two conv/pool stages, then
    three dense layers.

    Conv in_channels->6 5x5 pad 2, act, pool 2x2; Conv 6->16 5x5, act, pool 2x2; Flatten; Linear
    400->120, act; Linear 120->84, act; Linear 84->num_classes. ``activation`` is ``sigmoid``
    (D2L's), ``relu`` or ``tanh``; ``pool`` is ``avg`` (D2L's) or ``max``. Conv and Linear
    weights are Xavier-uniform (D2L's ``init_cnn``); biases keep PyTorch's default.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
    rng = as_generator(rng)
    act, pool_layer = ACTIVATIONS[activation], POOLS[pool]
    model = Sequential([
        Conv2d(in_channels, 6, kernel_size=5, padding=2, rng=rng), act(), pool_layer(2, stride=2),
        Conv2d(6, 16, kernel_size=5, rng=rng), act(), pool_layer(2, stride=2),
        Flatten(),
        Linear(16 * 5 * 5, 120, rng=rng), act(),
        Linear(120, 84, rng=rng), act(),
        Linear(84, num_classes, rng=rng),
    ])
    xavier_uniform_weights_(model, rng)
    return model
