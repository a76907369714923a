"""Network in Network as "Dive into Deep Learning" builds it (section 7.3), for Fashion-MNIST."""

from __future__ import annotations

from ..init import as_generator
from ..layers import AdaptiveAvgPool2d, Conv2d, Dropout, Flatten, MaxPool2d, ReLU, Sequential
from ..shapes import as_int
from .common import as_width_divisor, init_cnn, narrowed

#: D2L's recipe: SGD, lr 0.1, batches of 128, 10 epochs, on images resized to 224x224.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "epochs": 10}
INPUT_SIZE = 224


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int,
              padding: int, rng) -> Sequential:
    """D2L's ``nin_block``: Conv ``kernel_size`` (``stride``, ``padding``), ReLU, then two
    1x1 Convs with ReLUs, all ``out_channels`` wide."""
    return Sequential(
        Conv2d(in_channels, out_channels, kernel_size, stride, padding, rng=rng), ReLU(),
        Conv2d(out_channels, out_channels, kernel_size=1, rng=rng), ReLU(),
        Conv2d(out_channels, out_channels, kernel_size=1, rng=rng), ReLU())


def nin(num_classes: int = 10, in_channels: int = 1, width_divisor: int = 1,
        rng=None) -> Sequential:
    """D2L's NiN for ``(N, in_channels, H, W)`` images of at least 67x67 (D2L: 224x224).

    NiN blocks of 96 (11x11 stride 4), 256 (5x5 pad 2) and 384 (3x3 pad 1) channels, each
    followed by max-pool 3 stride 2; Dropout 0.5; a NiN block of ``num_classes`` channels
    (3x3 pad 1); global average pooling; Flatten. No Linear layer: the last block's channels
    are the class scores. Conv weights are Xavier-uniform.

    ``width_divisor`` divides the 96, 256 and 384 channels (each at least 1; the last block
    keeps ``num_classes``): the same depth, kernels and strides, narrower, for quick runs
    such as the CUDA simulator's tests. 1, the default, is D2L's NiN.
    """
    num_classes = as_int(num_classes, "num_classes", 1)
    in_channels = as_int(in_channels, "in_channels", 1)
    width_divisor = as_width_divisor(width_divisor)
    rng = as_generator(rng)
    c96, c256, c384 = (narrowed(width, width_divisor) for width in (96, 256, 384))
    model = Sequential(
        nin_block(in_channels, c96, kernel_size=11, stride=4, padding=0, rng=rng),
        MaxPool2d(3, stride=2),
        nin_block(c96, c256, kernel_size=5, stride=1, padding=2, rng=rng),
        MaxPool2d(3, stride=2),
        nin_block(c256, c384, kernel_size=3, stride=1, padding=1, rng=rng),
        MaxPool2d(3, stride=2),
        Dropout(0.5, rng=rng),
        nin_block(c384, num_classes, kernel_size=3, stride=1, padding=1, rng=rng),
        AdaptiveAvgPool2d((1, 1)),
        Flatten())
    return init_cnn(model, rng)
