"""Checkpoints: a model's weights, its architecture, the optimizer state and the epoch, in one
``.npz`` file, written atomically so that a crash mid-write never destroys the previous one.

:func:`load` trusts nothing in the file: anything that is not what :func:`save` writes is a
:class:`CheckpointError` with one line saying what is wrong, never numpy's advice about
pickles or a traceback. The zip directory is checked before any entry is inflated: the
entries together may hold at most :data:`DEFAULT_MAX_BYTES` (or ``$NUMBACONV_MAX_CHECKPOINT_BYTES``)
and no large entry may inflate more than :data:`BOMB_RATIO` times, so a zip bomb of a few
megabytes that would inflate to gigabytes is refused at once.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_file

FORMAT = 1
_PARAM, _OPTIM, _META = "param/", "optim/", "meta"

#: environment variable that overrides :data:`DEFAULT_MAX_BYTES`
MAX_BYTES_ENV = "NUMBACONV_MAX_CHECKPOINT_BYTES"
#: most bytes a checkpoint's arrays may hold together, once inflated: 2 GiB is 500 million
#: float32 numbers, a model of some 170 million parameters with Adam's two buffers
DEFAULT_MAX_BYTES = 2 << 30
#: an entry over :data:`BOMB_MIN_BYTES` inflating more than this many times is refused
#: (``save`` stores entries uncompressed; ``np.savez_compressed`` of weights gains ~1.1x)
BOMB_RATIO = 200
BOMB_MIN_BYTES = 16 << 20

WHAT_IT_IS = ("a checkpoint is a .npz written by `numbaconv run --save`, holding the weights "
              "under param/ and a JSON 'meta' entry")


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, or does not fit the model at hand."""


@dataclass
class Checkpoint:
    """What a checkpoint holds. ``spec`` is the model's ``config()``: the architecture, a list
    of layer dicts (or a dict, for a tree of layers)."""

    spec: list | dict
    params: dict
    epoch: int = 0
    model: str | None = None
    options: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    #: the names of the model's outputs (its data's classes), ``None`` when not recorded
    #: (runs before they were: Fashion-MNIST's)
    classes: list | None = None
    #: one example's shape ``[C, H, W]`` as the data holds it (before ``--resize``), ``None``
    #: when not recorded (Fashion-MNIST's ``[1, 28, 28]``)
    input_shape: list | None = None


def save(path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` (a temporary file beside it, then an atomic rename).

    Raises :class:`CheckpointError`, writing nothing (an earlier checkpoint at ``path`` is
    kept), when the weights or the optimizer state hold NaN or inf, or when the checkpoint
    holds what :func:`load` would refuse.
    """
    shown = os.fspath(path)
    meta = {"format": FORMAT, "spec": checkpoint.spec, "epoch": checkpoint.epoch,
            "model": checkpoint.model, "options": checkpoint.options, "train": checkpoint.train,
            "history": checkpoint.history,
            "optimizer": {k: v for k, v in checkpoint.optimizer.items()
                          if not isinstance(v, np.ndarray)}}
    for key in ("classes", "input_shape"):  # only when known, so older readers see no change
        value = getattr(checkpoint, key)
        if value is not None:
            meta[key] = list(value) if isinstance(value, tuple) else value
    arrays = {_PARAM + k: np.asarray(v) for k, v in checkpoint.params.items()}
    arrays.update({_OPTIM + k: v for k, v in checkpoint.optimizer.items()
                   if isinstance(v, np.ndarray)})
    text = json.dumps(meta)
    problem = _meta_problem(json.loads(text)) or _dtype_problem(arrays)
    if problem:
        raise CheckpointError(f"not saving {shown}: {problem}")
    diverged = _non_finite(arrays)
    if diverged:
        raise CheckpointError(f"not saving {shown}: NaN or inf in the {diverged}, the run "
                              "diverged; an earlier checkpoint there is kept")
    arrays[_META] = np.array(text)
    os.makedirs(os.path.dirname(os.path.abspath(shown)), exist_ok=True)
    with atomic_file(shown) as out:
        np.savez(out, **arrays)


def load(path, max_bytes: int | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; :class:`CheckpointError` says what is wrong.

    ``max_bytes`` bounds the inflated size of all entries together (default: the
    ``NUMBACONV_MAX_CHECKPOINT_BYTES`` environment variable, else :data:`DEFAULT_MAX_BYTES`).
    """
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise CheckpointError(f"checkpoint {shown} does not exist")
    if not os.path.isfile(shown):
        raise _not_a_checkpoint(shown, "it is not a regular file")
    arrays = _read_arrays(shown, _max_bytes(max_bytes))
    meta = _read_meta(shown, arrays.pop(_META))
    problem = _meta_problem(meta) or _dtype_problem(arrays)
    if problem:
        raise CheckpointError(f"{shown}: {problem}")
    diverged = _non_finite(arrays)
    if diverged:
        raise CheckpointError(f"{shown} holds non-finite {diverged} (NaN or inf): the run that "
                              "saved it diverged")
    params = {k[len(_PARAM):]: v for k, v in arrays.items() if k.startswith(_PARAM)}
    optimizer = dict(meta.get("optimizer", {}))
    optimizer.update({k[len(_OPTIM):]: v for k, v in arrays.items() if k.startswith(_OPTIM)})
    return Checkpoint(spec=meta["spec"], params=params, epoch=meta.get("epoch", 0),
                      model=meta.get("model"), options=meta.get("options", {}),
                      optimizer=optimizer, train=meta.get("train", {}),
                      history=meta.get("history", []), classes=meta.get("classes"),
                      input_shape=meta.get("input_shape"))


def describe(spec_model: str | None, options: dict) -> str:
    """A short name for an architecture: ``lenet (activation=relu)`` or ``a TOML spec``."""
    if spec_model is None:
        return "a network from a TOML spec"
    opts = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{spec_model} ({opts})" if opts else spec_model


# --------------------------------------------------------------------------- reading


def _not_a_checkpoint(shown: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{shown} is not a numbaconv checkpoint ({reason}); {WHAT_IT_IS}")


def _max_bytes(max_bytes: int | None) -> int:
    if max_bytes is not None:
        return max_bytes
    text = os.environ.get(MAX_BYTES_ENV)
    if text is None:
        return DEFAULT_MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CheckpointError(f"{MAX_BYTES_ENV} must be a positive whole number of bytes, "
                              f"got {_short(text)}")
    return value


def _read_arrays(shown: str, limit: int) -> dict[str, np.ndarray]:
    """Every entry of the archive at ``shown``, by name without ``.npy``, checked for size and
    type before it is inflated."""
    try:
        file = open(shown, "rb")
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {shown}: {error.strerror}") from None
    with file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise CheckpointError(f"{shown} is {size:,} bytes, over the limit of {limit:,} "
                                  f"for a checkpoint (set {MAX_BYTES_ENV} to allow more)")
        try:
            if file.read(6) == b"\x93NUMPY":
                raise _not_a_checkpoint(shown, "it is a single .npy array")
            file.seek(0)
            try:
                archive = zipfile.ZipFile(file)
            except zipfile.BadZipFile:
                raise _not_a_checkpoint(shown, "it is not a .npz (zip) archive") from None
            with archive:
                entries = _check_directory(shown, archive.infolist(), size, limit)
                return {name: _read_entry(shown, archive, name, info)
                        for name, info in entries.items()}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError) as error:
            reason = _one_line(str(error) or type(error).__name__, 100)
            raise _not_a_checkpoint(shown, f"it is damaged: {reason}") from None


def _check_directory(shown: str, infos: list[zipfile.ZipInfo], size: int, limit: int
                     ) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by name, once their names, methods and sizes are acceptable
    (``size``: the archive's, in bytes)."""
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise _not_a_checkpoint(shown, f"its entry {_short(info.filename)} is not an array")
        name = info.filename[:-len(".npy")]
        if name in entries:
            raise _not_a_checkpoint(shown, f"its entry {_short(name)} appears twice")
        if info.flag_bits & 0x1:
            raise _not_a_checkpoint(shown, f"its entry {_short(name)} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _not_a_checkpoint(shown, f"its entry {_short(name)} uses compression method "
                                           f"{info.compress_type}, not numpy's")
        if info.file_size > BOMB_MIN_BYTES and info.file_size > BOMB_RATIO * info.compress_size:
            raise CheckpointError(f"{shown} is refused: its entry {_short(name)} would inflate "
                                  f"from {info.compress_size:,} to {info.file_size:,} bytes "
                                  f"(more than {BOMB_RATIO}x, a zip bomb)")
        entries[name] = info
    if sum(info.compress_size for info in entries.values()) > size:
        raise _not_a_checkpoint(shown, "it is damaged: its entries claim more bytes than it "
                                       "holds")
    total = sum(info.file_size for info in entries.values())
    if total > limit:
        raise CheckpointError(f"{shown} is refused: its entries would inflate to {total:,} "
                              f"bytes, over the limit of {limit:,} (set {MAX_BYTES_ENV} to "
                              "allow more)")
    if _META not in entries:
        raise _not_a_checkpoint(shown, "it has no 'meta' entry")
    for name in entries:
        if name != _META and not name.startswith((_PARAM, _OPTIM)):
            raise _not_a_checkpoint(shown, f"it has an unexpected entry {_short(name)}")
    return entries


def _read_entry(shown: str, archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo
                ) -> np.ndarray:
    """One ``.npy`` entry, once its header shows an allowed type and a size that matches the
    zip directory's (numpy would otherwise allocate what the header claims)."""
    with archive.open(info) as entry:
        version = np.lib.format.read_magic(entry)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(entry)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(entry)
        else:
            raise ValueError(f"entry {_short(name)} has .npy version {version}")
        data_bytes = info.file_size - entry.tell()
    if dtype.hasobject:
        raise _not_a_checkpoint(shown, f"its entry {_short(name)} holds Python objects")
    if name == _META:
        if dtype.kind != "U" or shape != ():
            raise _not_a_checkpoint(shown, f"its 'meta' entry is a {dtype} array, not text")
    elif dtype.kind not in "fiu":
        raise CheckpointError(f"{shown}: {_dtype_problem({name: np.empty(0, dtype)})}")
    if math.prod(shape) * dtype.itemsize != data_bytes:
        raise ValueError(f"entry {_short(name)} holds {data_bytes:,} bytes, its header "
                         f"claims {math.prod(shape) * dtype.itemsize:,}")
    with archive.open(info) as entry:
        return np.lib.format.read_array(entry, allow_pickle=False)


def _read_meta(shown: str, text: np.ndarray) -> dict:
    try:
        meta = json.loads(str(text[()]))
    except (ValueError, RecursionError):
        raise _not_a_checkpoint(shown, "its 'meta' entry is not JSON") from None
    if not isinstance(meta, dict):
        raise _not_a_checkpoint(shown, "its 'meta' entry is not a JSON object")
    if "format" not in meta:
        raise _not_a_checkpoint(shown, "its 'meta' entry names no format")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{shown} is a checkpoint of format {_short(meta['format'])}; "
                              f"this numbaconv reads format {FORMAT}")
    return meta


# --------------------------------------------------------------------------- checking

def _dtype_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """Which weight or optimizer buffer does not hold real numbers, or None."""
    for key, array in arrays.items():
        if array.dtype.kind not in "fiu":
            what = "weight" if key.startswith(_PARAM) else "optimizer state"
            return (f"{what} {_short(key[key.index('/') + 1:])} has dtype {array.dtype}; a "
                    "checkpoint holds real numbers only")
    return None


def _non_finite(arrays: dict[str, np.ndarray]) -> str | None:
    """``"weights"`` or ``"optimizer state"``, whichever first holds NaN or inf, or None."""
    for key, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return "weights" if key.startswith(_PARAM) else "optimizer state"
    return None


def _meta_problem(meta: dict) -> str | None:
    """What is wrong with a checkpoint's JSON metadata (``format`` aside), or None."""
    spec = meta.get("spec")
    if isinstance(spec, list):
        for position, layer in enumerate(spec):
            if not isinstance(layer, dict) or not isinstance(layer.get("type"), str):
                return (f"'spec' layer {position} must be an object with a 'type' name, got "
                        f"{_short(layer)}")
    elif not isinstance(spec, dict):
        return f"'spec' must be a list of layers or an object, got {_short(spec)}"
    checks = [
        ("epoch", _is_int(meta.get("epoch", 0), 0), "a whole number >= 0"),
        ("model", meta.get("model") is None or isinstance(meta.get("model"), str),
         "a name or null"),
        ("options", isinstance(meta.get("options", {}), dict), "an object"),
        ("train", isinstance(meta.get("train", {}), dict), "an object"),
        ("optimizer", isinstance(meta.get("optimizer", {}), dict), "an object"),
        ("history", isinstance(meta.get("history", []), list)
         and all(isinstance(h, dict) for h in meta.get("history", [])), "a list of objects"),
    ]
    for key, ok, expected in checks:
        if not ok:
            return f"'{key}' must be {expected}, got {_short(meta.get(key))}"
    return (_train_problem(meta.get("train", {})) or _optimizer_problem(meta.get("optimizer", {}))
            or _history_problem(meta.get("history", [])) or _classes_problem(meta.get("classes"))
            or _input_shape_problem(meta.get("input_shape")))


#: Most class names a checkpoint may hold, and the longest name.
MAX_CLASSES, MAX_CLASS_NAME = 100_000, 200


def _classes_problem(classes) -> str | None:
    if classes is None:
        return None
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES:
        return f"'classes' must be a list of 1 to {MAX_CLASSES:,} names, got {_short(classes)}"
    for position, name in enumerate(classes):
        if not isinstance(name, str) or not 0 < len(name) <= MAX_CLASS_NAME \
                or not name.isprintable():
            return (f"'classes' entry {position} must be a printable name of 1 to "
                    f"{MAX_CLASS_NAME} characters, got {_short(name)}")
    if len(set(classes)) != len(classes):
        return "'classes' names a class twice"
    return None


def _input_shape_problem(shape) -> str | None:
    if shape is None:
        return None
    if not isinstance(shape, list) or not 1 <= len(shape) <= 3 \
            or not all(_is_int(size, 1) and size <= 1 << 16 for size in shape):
        return f"'input_shape' must be 1 to 3 sizes from 1 to 65536, got {_short(shape)}"
    return None


def _train_problem(train: dict) -> str | None:
    from .training import OPTIMIZERS

    expected = {"batch_size": (lambda v: _is_int(v, 1), "a whole number >= 1"),
                "lr": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
                "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
                "seed": (lambda v: _is_int(v, 0), "a whole number >= 0"),
                "resize": (lambda v: v is None or _is_int(v, 1), "null or a whole number >= 1")}
    for key, value in train.items():
        if key not in expected:
            return (f"'train' holds an unknown setting {_short(key)}; known: "
                    f"{', '.join(expected)}")
        ok, what = expected[key]
        if not ok(value):
            return f"'train' setting '{key}' must be {what}, got {_short(value)}"
    return None


def _optimizer_problem(optimizer: dict) -> str | None:
    for key, value in optimizer.items():
        if key == "optimizer":
            ok, what = isinstance(value, str), "a name"
        elif key == "step":
            ok, what = _is_int(value, 0), "a whole number >= 0"
        else:
            ok, what = _is_number(value) or isinstance(value, bool), "a finite number"
        if not ok:
            return f"'optimizer' entry {_short(key)} must be {what}, got {_short(value)}"
    return None


def _history_problem(history: list) -> str | None:
    for position, entry in enumerate(history):
        for key, value in entry.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                return (f"'history' entry {position} has {_short(key)} = {_short(value)}, "
                        "not a number")
    return None


def _is_int(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _short(value) -> str:
    """``repr(value)`` cut to 40 characters (``repr`` keeps it on one line)."""
    return _one_line(repr(value), 40)


def _one_line(text: str, width: int) -> str:
    """``text`` with its whitespace runs made single spaces, cut to ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."
