"""VGG-11 as "Dive into Deep Learning" builds it (section 7.2), for Fashion-MNIST."""

from __future__ import annotations

from ..init import as_generator
from ..layers import Conv2d, Flatten, MaxPool2d, ReLU, Sequential
from ..shapes import as_int
from .common import as_width_divisor, init_cnn, narrowed, with_dense_head

#: D2L's recipe (for ``ratio=4``): SGD, lr 0.05, batches of 128, 10 epochs, 224x224 images.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.05, "batch_size": 128, "epochs": 10}
INPUT_SIZE = 224

#: VGG-11's convolutional part: (number of 3x3 convolutions, output channels) per block.
VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(num_convs: int, in_channels: int, out_channels: int, rng) -> Sequential:
    """``num_convs`` times (Conv 3x3 pad 1, ReLU), then max-pool 2x2 stride 2 (D2L's
    ``vgg_block``): halves the height and width."""
    layers = []
    for _ in range(num_convs):
        layers += [Conv2d(in_channels, out_channels, kernel_size=3, padding=1, rng=rng), ReLU()]
        in_channels = out_channels
    return Sequential(layers + [MaxPool2d(kernel_size=2, stride=2)])


def vgg11(ratio: int = 4, num_classes: int = 10, in_channels: int = 1,
          input_size: int = INPUT_SIZE, width_divisor: int = 1, rng=None) -> Sequential:
    """D2L's VGG-11, its channels divided by ``ratio`` (D2L: 4), for images of ``input_size``.

    ``ratio=1`` is VGG-11 itself; the images are ``(N, in_channels, input_size, input_size)``
    (D2L: 224).

    Five :func:`vgg_block` s (1, 1, 2, 2, 2 convolutions of 64, 128, 256, 512, 512 channels
    // ``ratio``); Flatten; Linear 4096, ReLU, Dropout 0.5, Linear 4096, ReLU, Dropout 0.5,
    Linear ``num_classes``. The first Linear takes what the blocks leave of an
    ``input_size`` image (x7x7 at 224, D2L's size; PyTorch's ``LazyLinear``), so
    ``input_size`` must be at least 32. Conv and Linear weights are Xavier-uniform.

    ``width_divisor`` narrows the whole network further, for quick runs such as the CUDA
    simulator's tests: the convolutions' channels (after ``ratio``) and the 4096 units are
    divided by it (each at least 1), depth, kernels and strides unchanged. 1, the default,
    leaves D2L's network.
    """
    ratio = as_int(ratio, "ratio", 1)
    if ratio > 64:
        raise ValueError(f"ratio must be at most 64 (64 // ratio channels in the first block), "
                         f"got {ratio}")
    num_classes = as_int(num_classes, "num_classes", 1)
    in_channels = as_int(in_channels, "in_channels", 1)
    width_divisor = as_width_divisor(width_divisor)
    rng = as_generator(rng)
    blocks, channels = [], in_channels
    for num_convs, out_channels in VGG11_ARCH:
        out_channels = narrowed(out_channels // ratio, width_divisor)
        blocks.append(vgg_block(num_convs, channels, out_channels, rng))
        channels = out_channels
    features = Sequential(blocks + [Flatten()])
    model = with_dense_head(features, "vgg11", in_channels, input_size, num_classes, rng,
                            width_divisor)
    return init_cnn(model, rng)
