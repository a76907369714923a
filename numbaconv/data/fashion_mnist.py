"""Finding and loading Fashion-MNIST: explicit dir, ``$NUMBACONV_DATA``, user cache,
Debian's system copy, a download into the cache, and last the small sample shipped here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .download import DownloadError, download_fashion_mnist
from .idx import DataError, read_idx

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SHAPE = (28, 28)
# Field of FashionMNIST -> IDX file name without the optional ".gz".
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DATA_ENV = "NUMBACONV_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_SOURCE = "sample"
SAMPLE_NOTICE = (
    "Note: using the small Fashion-MNIST sample shipped with numbaconv "
    "(3000 training and 1000 test images), not the full 60000/10000 set. "
    "To get the full set: `apt-get install dataset-fashion-mnist`, pass --data DIR "
    "(a directory holding the four IDX files), or allow network access so it can be "
    "downloaded into the cache."
)


@dataclass(frozen=True)
class FashionMNIST:
    """The two splits: images ``uint8 (N, 28, 28)``, labels ``int64 (N,)`` in 0..9.

    ``source`` is the directory the files came from, or ``"sample"`` for the shipped sample.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    @property
    def is_sample(self) -> bool:
        """True when this is the small sample shipped in the package."""
        return self.source == SAMPLE_SOURCE


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/numbaconv/fashion-mnist``, or ``~/.cache/...`` when unset/relative."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "numbaconv" / "fashion-mnist"


def find_files(directory: str | os.PathLike[str]) -> dict[str, Path] | None:
    """Map each :data:`FILES` field to its file in ``directory`` (raw preferred over ``.gz``).

    Returns None unless all four are present.
    """
    directory = Path(directory)
    found = {}
    for field, stem in FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[field] = path
    return found


def load_dir(directory: str | os.PathLike[str], source: str | None = None) -> FashionMNIST:
    """Load and check the four IDX files in ``directory``.

    ``source`` defaults to the directory's absolute path. Raises :class:`DataError` naming
    the directory if a file is missing, or naming the file if it is corrupt, has the wrong
    shape, disagrees in count with its images, or holds a label outside 0..9.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory does not exist")
    paths = find_files(directory)
    if paths is None:
        names = ", ".join(f"{stem}[.gz]" for stem in FILES.values())
        raise DataError(f"{directory}: no complete Fashion-MNIST set (needs {names})")
    train_images, train_labels = _load_split(paths["train_images"], paths["train_labels"])
    test_images, test_labels = _load_split(paths["test_images"], paths["test_labels"])
    return FashionMNIST(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source=source or os.path.abspath(directory),
    )


def _load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{images_path}: images have shape {images.shape}, not (N, 28, 28)")
    labels = read_idx(labels_path)
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: labels have shape {labels.shape}, not (N,)")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images"
        )
    bad = np.flatnonzero(labels >= len(CLASS_NAMES))
    if bad.size:
        raise DataError(f"{labels_path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..9")
    return images, labels.astype(np.int64)


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    mirror: str | None = None,
    allow_sample: bool = True,
    progress: bool = True,
    system_dir: str | os.PathLike[str] | None = SYSTEM_DIR,
) -> FashionMNIST:
    """Load Fashion-MNIST from the first place that has it.

    1. ``data_dir`` if given: it must hold the files, else :class:`DataError` naming it;
    2. ``$NUMBACONV_DATA`` if set: likewise;
    3. the user cache, :func:`cache_dir`;
    4. ``system_dir`` (Debian's ``dataset-fashion-mnist``; None skips it);
    5. if ``download``: fetch from ``mirror`` (default ``$NUMBACONV_MIRROR``, else the
       public mirror) into the cache, size and SHA-256 checked and within the time limits
       of :func:`~numbaconv.data.download.download_fashion_mnist`, with a progress bar on
       stderr when ``progress``;
    6. if ``allow_sample`` and the download was impossible or not allowed: the shipped
       sample (``source == "sample"``; show :data:`SAMPLE_NOTICE` to the user).

    A downloaded file with a wrong size or checksum raises :class:`DataError` (it does not
    fall back to the sample), as does a corrupt or oversized file in any of the directories
    (see :func:`~numbaconv.data.idx.read_idx` for the size limit).
    """
    explicit = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    if explicit is not None:
        return load_dir(explicit)
    cache = cache_dir()
    for directory in (cache, system_dir):
        if directory is not None and find_files(directory) is not None:
            return load_dir(directory)
    failure = "download disabled"
    if download:
        try:
            return load_dir(download_fashion_mnist(cache, mirror, progress=progress))
        except DownloadError as exc:
            failure = str(exc)
    if allow_sample:
        return load_dir(SAMPLE_DIR, source=SAMPLE_SOURCE)
    tried = ", ".join(str(d) for d in (cache, system_dir) if d is not None)
    raise DataError(f"Fashion-MNIST not found (looked in {tried}; {failure})")
