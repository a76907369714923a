"""ResNet-18 as "Dive into Deep Learning" builds it (section 7.6), for Fashion-MNIST."""

from __future__ import annotations

from ..init import as_generator
from ..layers import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
)
from ..shapes import as_int
from .common import as_width_divisor, init_cnn, narrowed

#: D2L's recipe: SGD, lr 0.05, batches of 256, 10 epochs, on images resized to 96x96.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.05, "batch_size": 256, "epochs": 10}
INPUT_SIZE = 96

#: ResNet-18's stages: (residual blocks, channels).
RESNET18_ARCH = ((2, 64), (2, 128), (2, 256), (2, 512))


def residual_block(in_channels: int, num_channels: int, use_1x1conv: bool = False,
                   stride: int = 1, rng=None) -> Sequential:
    """D2L's ``Residual``: ``relu(body(x) + shortcut(x))``.

    Body: Conv 3x3 pad 1 ``stride``, BatchNorm, ReLU, Conv 3x3 pad 1, BatchNorm (all
    ``num_channels``). Shortcut: the input itself, or with ``use_1x1conv`` a 1x1 Conv with
    ``stride`` (where the channels or the size change). A ``Sequential`` of the
    :class:`~numbaconv.layers.Residual` and the ReLU after the sum.
    """
    body = [Conv2d(in_channels, num_channels, kernel_size=3, padding=1, stride=stride, rng=rng),
            BatchNorm2d(num_channels), ReLU(),
            Conv2d(num_channels, num_channels, kernel_size=3, padding=1, rng=rng),
            BatchNorm2d(num_channels)]
    shortcut = Conv2d(in_channels, num_channels, kernel_size=1, stride=stride, rng=rng) \
        if use_1x1conv else None
    return Sequential(Residual(body, shortcut), ReLU())


def resnet_stage(in_channels: int, num_channels: int, num_residuals: int,
                 first_block: bool, rng) -> Sequential:
    """D2L's ``resnet_block``: ``num_residuals`` blocks; the first halves the size and widens
    to ``num_channels`` through a 1x1 shortcut, except in the first stage."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(residual_block(in_channels, num_channels, use_1x1conv=True, stride=2,
                                         rng=rng))
        else:
            blocks.append(residual_block(num_channels, num_channels, rng=rng))
    return Sequential(blocks)


def resnet18(num_classes: int = 10, in_channels: int = 1, width_divisor: int = 1,
             rng=None) -> Sequential:
    """D2L's ResNet-18 for ``(N, in_channels, H, W)`` images of any size (D2L: 96x96).

    b1: Conv 64 7x7 stride 2 pad 3, BatchNorm, ReLU, max-pool 3 stride 2 pad 1; four stages of
    two :func:`residual_block` s (64, 128, 256, 512 channels; the last three start with a
    stride-2 block with a 1x1 shortcut); global average pooling; Flatten; Linear 512 ->
    ``num_classes``. Conv and Linear weights are Xavier-uniform.

    ``width_divisor`` divides the 64, 128, 256 and 512 channels (each at least 1): the same
    depth, kernels and strides, narrower, for quick runs such as the CUDA simulator's
    tests. 1, the default, is D2L's ResNet-18.
    """
    num_classes = as_int(num_classes, "num_classes", 1)
    in_channels = as_int(in_channels, "in_channels", 1)
    width_divisor = as_width_divisor(width_divisor)
    rng = as_generator(rng)
    channels = narrowed(64, width_divisor)
    b1 = Sequential(Conv2d(in_channels, channels, kernel_size=7, stride=2, padding=3, rng=rng),
                    BatchNorm2d(channels), ReLU(),
                    MaxPool2d(kernel_size=3, stride=2, padding=1))
    stages = []
    for i, (num_residuals, num_channels) in enumerate(RESNET18_ARCH):
        num_channels = narrowed(num_channels, width_divisor)
        stages.append(resnet_stage(channels, num_channels, num_residuals, i == 0, rng))
        channels = num_channels
    model = Sequential(b1, *stages, AdaptiveAvgPool2d((1, 1)), Flatten(),
                       Linear(channels, num_classes, rng=rng))
    return init_cnn(model, rng)
