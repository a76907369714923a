"""GoogLeNet as "Dive into Deep Learning" builds it (section 7.4), for Fashion-MNIST."""

from __future__ import annotations

from ..init import as_generator
from ..layers import (
    AdaptiveAvgPool2d,
    Concat,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from ..shapes import as_int
from .common import as_width_divisor, init_cnn, narrowed

#: D2L's recipe: SGD, lr 0.1, batches of 128, 10 epochs, on images resized to 96x96.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "epochs": 10}
INPUT_SIZE = 96


def inception(in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int,
              rng) -> Concat:
    """D2L's Inception block: four branches on the same input, joined along the channels
    (``c1 + c2[1] + c3[1] + c4`` out; height and width kept).

    0: Conv 1x1 ``c1``, ReLU. 1: Conv 1x1 ``c2[0]``, ReLU, Conv 3x3 pad 1 ``c2[1]``, ReLU.
    2: Conv 1x1 ``c3[0]``, ReLU, Conv 5x5 pad 2 ``c3[1]``, ReLU. 3: max-pool 3x3 stride 1
    pad 1, Conv 1x1 ``c4``, ReLU.
    """
    return Concat(
        [Conv2d(in_channels, c1, kernel_size=1, rng=rng), ReLU()],
        [Conv2d(in_channels, c2[0], kernel_size=1, rng=rng), ReLU(),
         Conv2d(c2[0], c2[1], kernel_size=3, padding=1, rng=rng), ReLU()],
        [Conv2d(in_channels, c3[0], kernel_size=1, rng=rng), ReLU(),
         Conv2d(c3[0], c3[1], kernel_size=5, padding=2, rng=rng), ReLU()],
        [MaxPool2d(kernel_size=3, stride=1, padding=1),
         Conv2d(in_channels, c4, kernel_size=1, rng=rng), ReLU()])


def googlenet(num_classes: int = 10, in_channels: int = 1, width_divisor: int = 1,
              rng=None) -> Sequential:
    """D2L's GoogLeNet for ``(N, in_channels, H, W)`` images of any size (D2L: 96x96).

    b1: Conv 64 7x7 stride 2 pad 3, ReLU, max-pool 3 stride 2 pad 1. b2: Conv 64 1x1, ReLU,
    Conv 192 3x3 pad 1, ReLU, max-pool 3/2/1. b3: two :func:`inception` blocks (256, 480
    channels), max-pool 3/2/1. b4: five (512, 512, 512, 528, 832), max-pool 3/2/1. b5: two
    (832, 1024), global average pooling, Flatten. Then Linear 1024 -> ``num_classes``.
    Conv and Linear weights are Xavier-uniform.

    ``width_divisor`` divides every convolution's channels, each branch's too (each at least
    1): the same depth, kernels and strides, narrower, for quick runs such as the CUDA
    simulator's tests. 1, the default, is D2L's GoogLeNet.
    """
    num_classes = as_int(num_classes, "num_classes", 1)
    in_channels = as_int(in_channels, "in_channels", 1)
    width_divisor = as_width_divisor(width_divisor)
    rng = as_generator(rng)

    def pool():
        return MaxPool2d(kernel_size=3, stride=2, padding=1)

    def width(channels):
        return narrowed(channels, width_divisor)

    channels = width(192)

    def block(c1, c2, c3, c4):
        """An :func:`inception` on the channels so far, its widths narrowed."""
        nonlocal channels
        c1, c2, c3, c4 = width(c1), tuple(map(width, c2)), tuple(map(width, c3)), width(c4)
        layer = inception(channels, c1, c2, c3, c4, rng)
        channels = c1 + c2[1] + c3[1] + c4
        return layer

    b1 = Sequential(Conv2d(in_channels, width(64), kernel_size=7, stride=2, padding=3,
                           rng=rng), ReLU(), pool())
    b2 = Sequential(Conv2d(width(64), width(64), kernel_size=1, rng=rng), ReLU(),
                    Conv2d(width(64), width(192), kernel_size=3, padding=1, rng=rng), ReLU(),
                    pool())
    b3 = Sequential(block(64, (96, 128), (16, 32), 32),
                    block(128, (128, 192), (32, 96), 64), pool())
    b4 = Sequential(block(192, (96, 208), (16, 48), 64),
                    block(160, (112, 224), (24, 64), 64),
                    block(128, (128, 256), (24, 64), 64),
                    block(112, (144, 288), (32, 64), 64),
                    block(256, (160, 320), (32, 128), 128), pool())
    b5 = Sequential(block(256, (160, 320), (32, 128), 128),
                    block(384, (192, 384), (48, 128), 128),
                    AdaptiveAvgPool2d((1, 1)), Flatten())
    model = Sequential(b1, b2, b3, b4, b5, Linear(channels, num_classes, rng=rng))
    return init_cnn(model, rng)
