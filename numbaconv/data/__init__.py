"""Fashion-MNIST: finding, downloading, checking and loading the IDX files; your own data
(an ``.npz``, a folder of images): :mod:`numbaconv.data.own`.

>>> from numbaconv.data import load_fashion_mnist, as_float_batch
>>> ds = load_fashion_mnist()            # doctest: +SKIP
>>> x = as_float_batch(ds.train_images)  # doctest: +SKIP  float32 (60000, 1, 28, 28)
"""

from __future__ import annotations

import numpy as np

from .fashion_mnist import (
    CLASS_NAMES,
    SAMPLE_NOTICE,
    FashionMNIST,
    cache_dir,
    load_fashion_mnist,
)
from .idx import DataError
from .own import DataInfo, OwnData, data_kind, describe_data, load_own_data, read_image

__all__ = [
    "CLASS_NAMES",
    "SAMPLE_NOTICE",
    "DataError",
    "DataInfo",
    "FashionMNIST",
    "OwnData",
    "as_float_batch",
    "cache_dir",
    "load_fashion_mnist",
    "data_kind",
    "describe_data",
    "load_own_data",
    "read_image",
]


def as_float_batch(images: np.ndarray) -> np.ndarray:
    """``uint8 (N, H, W)`` images -> new ``float32 (N, 1, H, W)`` C-contiguous batch in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"as_float_batch needs uint8 (N, H, W), got {images.dtype} {images.shape}")
    batch = images[:, None, :, :].astype(np.float32)
    batch /= np.float32(255)
    return batch
