"""``lenet-bn``: LeNet with batch normalization, as "Dive into Deep Learning" builds it
(section 8.5 of the second edition, 7.5 of the first)."""

from __future__ import annotations

from ..init import as_generator, xavier_uniform_weights_
from ..layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    Sequential,
    Sigmoid,
)

__all__ = ["TRAIN_DEFAULTS", "lenet_bn"]

#: D2L's recipe: ``BNLeNet(lr=0.1)`` with its default SGD, ``FashionMNIST(batch_size=128)``,
#: ``Trainer(max_epochs=10)``.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "epochs": 10}


def lenet_bn(num_classes: int = 10, rng=None) -> Sequential:
    """LeNet-5 with batch normalization after every convolution and hidden linear layer, for
    1x28x28 images.

    Conv 1->6 5x5, BatchNorm2d, sigmoid, avg-pool 2x2; Conv 6->16 5x5, BatchNorm2d, sigmoid,
    avg-pool 2x2; Flatten (16*4*4 = 256); Linear 256->120, BatchNorm1d, sigmoid; Linear
    120->84, BatchNorm1d, sigmoid; Linear 84->num_classes. No padding (28 -> 24 -> 12 -> 8
    -> 4). Conv and Linear weights are Xavier-uniform (D2L's ``init_cnn``); batch norm starts
    at scale 1, shift 0.
    """
    rng = as_generator(rng)
    model = Sequential([
        Conv2d(1, 6, kernel_size=5, rng=rng), BatchNorm2d(6), Sigmoid(),
        AvgPool2d(2, stride=2),
        Conv2d(6, 16, kernel_size=5, rng=rng), BatchNorm2d(16), Sigmoid(),
        AvgPool2d(2, stride=2),
        Flatten(),
        Linear(16 * 4 * 4, 120, rng=rng), BatchNorm1d(120), Sigmoid(),
        Linear(120, 84, rng=rng), BatchNorm1d(84), Sigmoid(),
        Linear(84, num_classes, rng=rng),
    ])
    xavier_uniform_weights_(model, rng)
    return model
