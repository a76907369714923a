"""A small Fashion-MNIST directory for engine tests, cut from the sample numbaconv ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from numbaconv.data.fashion_mnist import FILES, SAMPLE_DIR, load_dir
from numbaconv.data.idx import write_idx


def write_tiny_dataset(directory: Path, n_train: int = 512, n_test: int = 256) -> Path:
    """IDX files (raw, uncompressed) holding the first images of the shipped sample."""
    sample = load_dir(SAMPLE_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": sample.train_images[:n_train],
        "train_labels": sample.train_labels[:n_train].astype(np.uint8),
        "test_images": sample.test_images[:n_test],
        "test_labels": sample.test_labels[:n_test].astype(np.uint8),
    }
    for key, array in arrays.items():
        write_idx(directory / FILES[key], array)
    return directory
