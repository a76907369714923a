"""Containers: models are trees of layers.

``Sequential`` runs its layers in order, ``Residual`` adds a body's output to a shortcut's
(ResNet), ``Concat`` joins branches' outputs along the channels (GoogLeNet's Inception,
DenseNet). Each is a :class:`~numbaconv.layers.base.Layer`, so they nest; the tree's
parameters are keyed by path (``"3.body.0.weight"``), as PyTorch's ``state_dict`` keys them.
Backward through a branch point sums the gradients of the input that several branches read.

A container is described by a *spec*, the plain data of a TOML file:
``{"type": "Sequential", "layers": [spec, ...]}``, ``{"type": "Residual", "body": [spec, ...],
"shortcut": [spec, ...]}``, ``{"type": "Concat", "branches": [[spec, ...], ...]}``; a list of
specs stands for a ``Sequential`` of them. :func:`layer_spec` and :func:`build_layer` convert
between a tree and its spec.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from .. import functional as F
from ..init import as_generator
from ..kernels.cpu.layout import is_pixel_major
from .base import Layer, ShapeError
from .fusion import ConvActPool, NormReLU, fusable, norm_relu_fusable

__all__ = ["Sequential", "Residual", "Concat", "CONTAINER_TYPES", "layer_spec", "build_layer",
           "SummaryRow", "summary", "format_summary", "MAX_DEPTH"]

#: How deeply containers may nest in a spec (a guard against crafted files).
MAX_DEPTH = 64


def _check_layer(layer, where) -> Layer:
    if not isinstance(layer, Layer):
        raise TypeError(f"{where} is a {type(layer).__name__}, not a numbaconv.layers.Layer")
    return layer


def _as_layer(value, where) -> Layer:
    """A Layer as is; a list of layers as a ``Sequential`` of them."""
    if isinstance(value, (list, tuple)):
        return Sequential(value)
    return _check_layer(value, where)


@contextlib.contextmanager
def _noted(pass_name: str, sequential, stage):
    """Add to an exception which pass of which layer(s) raised it (the note is built only
    then: this wraps every layer's every pass)."""
    try:
        yield
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"in {pass_name} of {sequential._where(stage)}")
        raise


def _child_shape(path: str, layer: Layer, shape: tuple) -> tuple:
    """``layer.output_shape(shape)``, a ShapeError naming the layer's path when it fails."""
    try:
        return tuple(int(s) for s in layer.output_shape(shape))
    except ShapeError as exc:
        if exc.index is not None:  # raised by a container below, which named the path
            raise ShapeError(f"layer {path}.{exc.args[0].removeprefix('layer ')}",
                             detail=exc.detail, index=exc.index) from None
        raise ShapeError(f"layer {path} ({type(layer).__name__}): {exc.detail}",
                         detail=exc.detail, index=int(path) if path.isdigit() else -1) from exc
    except ValueError as exc:
        raise ShapeError(f"layer {path} ({type(layer).__name__}): {exc}", detail=str(exc),
                         index=int(path) if path.isdigit() else -1) from exc


class Stage(NamedTuple):
    """One step of :meth:`Sequential.stages`: ``layers[start:stop]``, run by ``fused`` (a
    :class:`~numbaconv.layers.fusion.ConvActPool` or
    :class:`~numbaconv.layers.fusion.NormReLU`) or, when it is ``None``, by the one layer."""

    start: int
    stop: int
    fused: ConvActPool | NormReLU | None


class Sequential(Layer):
    """Layers applied in order: ``Sequential([Conv2d(...), ReLU(), ...])`` or
    ``Sequential(Conv2d(...), ReLU(), ...)``.

    List-like (``len``, indexing, slicing to a new ``Sequential`` sharing the layers,
    iteration, ``append``). Its children are named ``"0"``, ``"1"``...

    With ``fuse=True`` (the default) the passes run ``Conv2d → Sigmoid|ReLU → pool`` and
    ``BatchNorm → ReLU`` as fused stages where they can (see :mod:`numbaconv.layers.fusion`
    and :meth:`stages`); the results are the same as with ``fuse=False``, only faster.
    """

    def __init__(self, *layers, fuse: bool = True):
        super().__init__()
        if len(layers) == 1 and not isinstance(layers[0], Layer) \
                and isinstance(layers[0], Iterable):
            layers = tuple(layers[0])
        self.layers: list[Layer] = [_check_layer(layer, f"layer {i}")
                                    for i, layer in enumerate(layers)]
        self.fuse = bool(fuse)
        # by start index; reused while the layers match
        self._fused: dict[int, ConvActPool | NormReLU] = {}
        self._last_stages: list[Stage] | None = None  # the stages of the last forward

    # list-like -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(self.layers[index], fuse=self.fuse)
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)

    def append(self, layer: Layer) -> Sequential:
        self.layers.append(_check_layer(layer, f"layer {len(self.layers)}"))
        return self

    def children(self) -> list[tuple[str, Layer]]:
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __repr__(self) -> str:
        return _tree_repr(self)

    # passes ----------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        """How :meth:`forward` runs the layers: one :class:`Stage` per layer, or per fused
        ``Conv2d → activation → pool`` triple or ``BatchNorm → ReLU`` pair when ``fuse`` is
        on."""
        stages, i, layers = [], 0, self.layers
        while i < len(layers):
            for size, kind, can_fuse in ((3, ConvActPool, fusable),
                                         (2, NormReLU, norm_relu_fusable)):
                group_layers = tuple(layers[i:i + size])
                if self.fuse and len(group_layers) == size and can_fuse(*group_layers):
                    group = self._fused.get(i)
                    if type(group) is not kind or group.layers != group_layers:
                        group = self._fused[i] = kind(*group_layers)
                    stages.append(Stage(i, i + size, group))
                    i += size
                    break
            else:
                stages.append(Stage(i, i + 1, None))
                i += 1
        return stages

    def _where(self, stage: Stage) -> str:
        names = ", ".join(type(layer).__name__ for layer in self.layers[stage.start:stage.stop])
        if stage.fused is None:
            return f"layer {stage.start} ({names})"
        return f"layers {stage.start}-{stage.stop - 1} ({names}; fused)"

    def forward(self, x, training: bool = False):
        """Run the layers' forward in order (each stage keeps what its backward needs)."""
        stages = self.stages()
        for stage in stages:
            with _noted("forward", self, stage):
                runner = stage.fused if stage.fused is not None else self.layers[stage.start]
                x = runner.forward(x, training=training)
        self._last_stages = stages
        return x

    def backward(self, grad_y, need_input_grad: bool = True):
        """Run every layer's backward in reverse; overwrites the layers' ``grads``.

        Returns the gradient at the input, or ``None`` with ``need_input_grad=False`` (a
        training step), which lets the first layer skip computing it.
        """
        # the stages of the last forward (its fused stages hold the state); else the layers'
        stages = self._last_stages if self._last_stages is not None else self.stages()
        for stage in reversed(stages):
            need = need_input_grad or stage.start > 0
            if stage.fused is not None and stage.fused.current():
                with _noted("backward", self, stage):
                    grad_y = stage.fused.backward(grad_y, need_input_grad=need)
                continue
            # the layers' own backwards (also for a fused stage whose layers ran their own
            # forwards since: see ConvActPool.current)
            for i in range(stage.stop - 1, stage.start - 1, -1):
                with _noted("backward", self, Stage(i, i + 1, None)):
                    grad_y = self.layers[i].backward(
                        grad_y, need_input_grad=need_input_grad or i > 0)
        return grad_y if need_input_grad else None

    # shapes ----------------------------------------------------------------------------

    def output_shape(self, input_shape) -> tuple:
        """The output shape for ``input_shape``; ``ValueError`` names the failing layer by its
        path, e.g. ``layer 7 (Linear): expects 400 input features, got 256 from shape
        (1, 256)``."""
        shape = tuple(int(s) for s in input_shape)
        for name, layer in self.children():
            shape = _child_shape(name, layer, shape)
        return shape

    def receptive_field(self, field, jump):
        for _, layer in self.children():
            field, jump = _field_of(layer, field, jump)
        return field, jump

    def flops(self, input_shape) -> int:
        total, shape = 0, tuple(int(s) for s in input_shape)
        for name, layer in self.children():
            total += int(layer.flops(shape))
            shape = _child_shape(name, layer, shape)
        return total

    # configuration ---------------------------------------------------------------------

    def config(self) -> dict:
        """``{"layers": [spec, ...]}`` with each layer's :func:`layer_spec` (and ``"fuse":
        False`` when fusion is off)."""
        return {"layers": [layer_spec(layer) for layer in self.layers],
                **({} if self.fuse else {"fuse": False})}

    @classmethod
    def from_config(cls, config, layer_types: Mapping[str, type] | None = None,
                    rng=None) -> Sequential:
        """A freshly initialised ``Sequential`` from :meth:`config`'s output (or a plain list
        of layer specs). ``layer_types`` adds classes by name beyond the built-ins; ``rng``
        seeds every layer that takes an ``rng`` keyword."""
        if isinstance(config, Mapping):
            config = {"type": "Sequential", **config}
        return build_layer(config, layer_types, rng)


class Residual(Layer):
    """``body(x) + shortcut(x)``, with the identity as shortcut when it is ``None`` (ResNet's
    residual block; the activation after the sum is simply the next layer).

    ``body`` and ``shortcut`` are layers or lists of layers (made a ``Sequential``); their
    outputs must have the same shape. Children: ``"body"`` and ``"shortcut"``.
    """

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = _as_layer(body, "Residual's body")
        self.shortcut = None if shortcut is None else _as_layer(shortcut, "Residual's shortcut")

    def children(self) -> list[tuple[str, Layer]]:
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut else [])

    def __repr__(self) -> str:
        return _tree_repr(self)

    def forward(self, x, training: bool = False):
        y = self.body.forward(x, training=training)
        skip = x if self.shortcut is None else self.shortcut.forward(x, training=training)
        return F.add(y, skip)

    def backward(self, grad_y, need_input_grad: bool = True):
        grad_body = self.body.backward(grad_y, need_input_grad=need_input_grad)
        if self.shortcut is None:
            grad_skip = grad_y
        else:
            grad_skip = self.shortcut.backward(grad_y, need_input_grad=need_input_grad)
        return F.add(grad_body, grad_skip) if need_input_grad else None

    def output_shape(self, input_shape) -> tuple:
        shape = tuple(int(s) for s in input_shape)
        body = _child_shape("body", self.body, shape)
        skip = shape if self.shortcut is None else _child_shape("shortcut", self.shortcut, shape)
        if body != skip:
            what = "the input" if self.shortcut is None else "the shortcut's output"
            raise self.shape_error(f"the body's output {body} cannot be added to {what} {skip}"
                                   + (" (give it a shortcut, e.g. a 1x1 Conv2d)"
                                      if self.shortcut is None else ""))
        return body

    def receptive_field(self, field, jump):
        fields = [_field_of(self.body, field, jump)]
        if self.shortcut is not None:
            fields.append(_field_of(self.shortcut, field, jump))
        return _widest(fields)

    def flops(self, input_shape) -> int:
        out = self.output_shape(input_shape)
        extra = 0 if self.shortcut is None else self.shortcut.flops(input_shape)
        return int(self.body.flops(input_shape)) + int(extra) + int(np.prod(out))

    def config(self) -> dict:
        return {"body": _branch_spec(self.body),
                **({"shortcut": _branch_spec(self.shortcut)} if self.shortcut else {})}


class Concat(Layer):
    """The branches' outputs joined along the channels, as ``torch.cat(outputs, dim=1)``.

    GoogLeNet's Inception block; DenseNet with an ``Identity`` branch.

    Each branch is a layer or a list of layers (made a ``Sequential``); their outputs must
    agree on every axis but the channels. Children: ``"0"``, ``"1"``...
    """

    def __init__(self, *branches):
        super().__init__()
        if len(branches) == 1 and isinstance(branches[0], (list, tuple)) \
                and all(isinstance(b, (Layer, list, tuple)) for b in branches[0]) \
                and not all(isinstance(b, Layer) for b in branches[0]):
            branches = tuple(branches[0])  # Concat([[...], [...]]): a list of branches
        if not branches:
            raise ValueError("Concat needs at least one branch")
        self.branches = [_as_layer(b, f"Concat's branch {i}") for i, b in enumerate(branches)]
        self._channels: list[int] | None = None  # each branch's output channels, last forward

    def children(self) -> list[tuple[str, Layer]]:
        return [(str(i), branch) for i, branch in enumerate(self.branches)]

    def __repr__(self) -> str:
        return _tree_repr(self)

    def forward(self, x, training: bool = False):
        outputs = [branch.forward(x, training=training) for branch in self.branches]
        self._channels = [int(y.shape[1]) for y in outputs]
        return F.concat_channels(outputs)

    def backward(self, grad_y, need_input_grad: bool = True):
        channels = self.require_forward(self._channels)
        grad_x = None
        for branch, grad in zip(self.branches, F.split_channels(grad_y, channels)):
            grad = branch.backward(_contiguous(grad), need_input_grad=need_input_grad)
            if need_input_grad:
                grad_x = grad if grad_x is None else F.add(grad_x, grad)
        return grad_x

    def output_shape(self, input_shape) -> tuple:
        shape = tuple(int(s) for s in input_shape)
        outs = [_child_shape(name, b, shape) for name, b in self.children()]
        first = outs[0]
        for i, out in enumerate(outs[1:], start=1):
            if len(out) < 2 or len(out) != len(first) or out[:1] + out[2:] != first[:1] + first[2:]:
                raise self.shape_error(f"branch {i}'s output {out} cannot be joined with branch "
                                       f"0's {first} along the channels")
        return first[:1] + (sum(out[1] for out in outs),) + first[2:]

    def receptive_field(self, field, jump):
        return _widest([_field_of(b, field, jump) for b in self.branches])

    def flops(self, input_shape) -> int:
        return int(sum(b.flops(input_shape) for b in self.branches))

    def config(self) -> dict:
        return {"branches": [_branch_spec(b) for b in self.branches]}


def _contiguous(array):
    """A branch's part of the gradient, C-contiguous or pixel-major (as
    :func:`numbaconv.functional.split_channels` copies it: kept)."""
    if not isinstance(array, np.ndarray) or is_pixel_major(array):
        return array
    return np.ascontiguousarray(array)


#: The containers by name, as specs write them.
CONTAINER_TYPES: dict[str, type[Layer]] = {cls.__name__: cls
                                           for cls in (Sequential, Residual, Concat)}


# --------------------------------------------------------------------------- receptive fields

def _field_of(layer: Layer, field, jump):
    """The receptive field and jump (per spatial axis) after ``layer``, from those before it.

    A layer with kernel ``k`` and dilation ``d`` widens the field by ``d*(k-1)`` times the jump
    (the product of the strides before it); containers compose their children."""
    own = getattr(layer, "receptive_field", None)
    if own is not None:
        return own(field, jump)
    kernel, stride, dilation = (_pair(v) for v in layer.geometry)
    field = tuple(f + dl * (k - 1) * j for f, k, dl, j in zip(field, kernel, dilation, jump))
    jump = tuple(j * s for j, s in zip(jump, stride))
    return field, jump


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if np.ndim(value) == 0 else tuple(int(v) for v in value)


def _widest(fields):
    return (tuple(max(f[0][a] for f in fields) for a in range(2)),
            tuple(max(f[1][a] for f in fields) for a in range(2)))


# --------------------------------------------------------------------------- specs

def layer_spec(layer: Layer) -> dict:
    """``{"type": class name, **layer.config()}``: what a TOML spec or a checkpoint holds."""
    return {"type": type(layer).__name__, **layer.config()}


def _branch_spec(layer: Layer):
    """A branch as a spec: a plain list for a ``Sequential`` (as specs write bodies)."""
    if type(layer) is Sequential and layer.fuse:
        return [layer_spec(child) for child in layer.layers]
    return layer_spec(layer)


def _takes_rng(layer_cls) -> bool:
    try:
        return "rng" in inspect.signature(layer_cls).parameters
    except (TypeError, ValueError):
        return False


def build_layer(spec, layer_types: Mapping[str, type] | None = None, rng=None,
                path: str = "") -> Layer:
    """A freshly initialised layer tree from a spec (see the module docstring).

    ``layer_types`` maps type names to layer classes beyond the built-ins (the registry's);
    ``rng`` seeds every layer that takes an ``rng`` keyword, in the order of the spec.
    Errors are ``ValueError``/``TypeError`` naming the layer's path (``layer 3.body.0``).
    """
    from . import LAYER_TYPES

    types = {**LAYER_TYPES, **(layer_types or {})}
    return _build(spec, types, as_generator(rng), path, 0)


def _build(spec, types, rng, path: str, depth: int) -> Layer:
    where = f"layer {path}" if path else "the network"
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: containers nest more than {MAX_DEPTH} deep")
    if isinstance(spec, (list, tuple)):
        return Sequential([_build(item, types, rng, _join(path, i), depth + 1)
                           for i, item in enumerate(spec)])
    if not isinstance(spec, Mapping):
        raise TypeError(f"{where}: a layer is a table {{type = ...}} or a list of them, got "
                        f"{type(spec).__name__} {spec!r:.60}")
    kwargs = dict(spec)
    name = kwargs.pop("type", None)
    if name not in types:
        raise ValueError(f"{where}: unknown layer type {name!r}; known types are "
                         f"{', '.join(sorted(types))}")
    if name == "Sequential":
        layers = kwargs.pop("layers", None)
        if not isinstance(layers, (list, tuple)) or kwargs.keys() - {"fuse"}:
            raise ValueError(f"{where} (Sequential): needs 'layers = [...]' and nothing else "
                             f"but 'fuse', got {sorted(spec)}")
        return Sequential([_build(item, types, rng, _join(path, i), depth + 1)
                           for i, item in enumerate(layers)], **kwargs)
    if name == "Residual":
        if "body" not in kwargs or kwargs.keys() - {"body", "shortcut"}:
            raise ValueError(f"{where} (Residual): needs 'body' and an optional 'shortcut', "
                             f"got {sorted(kwargs)}")
        shortcut = kwargs.get("shortcut")
        return Residual(_build(kwargs["body"], types, rng, _join(path, "body"), depth + 1),
                        None if shortcut is None else
                        _build(shortcut, types, rng, _join(path, "shortcut"), depth + 1))
    if name == "Concat":
        branches = kwargs.get("branches")
        if not isinstance(branches, (list, tuple)) or not branches or kwargs.keys() - {"branches"}:
            raise ValueError(f"{where} (Concat): needs 'branches = [[...], [...]]', got "
                             f"{sorted(kwargs)}")
        return Concat(*[_build(b, types, rng, _join(path, i), depth + 1)
                        for i, b in enumerate(branches)])
    layer_cls = types[name]
    if _takes_rng(layer_cls) and "rng" not in kwargs:
        kwargs["rng"] = rng
    try:
        return layer_cls(**kwargs)
    except OverflowError as exc:  # an integer beyond what the layer's arrays can hold
        raise ValueError(f"{where} ({name}): {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where} ({name}): {exc}") from exc


def _join(path: str, name) -> str:
    return f"{path}.{name}" if path else str(name)


# --------------------------------------------------------------------------- repr and summary

def _tree_repr(layer: Layer, indent: str = "") -> str:
    children = layer.children()
    if not children:
        return repr(layer)
    inner = indent + "  "
    lines = [f"{inner}({name}): {_tree_repr(child, inner)}" for name, child in children]
    return f"{type(layer).__name__}(\n" + "\n".join(lines) + f"\n{indent})"


class SummaryRow(NamedTuple):
    """One layer of :func:`summary`: its path in the tree and depth, its output shape,
    parameters (a container's: all below it), receptive field and FLOPs."""

    path: str
    depth: int
    name: str
    output_shape: tuple
    n_params: int
    receptive_field: tuple[int, int] | None  # None when the input is not (N, C, H, W)
    flops: int


def summary(model: Layer, input_shape) -> list[SummaryRow]:
    """One :class:`SummaryRow` per layer of the tree (containers too, before their
    children), for an input of ``input_shape``.

    ``receptive_field`` is the ``(h, w)`` extent of the input that one output element of the
    layer sees (the widest over branches), and the whole input's ``(H, W)`` from the first
    layer with ``global_field`` on (``Linear``). ``None`` for non-image inputs. ``flops``
    counts a multiply-add as 2. Linear in the number of layers.
    """
    shape = tuple(int(s) for s in input_shape)
    rows: list[SummaryRow] = []
    whole = (shape[2], shape[3]) if len(shape) == 4 else None
    state = {"global": False}
    _summarise("", 0, model, shape, ((1, 1), (1, 1)), whole, state, rows)
    return rows


def _summarise(path, depth, layer, shape, field_jump, whole, state, rows):
    """Append the rows of ``layer`` and its children; return its output shape and the
    (field, jump) after it."""
    index = len(rows)
    rows.append(None)  # the layer's own row, written once its children's are
    children = layer.children()
    if isinstance(layer, Sequential):  # in order
        out, fj = shape, field_jump
        for name, child in children:
            out, fj = _summarise(_join(path, name), depth + 1, child, out, fj, whole, state,
                                 rows)
    else:  # a leaf, or branches that all read the input
        for name, child in children:
            _summarise(_join(path, name), depth + 1, child, shape, field_jump, whole, state,
                       rows)
        out = _child_shape(path or "0", layer, shape)
        fj = _field_of(layer, *field_jump)
    if whole is not None:
        state["global"] = state["global"] or bool(getattr(layer, "global_field", False))
    field = None if whole is None else (whole if state["global"] else fj[0])
    params = int(sum(p.size for p in layer.named_params().values()))
    rows[index] = SummaryRow(path, depth, type(layer).__name__, out, params, field,
                             int(layer.flops(shape)))
    return out, fj


def format_summary(rows: Iterable[SummaryRow]) -> str:
    """A text table of :func:`summary` rows (children indented under their container), with
    a totals line from the root."""
    rows = list(rows)
    header = ("Layer", "Name", "Output shape", "Params", "Receptive field", "FLOPs")
    table = [header]
    for r in rows:
        field = "-" if r.receptive_field is None else "x".join(map(str, r.receptive_field))
        table.append((r.path or "-", "  " * max(r.depth - 1, 0) + r.name if r.depth else r.name,
                      str(r.output_shape), f"{r.n_params:,}", field, f"{r.flops:,}"))
    root = rows[0]
    table.append(("", "Total", "", f"{root.n_params:,}", "", f"{root.flops:,}"))
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if c in (0, 1, 2, 4) else cell.rjust(w)
                       for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
