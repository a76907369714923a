"""What ``numbaconv run`` trains: a registered model with options, or a TOML spec of layers."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field

import numpy as np

from .layers import CONTAINER_TYPES, Layer, ShapeError, build_layer
from .models import smallest_input
from .registry import build_model, get_layers, get_model

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

INPUT_SHAPE = (1, 28, 28)  # Fashion-MNIST
NUM_CLASSES = 10


class SpecError(ValueError):
    """A TOML spec that cannot be read or does not describe a working network."""


@dataclass
class Network:
    """A built model and where it came from (recorded in checkpoints)."""

    model: Layer
    name: str | None  # registry name, None for a TOML spec
    options: dict = field(default_factory=dict)
    train_defaults: dict = field(default_factory=dict)
    source: str = ""


def parse_options(pairs) -> dict:
    """``["activation=relu", "width=2"]`` -> ``{"activation": "relu", "width": 2}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"option {pair!r} must look like KEY=VALUE")
        options[key.strip()] = _parse_value(value.strip())
    return options


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def build(target: str, options: dict, seed: int, data_shape=INPUT_SHAPE,
          num_classes: int = NUM_CLASSES, resize: int | None = None) -> Network:
    """A registered model name, the path of a ``.toml`` spec, or a checkpoint (``.npz``: its
    model and weights, to train further, e.g. one ``numbaconv import`` wrote); check its
    shapes with :func:`check_shapes` once the input size is known. A registered model whose
    factory takes ``in_channels`` or ``num_classes`` gets the data's (``data_shape[0]``,
    ``num_classes``) unless ``options`` set them. A model registered with an ``input_size``
    (D2L's recipe resizes the images to it) trains at that size by default (its
    ``train_defaults`` get ``resize``), and a factory that takes ``input_size`` is built for
    ``resize`` or that size."""
    rng = np.random.default_rng(seed)
    if target.endswith(".npz"):
        if options:
            raise SpecError("-o/--option sets a registered model's options; a checkpoint "
                            "holds its own model")
        model, saved = load_model(target)
        train = {k: v for k, v in saved.train.items() if k != "seed"}
        network = Network(model, saved.model, dict(saved.options), train, target)
    elif target.endswith(".toml") or os.path.sep in target:
        if options:
            raise SpecError("-o/--option sets a registered model's options; a TOML spec "
                            "holds its own settings")
        model, train = load_spec(target, rng)
        network = Network(model, None, {}, train, target)
    else:
        entry = get_model(target)
        kwargs = dict(options)
        accepted = inspect.signature(entry.factory).parameters
        if "rng" in accepted:
            kwargs["rng"] = rng  # seeded weights, for factories that take a generator
        side = resize if resize is not None else entry.input_size
        for key, value in (("in_channels", int(data_shape[0])), ("num_classes", num_classes),
                           ("input_size", side)):
            if key in accepted and key not in kwargs and value is not None:
                kwargs[key] = value  # the data's, or the size the images will have
        model = build_model(target, **kwargs)
        defaults = dict(entry.train_defaults)
        if entry.input_size is not None:
            defaults.setdefault("resize", entry.input_size)
        network = Network(model, target, dict(options), defaults, target)
    return network


#: What a spec's ``[train]`` table may set (the defaults of ``numbaconv run``'s options).
TRAIN_KEYS = ("optimizer", "lr", "batch_size", "epochs", "resize")


def load_spec(path: str, rng=None) -> tuple[Layer, dict]:
    """The network of a TOML file and its training settings.

    ``layers = [{type = "Conv2d", ...}, ...]`` (or ``[[layers]]`` tables) is a ``Sequential``
    of them; containers nest (see :mod:`numbaconv.layers.containers`). An optional ``[train]``
    table sets :data:`TRAIN_KEYS`, which ``numbaconv run``'s options still override.
    """
    try:
        with open(path, "rb") as handle:
            spec = tomllib.load(handle)
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except RecursionError:
        raise SpecError(f"cannot read spec {path}: it nests too deeply") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise SpecError(f"cannot read spec {path}: {error}") from error
    unknown = sorted(set(spec) - {"layers", "train"})
    if unknown:
        raise SpecError(f"spec {path}: unknown key {unknown[0]!r}; a spec holds 'layers' and "
                        "an optional [train] table")
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers or \
            not all(isinstance(item, dict) for item in layers):
        raise SpecError(f"spec {path} needs a non-empty array of tables "
                        "'layers = [{type = \"Conv2d\", ...}, ...]'")
    train = spec.get("train", {})
    if not isinstance(train, dict):
        raise SpecError(f"spec {path}: 'train' must be a table [train]")
    for key in train:
        if key not in TRAIN_KEYS:
            raise SpecError(f"spec {path}: [train] has unknown key {key!r}; it may set "
                            f"{', '.join(TRAIN_KEYS)}")
    return from_spec(layers, rng, path), dict(train)


def from_spec(layers, rng=None, source: str = "spec") -> Layer:
    """The layer tree of a spec: a list of ``{"type": registry name, **arguments}`` (a
    ``Sequential``) or one such table (:func:`numbaconv.layers.build_layer`)."""
    known = get_layers()
    try:
        return build_layer(layers, layer_types=known, rng=rng)
    except RecursionError:
        raise SpecError(f"{source}: the layers nest too deeply") from None
    except (TypeError, ValueError) as error:
        raise SpecError(f"{source}: {error}") from error


def input_shape(side: int | None = None, data_shape=INPUT_SHAPE) -> tuple:
    """One image's shape (C, H, W) in the data (Fashion-MNIST's by default), at ``side``
    pixels square if resized."""
    data_shape = tuple(int(s) for s in data_shape)
    return data_shape if side is None else (data_shape[0], side, side)


def check_shapes(model: Layer, source: str, side: int | None = None, data_shape=INPUT_SHAPE,
                 num_classes: int = NUM_CLASSES) -> None:
    """Fail before training when the layers do not fit the data's images (Fashion-MNIST's
    1x28x28 by default; ``side`` x ``side`` when resized) and its ``num_classes`` classes; a
    network that needs larger images says the smallest size that works (for ``--resize``)."""
    for name, value in model.named_params().items():
        if value.dtype != np.float32:
            raise SpecError(f"{source}: parameter {name} has dtype {value.dtype}; numbaconv "
                            "run trains in float32")
    shape = (1,) + input_shape(side, data_shape)
    try:
        out = model.output_shape(shape)
    except ShapeError as error:
        try:
            smallest = smallest_input(model, int(data_shape[0]))
        except ValueError:  # no square size fits
            smallest = None
        hint = "" if smallest is None or smallest <= shape[-1] else (
            f"; the smallest images it takes are {smallest}x{smallest} (--resize {smallest})")
        raise SpecError(f"{source}: {error}{hint}") from error
    if tuple(out) != (1, num_classes):
        data = "Fashion-MNIST" if tuple(data_shape) == INPUT_SHAPE and \
            num_classes == NUM_CLASSES else f"{num_classes} classes"
        raise SpecError(f"{source}: the network ends in shape {tuple(out)} for a "
                        f"{shape[1:]} input, but classifying {data} needs "
                        f"(N, {num_classes})")


def load_model(path) -> tuple[Layer, object]:
    """The model saved in checkpoint ``path``, weights loaded, and the checkpoint itself."""
    from .checkpoint import CheckpointError, load

    saved = load(path)
    try:
        model = from_spec(saved.spec, source=str(path))
        model.load_state_dict(saved.params)
    except ValueError as error:
        raise CheckpointError(f"{path} does not hold a usable model: {error}") from error
    return model, saved


def check_memory(model: Layer, batch_size: int, side: int | None = None,
                 data_shape=INPUT_SHAPE) -> None:
    """Fail before training when a batch's activations and their gradients (for every layer
    of the tree), the weights, their gradients and the optimizer's state would not fit in this
    machine's memory."""
    from .layers.containers import summary
    from .memory import array_bytes, check_fits

    leaves = [row for row in summary(model, (1,) + input_shape(side, data_shape))
              if row.name not in CONTAINER_TYPES]
    activations = sum(array_bytes(row.output_shape, 4) for row in leaves)
    weights = array_bytes((model.num_params(),), 4)
    check_fits(2 * batch_size * activations + 4 * weights,
               f"training this network with batches of {batch_size}")
