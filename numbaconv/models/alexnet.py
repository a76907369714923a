"""AlexNet as "Dive into Deep Learning" builds it (section 7.1), for Fashion-MNIST."""

from __future__ import annotations

from ..init import as_generator
from ..layers import Conv2d, Flatten, MaxPool2d, ReLU, Sequential
from ..shapes import as_int
from .common import as_width_divisor, init_cnn, narrowed, with_dense_head

#: D2L's recipe: SGD, lr 0.01, batches of 128, 10 epochs, on images resized to 224x224.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.01, "batch_size": 128, "epochs": 10}
INPUT_SIZE = 224


def alexnet(num_classes: int = 10, in_channels: int = 1, input_size: int = INPUT_SIZE,
            width_divisor: int = 1, rng=None) -> Sequential:
    """D2L's AlexNet for ``(N, in_channels, input_size, input_size)`` images (D2L: 224).

    Conv 96 11x11 stride 4 pad 1, ReLU, max-pool 3 stride 2; Conv 256 5x5 pad 2, ReLU,
    max-pool 3/2; Conv 384, 384, 256 3x3 pad 1 with ReLUs; max-pool 3/2; Flatten; Linear 4096,
    ReLU, Dropout 0.5, Linear 4096, ReLU, Dropout 0.5, Linear ``num_classes``. The first
    Linear takes what the convolutions leave of an ``input_size`` image (256x5x5 = 6400 at
    224, D2L's size; PyTorch's ``LazyLinear``), so ``input_size`` must be at least 65.
    Conv and Linear weights are Xavier-uniform (D2L's ``init_cnn``).

    ``width_divisor`` divides every width above, convolution channels and the 4096 units
    (each at least 1; 96 -> 3 and 4096 -> 128 for 32): the same depth, kernels and strides,
    narrower, for quick runs such as the CUDA simulator's tests. 1, the default, is D2L's
    AlexNet.
    """
    num_classes = as_int(num_classes, "num_classes", 1)
    in_channels = as_int(in_channels, "in_channels", 1)
    width_divisor = as_width_divisor(width_divisor)
    rng = as_generator(rng)
    c96, c256, c384 = (narrowed(width, width_divisor) for width in (96, 256, 384))
    features = Sequential([
        Conv2d(in_channels, c96, kernel_size=11, stride=4, padding=1, rng=rng), ReLU(),
        MaxPool2d(kernel_size=3, stride=2),
        Conv2d(c96, c256, kernel_size=5, padding=2, rng=rng), ReLU(),
        MaxPool2d(kernel_size=3, stride=2),
        Conv2d(c256, c384, kernel_size=3, padding=1, rng=rng), ReLU(),
        Conv2d(c384, c384, kernel_size=3, padding=1, rng=rng), ReLU(),
        Conv2d(c384, c256, kernel_size=3, padding=1, rng=rng), ReLU(),
        MaxPool2d(kernel_size=3, stride=2),
        Flatten(),
    ])
    model = with_dense_head(features, "alexnet", in_channels, input_size, num_classes, rng,
                            width_divisor)
    return init_cnn(model, rng)
