"""``Sequential``: a stack of layers with a joint forward/backward and flattened parameters."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from .fusion import ConvActPool, fusable
from .init import as_generator
from .layers import LAYER_TYPES, Layer, ShapeError
from .shapes import receptive_fields

__all__ = ["Sequential", "Stage", "SummaryRow", "format_summary"]


class SummaryRow(NamedTuple):
    """One layer of :meth:`Sequential.summary`."""

    index: int
    name: str
    output_shape: tuple
    n_params: int
    receptive_field: tuple[int, int] | None  # None when the input is not (N, C, H, W)
    flops: int


_ACCEPTS: dict[tuple[type, str, str], bool] = {}


def _accepts(layer, method: str, keyword: str) -> bool:
    """Whether ``layer.<method>`` takes ``keyword`` (a plugin may write ``forward(self, x)``)."""
    key = (type(layer), method, keyword)
    accepts = _ACCEPTS.get(key)
    if accepts is None:
        try:
            parameters = inspect.signature(getattr(layer, method)).parameters
        except (TypeError, ValueError):
            accepts = keyword == "training"
        else:
            accepts = keyword in parameters or any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        _ACCEPTS[key] = accepts
    return accepts


def _check_layer(layer, position) -> Layer:
    if not isinstance(layer, Layer):
        raise TypeError(f"layer {position} is a {type(layer).__name__}, not a "
                        "numbaconv.layers.Layer")
    return layer


class Stage(NamedTuple):
    """One step of :meth:`Sequential.stages`: ``layers[start:stop]``, run by ``fused`` (a
    :class:`~numbaconv.fusion.ConvActPool`) or, when it is ``None``, by the one layer."""

    start: int
    stop: int
    fused: ConvActPool | None


@contextlib.contextmanager
def _noted(pass_name: str, stage: Stage, layers):
    """Add to an exception which pass of which layer(s) raised it."""
    try:
        yield
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python 3.11+
            names = ", ".join(type(layer).__name__ for layer in layers[stage.start:stage.stop])
            where = (f"layer {stage.start} ({names})" if stage.fused is None else
                     f"layers {stage.start}-{stage.stop - 1} ({names}; fused)")
            exc.add_note(f"in {pass_name} of {where}")
        raise


class Sequential:
    """Layers applied in order: ``Sequential([Conv2d(...), ReLU(), ...])`` or
    ``Sequential(Conv2d(...), ReLU(), ...)``.

    List-like (``len``, indexing, slicing to a new ``Sequential`` sharing the layers,
    iteration, ``append``). ``params()``/``grads()`` flatten the layers' dicts to
    ``{"<index>.<name>": array}`` holding the layers' own arrays, so an optimizer built on
    ``params()`` updates the model in place.

    With ``fuse=True`` (the default) the passes run ``Conv2d → Sigmoid|ReLU → pool`` as one
    fused stage where they can (see :mod:`numbaconv.fusion` and :meth:`stages`); the
    results are the same as with ``fuse=False``, only faster.
    """

    def __init__(self, *layers, fuse: bool = True):
        if len(layers) == 1 and not isinstance(layers[0], Layer) \
                and isinstance(layers[0], Iterable):
            layers = tuple(layers[0])
        self.layers: list[Layer] = [_check_layer(layer, i) for i, layer in enumerate(layers)]
        self.fuse = bool(fuse)
        self._fused: dict[int, ConvActPool] = {}  # by start index; reused while layers match
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
        self.layers.append(_check_layer(layer, len(self.layers)))
        return self

    def __repr__(self) -> str:
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)" if lines else "Sequential()"

    # passes ----------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        """How :meth:`forward` runs the layers: one :class:`Stage` per layer, or per fused
        ``Conv2d → activation → pool`` triple when ``fuse`` is on."""
        stages, i, layers = [], 0, self.layers
        while i < len(layers):
            if self.fuse and i + 3 <= len(layers) and fusable(*layers[i:i + 3]):
                group = self._fused.get(i)
                if group is None or group.layers != tuple(layers[i:i + 3]):
                    group = self._fused[i] = ConvActPool(*layers[i:i + 3])
                stages.append(Stage(i, i + 3, group))
                i += 3
            else:
                stages.append(Stage(i, i + 1, None))
                i += 1
        return stages

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Run the layers' forward in order (each stage keeps what its backward needs)."""
        stages = self.stages()
        for stage in stages:
            with _noted("forward", stage, self.layers):
                if stage.fused is not None:
                    x = stage.fused.forward(x, training=training)
                    continue
                layer = self.layers[stage.start]
                if _accepts(layer, "forward", "training"):
                    x = layer.forward(x, training=training)
                else:
                    x = layer.forward(x)
        self._last_stages = stages
        return x

    __call__ = forward

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Run every layer's backward in reverse; overwrites the layers' ``grads``.

        Returns the gradient at the network's input, or ``None`` with
        ``need_input_grad=False`` (a training step), which lets the first layer skip computing
        it when its ``backward`` takes a ``need_input_grad`` keyword (``Conv2d``, ``Linear``).
        """
        # the stages of the last forward (its fused stages hold the state); else the layers'
        stages = self._last_stages if self._last_stages is not None else self.stages()
        for stage in reversed(stages):
            if stage.fused is not None and stage.fused.current():
                with _noted("backward", stage, self.layers):
                    grad_y = stage.fused.backward(
                        grad_y, need_input_grad=need_input_grad or stage.start > 0)
                continue
            # the layers' own backwards (also for a fused stage whose layers ran their own
            # forwards since: see ConvActPool.current)
            for i in range(stage.stop - 1, stage.start - 1, -1):
                layer = self.layers[i]
                with _noted("backward", Stage(i, i + 1, None), self.layers):
                    if i == 0 and not need_input_grad \
                            and _accepts(layer, "backward", "need_input_grad"):
                        grad_y = layer.backward(grad_y, need_input_grad=False)
                    else:
                        grad_y = layer.backward(grad_y)
        return grad_y if need_input_grad else None

    # parameters ------------------------------------------------------------------------

    def params(self) -> dict[str, np.ndarray]:
        """``{"<index>.<name>": array}`` of every parameter (the layers' own arrays)."""
        return {f"{i}.{name}": p for i, layer in enumerate(self.layers)
                for name, p in layer.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        """Like :meth:`params` for the gradients of the last backward."""
        return {f"{i}.{name}": g for i, layer in enumerate(self.layers)
                for name, g in layer.grads.items()}

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params().values()))

    def buffers(self) -> dict[str, np.ndarray]:
        """``{"<index>.<name>": array}`` of every layer's non-trainable state (running stats)."""
        return {f"{i}.{name}": b for i, layer in enumerate(self.layers)
                for name, b in layer.buffers.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed like :meth:`params` (``np.savez``-able)."""
        return {name: p.copy() for name, p in {**self.params(), **self.buffers()}.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy ``state`` into the parameters and buffers in place (arrays keep their identity
        and dtype).

        Keys and shapes must match exactly; otherwise ``ValueError`` names every missing,
        unexpected and mis-shaped key, and nothing is changed.
        """
        targets = {**self.params(), **self.buffers()}
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for name, p in targets.items():
            if name in state and np.shape(state[name]) != p.shape:
                problems.append(f"{name!r} has shape {tuple(np.shape(state[name]))}, "
                                f"the model's is {p.shape}")
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for name, p in targets.items():
            np.copyto(p, np.asarray(state[name]), casting="same_kind")

    # shapes and summary ----------------------------------------------------------------

    @staticmethod
    def _layer_output_shape(index: int, layer: Layer, shape: tuple) -> tuple:
        try:
            return tuple(int(s) for s in layer.output_shape(shape))
        except ValueError as exc:
            detail = getattr(exc, "detail", None) or str(exc)
            raise ShapeError(f"layer {index} ({type(layer).__name__}): {detail}",
                             detail=detail, index=index) from exc

    def output_shape(self, input_shape) -> tuple:
        """The output shape for ``input_shape``; ``ValueError`` names the failing layer, e.g.
        ``layer 7 (Linear): expects 400 input features, got 256 from shape (1, 256)``."""
        shape = tuple(int(s) for s in input_shape)
        for i, layer in enumerate(self.layers):
            shape = self._layer_output_shape(i, layer, shape)
        return shape

    def summary(self, input_shape) -> list[SummaryRow]:
        """One :class:`SummaryRow` per layer for an input of ``input_shape``.

        ``receptive_field`` is the ``(h, w)`` extent of the input that one output element of
        the layer sees: from the layers' ``geometry``, and the whole input's ``(H, W)`` from the
        first layer with ``global_field`` on (``Linear``). ``None`` for non-image inputs.
        ``flops`` counts a multiply-add as 2.
        """
        shape = tuple(int(s) for s in input_shape)
        spatial = len(shape) == 4
        whole = (shape[2], shape[3]) if spatial else None
        geometries: list[tuple] = []
        is_global = False
        rows = []
        for i, layer in enumerate(self.layers):
            in_shape = shape
            shape = self._layer_output_shape(i, layer, shape)
            field = None
            if spatial:
                is_global = is_global or bool(getattr(layer, "global_field", False))
                if is_global:
                    field = whole
                else:
                    geometries.append(layer.geometry)
                    field = receptive_fields(geometries)[-1]
            rows.append(SummaryRow(i, type(layer).__name__, shape,
                                   int(sum(p.size for p in layer.params.values())), field,
                                   int(layer.flops(in_shape))))
        return rows

    # configuration ---------------------------------------------------------------------

    def config(self) -> list[dict]:
        """``[{"type": class name, **layer.config()}, ...]`` (JSON/TOML-able)."""
        return [{"type": type(layer).__name__, **layer.config()} for layer in self.layers]

    @classmethod
    def from_config(cls, config: Iterable[Mapping], layer_types: Mapping[str, type] | None = None,
                    rng=None) -> Sequential:
        """Build a freshly initialised ``Sequential`` from :meth:`config`'s output.

        ``layer_types`` adds (or overrides) classes by name beyond the built-ins; ``rng``
        seeds every layer that takes an ``rng`` keyword.
        """
        types = dict(LAYER_TYPES)
        if layer_types:
            types.update(layer_types)
        rng = as_generator(rng)
        layers = []
        for i, item in enumerate(config):
            kwargs = dict(item)
            name = kwargs.pop("type", None)
            if name not in types:
                raise ValueError(f"layer {i}: unknown layer type {name!r}; known types are "
                                 f"{sorted(types)}")
            layer_cls = types[name]
            try:
                takes_rng = "rng" in inspect.signature(layer_cls).parameters
            except (TypeError, ValueError):
                takes_rng = False
            if takes_rng and "rng" not in kwargs:
                kwargs["rng"] = rng
            try:
                layers.append(layer_cls(**kwargs))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"layer {i} ({name}): {exc}") from exc
        return cls(layers)


def format_summary(rows: Iterable[SummaryRow]) -> str:
    """A text table of :meth:`Sequential.summary` rows, with a totals line."""
    rows = list(rows)
    header = ("#", "Layer", "Output shape", "Params", "Receptive field", "FLOPs")
    table = [header]
    for r in rows:
        field = "-" if r.receptive_field is None else "x".join(map(str, r.receptive_field))
        table.append((str(r.index), r.name, str(r.output_shape), f"{r.n_params:,}", field,
                      f"{r.flops:,}"))
    table.append(("", "Total", "", f"{sum(r.n_params for r in rows):,}", "",
                  f"{sum(r.flops for r in rows):,}"))
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if c in (1, 2, 4) else cell.rjust(w)
                       for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
