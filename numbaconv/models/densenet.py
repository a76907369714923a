"""DenseNet as "Dive into Deep Learning" builds it (section 7.7), for Fashion-MNIST."""

from __future__ import annotations

from ..init import as_generator
from ..layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Concat,
    Conv2d,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from ..shapes import as_int
from .common import as_width_divisor, init_cnn, narrowed

#: D2L's recipe: SGD, lr 0.1, batches of 256, 10 epochs, on images resized to 96x96.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.1, "batch_size": 256, "epochs": 10}
INPUT_SIZE = 96

#: D2L's DenseNet: 64 channels after the stem, 4 dense blocks of 4 convolutions adding 32
#: channels each.
NUM_CHANNELS, GROWTH_RATE, ARCH = 64, 32, (4, 4, 4, 4)


def conv_block(in_channels: int, num_channels: int, rng) -> Sequential:
    """D2L's ``conv_block``: BatchNorm, ReLU, Conv 3x3 pad 1 ``num_channels``."""
    return Sequential(BatchNorm2d(in_channels), ReLU(),
                      Conv2d(in_channels, num_channels, kernel_size=3, padding=1, rng=rng))


def dense_block(num_convs: int, in_channels: int, num_channels: int, rng) -> Sequential:
    """D2L's ``DenseBlock``: each :func:`conv_block`'s output joined to its input along the
    channels (``Concat(Identity(), conv_block)``), ``num_convs`` times: ``in_channels +
    num_convs * num_channels`` out."""
    return Sequential([Concat(Identity(), conv_block(in_channels + i * num_channels,
                                                     num_channels, rng))
                       for i in range(num_convs)])


def transition_block(in_channels: int, num_channels: int, rng) -> Sequential:
    """D2L's ``transition_block``: BatchNorm, ReLU, Conv 1x1 ``num_channels``, avg-pool 2x2
    stride 2 (halves the size)."""
    return Sequential(BatchNorm2d(in_channels), ReLU(),
                      Conv2d(in_channels, num_channels, kernel_size=1, rng=rng),
                      AvgPool2d(kernel_size=2, stride=2))


def densenet(num_classes: int = 10, in_channels: int = 1, width_divisor: int = 1,
             rng=None) -> Sequential:
    """D2L's DenseNet for ``(N, in_channels, H, W)`` images of at least 29x29 (D2L: 96x96).

    b1: Conv 64 7x7 stride 2 pad 3, BatchNorm, ReLU, max-pool 3 stride 2 pad 1; four
    :func:`dense_block` s of 4 convolutions (growth 32) with a :func:`transition_block`
    halving the channels between them (64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248);
    BatchNorm, ReLU, global average pooling, Flatten, Linear 248 -> ``num_classes``. Conv and
    Linear weights are Xavier-uniform.

    ``width_divisor`` divides the stem's 64 channels and the growth rate 32 (each at least
    1; the transitions still halve): the same depth, kernels and strides, narrower, for
    quick runs such as the CUDA simulator's tests. 1, the default, is D2L's DenseNet.
    """
    num_classes = as_int(num_classes, "num_classes", 1)
    in_channels = as_int(in_channels, "in_channels", 1)
    width_divisor = as_width_divisor(width_divisor)
    rng = as_generator(rng)
    channels = narrowed(NUM_CHANNELS, width_divisor)
    growth_rate = narrowed(GROWTH_RATE, width_divisor)
    layers = [Sequential(
        Conv2d(in_channels, channels, kernel_size=7, stride=2, padding=3, rng=rng),
        BatchNorm2d(channels), ReLU(), MaxPool2d(kernel_size=3, stride=2, padding=1))]
    for i, num_convs in enumerate(ARCH):
        layers.append(dense_block(num_convs, channels, growth_rate, rng))
        channels += num_convs * growth_rate
        if i != len(ARCH) - 1:
            layers.append(transition_block(channels, channels // 2, rng))
            channels //= 2
    layers += [BatchNorm2d(channels), ReLU(), AdaptiveAvgPool2d((1, 1)), Flatten(),
               Linear(channels, num_classes, rng=rng)]
    return init_cnn(Sequential(layers), rng)
