"""Building the small class-balanced sample shipped in ``numbaconv/data/sample/``.

Rebuild it from the full set with::

    python -c "from numbaconv.data.sample_builder import build_sample as b; \\
b('/usr/share/datasets/fashion-mnist', 'numbaconv/data/sample')"
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .fashion_mnist import CLASS_NAMES, FILES, load_dir
from .idx import write_idx


def build_sample(
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n_train: int = 3000,
    n_test: int = 1000,
    seed: int = 0,
) -> Path:
    """Write a class-balanced subset of the set in ``source_dir`` to ``out_dir`` as IDX ``.gz``.

    Each split gets ``n // 10`` images of every class, drawn without replacement by
    ``np.random.default_rng(seed)`` and then shuffled, so the output depends only on the
    source data and the arguments. ``n_train`` and ``n_test`` must be multiples of 10.
    Returns ``out_dir``.
    """
    n_classes = len(CLASS_NAMES)
    if n_train % n_classes or n_test % n_classes:
        raise ValueError(f"n_train and n_test must be multiples of {n_classes}")
    full = load_dir(source_dir)
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = getattr(full, f"{split}_images")
        labels = getattr(full, f"{split}_labels")
        picked = _balanced_indices(labels, n // n_classes, n_classes, rng)
        write_idx(out / f"{FILES[split + '_images']}.gz", images[picked])
        write_idx(out / f"{FILES[split + '_labels']}.gz", labels[picked].astype(np.uint8))
    return out


def _balanced_indices(
    labels: np.ndarray, per_class: int, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``per_class`` examples of each class, in shuffled order."""
    chosen = []
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return rng.permutation(np.concatenate(chosen))
