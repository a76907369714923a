"""Your own data for ``--data``: an ``.npz`` in Keras' ``mnist.npz`` layout, or a folder of
images with one subfolder per class.

``.npz``
    ``x_train``, ``y_train``, ``x_test``, ``y_test``: images ``N x H x W`` (gray) or
    ``N x H x W x C`` (``C`` 1 or 3), ``uint8`` (scaled to [0, 1]) or float (used as they
    are); labels integers from 0. An optional ``class_names`` array of strings names the
    classes (else ``"0"``, ``"1"``...). Entries stored uncompressed (``np.savez``) are
    memory-mapped, so only the float32 copy the training loop needs is held in memory.
``folder/``
    ``train/`` and ``test/`` (or ``val/``), each with one subfolder per class holding PNG or
    JPEG files (``.png``, ``.jpg``, ``.jpeg``, any case; other files are ignored). The class
    names are the subfolders of ``train/``, sorted. Every image has the size of the others;
    the set is gray (one channel) when every image is, else colour (RGB; gray images
    repeated, alpha dropped). Images are decoded one at a time into the float32 batch.

:func:`describe_data` reads only what the shapes and classes need (headers, labels), so
that a run checks its network against the data before it loads it; :func:`load_own_data`
loads. A missing key, a label out of range, a corrupt or odd-sized image is a
:class:`~numbaconv.data.idx.DataError` naming the file.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fashion_mnist import CLASS_NAMES, IMAGE_SHAPE
from .idx import DataError

__all__ = ["DataInfo", "OwnData", "FASHION_MNIST", "NPZ_KEYS", "IMAGE_SUFFIXES",
           "data_kind", "describe_data", "load_own_data", "read_image"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Pillow modes read as one gray channel, and as colour (RGB).
GRAY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
_CHUNK = 4096  # images converted to float32 at a time
IMAGES_EXTRA = "pip install 'numbaconv[images]'"


@dataclass(frozen=True)
class DataInfo:
    """What a run must know of its data before loading it: one image's ``shape``
    ``(C, H, W)``, the class names, the kind (``"fashion-mnist"``, ``"npz"``,
    ``"images"``) and, for an image folder, its files (so that they are listed once)."""

    shape: tuple
    classes: tuple
    kind: str
    files: dict = field(default_factory=dict, repr=False, compare=False)


#: Fashion-MNIST (IDX files: MNIST and KMNIST are the same format).
FASHION_MNIST = DataInfo((1,) + IMAGE_SHAPE, CLASS_NAMES, "fashion-mnist")


@dataclass(frozen=True)
class OwnData:
    """A loaded set: float32 images ``(N, C, H, W)`` and int64 labels per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    classes: tuple


def data_kind(data) -> str:
    """``"npz"`` for a file, ``"images"`` for a folder with ``train/``, else
    ``"fashion-mnist"`` (no ``--data``, or a folder of IDX files)."""
    if data is None:
        return "fashion-mnist"
    path = Path(data)
    if path.is_file() or path.suffix.lower() == ".npz":
        return "npz"
    if (path / "train").is_dir():
        return "images"
    return "fashion-mnist"


def describe_data(data) -> DataInfo:
    """The shape and classes of ``data`` (a ``--data`` value) from headers and labels only;
    Fashion-MNIST's without reading anything."""
    kind = data_kind(data)
    if kind == "npz":
        return _describe_npz(Path(data))
    if kind == "images":
        return _describe_folder(Path(data))
    return FASHION_MNIST


def load_own_data(data, info: DataInfo | None = None) -> OwnData:
    """Load the ``.npz`` or image folder ``data`` (``info``: its :func:`describe_data`, when
    already known)."""
    info = info or describe_data(data)
    if info.kind == "npz":
        return _load_npz(Path(data), info)
    if info.kind == "images":
        return _load_folder(Path(data), info)
    raise DataError(f"{data}: neither an .npz file nor a folder with train/ and test/")


# --------------------------------------------------------------------------- .npz

def _npz_entries(path: Path) -> dict[str, zipfile.ZipInfo]:
    if not path.is_file():
        raise DataError(f"{path}: data file does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = {info.filename[:-4]: info for info in archive.infolist()
                       if info.filename.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path}: not an .npz archive ({error})") from None
    missing = [key for key in NPZ_KEYS if key not in entries]
    if missing:
        raise DataError(f"{path}: has no {', '.join(missing)}; an .npz needs "
                        f"{', '.join(NPZ_KEYS)} (Keras' mnist.npz layout)")
    return entries


def _npz_array(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo,
               header_only: bool = False):
    """An entry as an array (memory-mapped when stored uncompressed), or its ``(shape,
    dtype)`` with ``header_only``."""
    name = info.filename[:-4]
    try:
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            with open(path, "rb") as handle:
                handle.seek(info.header_offset)
                local = handle.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise ValueError("damaged zip entry")
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                handle.seek(info.header_offset + 30 + name_length + extra_length)
                shape, fortran, dtype = _npy_header(handle)
                offset = handle.tell()
            if header_only:
                return shape, dtype
            _check_dtype(path, name, dtype)
            if int(np.prod(shape)) * dtype.itemsize > info.file_size:
                raise ValueError("entry shorter than its header says")
            if int(np.prod(shape)) == 0:
                return np.empty(shape, dtype)
            return np.memmap(path, dtype, "r", offset, shape, "F" if fortran else "C")
        with archive.open(info) as handle:
            if header_only:
                shape, _, dtype = _npy_header(handle)
                return shape, dtype
            return np.lib.format.read_array(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: entry {name} cannot be read ({error})") from None


def _npy_header(handle) -> tuple:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


def _check_dtype(path: Path, name: str, dtype: np.dtype) -> None:
    if dtype.hasobject or dtype.kind not in "fiuU":
        raise DataError(f"{path}: {name} holds {dtype}, not numbers")


def _image_shape(path: Path, name: str, shape: tuple, dtype: np.dtype) -> tuple:
    """``(C, H, W)`` of the images of an ``N x H x W [x C]`` entry."""
    _check_dtype(path, name, dtype)
    if dtype.kind not in "uf" or (dtype.kind == "u" and dtype.itemsize != 1):
        raise DataError(f"{path}: {name} holds {dtype} images; numbaconv reads uint8 or float")
    if len(shape) == 3:
        return (1,) + tuple(shape[1:])
    if len(shape) == 4 and shape[3] in (1, 3):
        return (shape[3],) + tuple(shape[1:3])
    raise DataError(f"{path}: {name} has shape {shape}; images are N x H x W or "
                    "N x H x W x C with C 1 or 3")


def _describe_npz(path: Path) -> DataInfo:
    entries = _npz_entries(path)
    with zipfile.ZipFile(path) as archive:
        shapes = {key: _image_shape(path, key, *_npz_array(path, archive, entries[key], True))
                  for key in ("x_train", "x_test")}
        if shapes["x_train"] != shapes["x_test"]:
            raise DataError(f"{path}: x_train's images are {shapes['x_train']}, x_test's "
                            f"{shapes['x_test']}")
        labels = [_labels(path, key, np.asarray(_npz_array(path, archive, entries[key])))
                  for key in ("y_train", "y_test")]
        names = None
        if "class_names" in entries:
            names = np.asarray(_npz_array(path, archive, entries["class_names"]))
            if names.dtype.kind != "U" or names.ndim != 1 or len(set(names.tolist())) != \
                    len(names) or not all(names.tolist()):
                raise DataError(f"{path}: class_names must be distinct non-empty strings")
    largest = max(int(y.max(initial=0)) for y in labels)
    classes = tuple(names.tolist()) if names is not None else tuple(
        str(i) for i in range(largest + 1))
    if largest >= len(classes):
        raise DataError(f"{path}: label {largest} is beyond its {len(classes)} class_names")
    return DataInfo(shapes["x_train"], classes, "npz")


def _labels(path: Path, name: str, labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataError(f"{path}: {name} must be integer labels (N,), got {labels.dtype} "
                        f"{labels.shape}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: {name} holds the negative label {labels.min()}")
    return labels


def _load_npz(path: Path, info: DataInfo) -> OwnData:
    entries = _npz_entries(path)
    splits = {}
    with zipfile.ZipFile(path) as archive:
        for split in ("train", "test"):
            images = _npz_array(path, archive, entries[f"x_{split}"])
            labels = _labels(path, f"y_{split}",
                             np.asarray(_npz_array(path, archive, entries[f"y_{split}"])))
            if len(labels) != len(images):
                raise DataError(f"{path}: {len(labels)} labels in y_{split} but "
                                f"{len(images)} images in x_{split}")
            splits[split] = (_as_batch(images, info.shape), labels.astype(np.int64))
    return OwnData(*splits["train"], *splits["test"], source=os.path.abspath(path),
                   classes=info.classes)


def _as_batch(images: np.ndarray, shape: tuple) -> np.ndarray:
    """``N x H x W [x C]`` images as a new float32 ``(N, C, H, W)`` batch, a chunk at a time
    (a memory-mapped entry is read once, never held whole)."""
    batch = np.empty((len(images),) + tuple(shape), np.float32)
    scale = np.float32(255) if images.dtype == np.uint8 else None
    for start in range(0, len(images), _CHUNK):
        chunk = np.asarray(images[start:start + _CHUNK], dtype=np.float32)
        if chunk.ndim == 3:
            chunk = chunk[:, None]
        else:
            chunk = chunk.transpose(0, 3, 1, 2)
        if scale is not None:
            chunk /= scale
        batch[start:start + _CHUNK] = chunk
    return batch


# --------------------------------------------------------------------------- image folders

def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"image folders and files need Pillow: {IMAGES_EXTRA}") from None
    return Image


def _image_files(folder: Path) -> list[tuple[Path, str]]:
    return [(path, folder.name) for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.startswith(".")
            and path.suffix.lower() in IMAGE_SUFFIXES]


def _describe_folder(root: Path) -> DataInfo:
    train = root / "train"
    test = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if test is None:
        raise DataError(f"{root}: has train/ but neither test/ nor val/")
    classes = tuple(sorted(d.name for d in train.iterdir()
                           if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise DataError(f"{train}: holds no class folders (one subfolder per class)")
    files = {}
    for split in (train, test):
        found = []
        for folder in sorted(d for d in split.iterdir()
                             if d.is_dir() and not d.name.startswith(".")):
            if folder.name not in classes:
                raise DataError(f"{folder}: class {folder.name!r} is not among train/'s "
                                f"classes {', '.join(classes)}")
            images = _image_files(folder)
            if not images and split is train:
                raise DataError(f"{folder}: holds no PNG or JPEG images")
            found += images
        if not found:
            raise DataError(f"{split}: holds no PNG or JPEG images in class folders")
        files[split.name] = found
    size, colour = None, False
    image_module = _pillow()
    for path, _ in files["train"] + files[test.name]:
        with _opened(image_module, path) as image:
            colour = colour or _is_colour(path, image.mode)
            if size is None:
                size, first = image.size, path
            elif image.size != size:
                raise DataError(f"{path}: is {image.size[0]}x{image.size[1]} pixels, "
                                f"{first} is {size[0]}x{size[1]}; the images of a set "
                                "share one size (resize them first)")
    shape = (3 if colour else 1, size[1], size[0])
    return DataInfo(shape, classes, "images",
                    files={"train": files["train"], "test": files[test.name]})


class _opened:
    """``Image.open(path)`` whose errors name the file."""

    def __init__(self, image_module, path: Path):
        self.image_module, self.path, self.image = image_module, path, None

    def __enter__(self):
        try:
            self.image = self.image_module.open(self.path)
        except Exception as error:  # UnidentifiedImageError, OSError, DecompressionBombError
            raise _unreadable(self.path, error) from None
        return self.image

    def __exit__(self, *exc_info):
        self.image.close()


def _unreadable(path: Path, error: BaseException) -> DataError:
    reason = " ".join(str(error).split())[:120] or type(error).__name__
    return DataError(f"{path}: not a readable PNG or JPEG image ({reason})")


def _is_colour(path: Path, mode: str) -> bool:
    if mode in GRAY_MODES:
        return False
    if mode in COLOUR_MODES:
        return True
    raise DataError(f"{path}: has pixels of mode {mode} (16-bit or float); numbaconv reads "
                    "8-bit gray or colour images")


def _pixels(image_module, path: Path, channels: int) -> np.ndarray:
    """The image at ``path`` as float32 ``(channels, H, W)`` in [0, 1]."""
    with _opened(image_module, path) as image:
        _is_colour(path, image.mode)
        try:
            image.load()
            converted = image.convert("L" if channels == 1 else "RGB")
        except Exception as error:  # a truncated or corrupt file shows when decoded
            raise _unreadable(path, error) from None
        array = np.asarray(converted, dtype=np.float32) / np.float32(255)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _load_folder(root: Path, info: DataInfo) -> OwnData:
    image_module = _pillow()
    index = {name: i for i, name in enumerate(info.classes)}
    splits = []
    for split in ("train", "test"):
        files = info.files[split]
        images = np.empty((len(files),) + info.shape, np.float32)
        for i, (path, _) in enumerate(files):
            pixels = _pixels(image_module, path, info.shape[0])
            if pixels.shape != info.shape:
                raise DataError(f"{path}: is {pixels.shape[2]}x{pixels.shape[1]} pixels, the "
                                f"set's images are {info.shape[2]}x{info.shape[1]}")
            images[i] = pixels
        labels = np.array([index[name] for _, name in files], dtype=np.int64)
        splits += [images, labels]
    return OwnData(*splits, source=os.path.abspath(root), classes=info.classes)


def read_image(path, channels: int) -> np.ndarray:
    """One PNG or JPEG file as float32 ``(channels, H, W)`` in [0, 1] (gray for 1 channel,
    RGB for 3), at its own size."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file does not exist")
    return _pixels(_pillow(), path, channels)
