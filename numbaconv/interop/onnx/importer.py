"""An ONNX graph of the operators numbaconv has, read into a numbaconv layer tree.

The graph has one float input ``(N, C, H, W)`` (or ``(N, features)``) with fixed sizes but
the batch, and one output. Its nodes become layers:

=============================================  ================================================
ONNX                                           numbaconv
=============================================  ================================================
``Conv`` (2-D, any pads, groups, dilations)    ``Conv2d``
``MaxPool``, ``AveragePool``                   ``MaxPool2d``, ``AvgPool2d`` (symmetric pads)
``GlobalAveragePool``, ``GlobalMaxPool``       ``AdaptiveAvgPool2d(1)``/``AdaptiveMaxPool2d(1)``
``Gemm``; ``MatMul`` (+ ``Add`` of a bias)     ``Linear``
``Relu``, ``Sigmoid``, ``Tanh``                ``ReLU``, ``Sigmoid``, ``Tanh``
``Flatten``; ``Reshape`` to ``(N, features)``  ``Flatten``
``BatchNormalization`` (inference)             ``BatchNorm2d``/``BatchNorm1d`` (by the rank)
``Dropout``                                    ``Dropout`` (its ratio kept)
``Identity``                                   ``Identity`` (of a constant: that constant)
a fork joined by ``Add``                       ``Residual`` (body, shortcut)
a fork joined by ``Concat`` (channels)         ``Concat``
=============================================  ================================================

The tree is canonical: a ``Sequential`` at the root, every branch a ``Sequential``, so that a
numbaconv model exported and read back exports to the same graph. Operators of other kinds are
an :class:`OnnxImportError` naming the operator and the node, before anything is built; a graph
whose forks do not nest (a branch that reads another branch's inside) names the node where
they tangle.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from ...devices import copy_into
from ...layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Concat,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
    ShapeError,
    Sigmoid,
    Tanh,
)
from .common import CLASSES_KEY, MAX_OPSET, MIN_OPSET, require_onnx

__all__ = ["OnnxImportError", "Imported", "SUPPORTED", "read", "load", "from_onnx_model"]

#: The operators :func:`load` reads (default domain).
SUPPORTED = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Gemm",
             "MatMul", "Add", "Relu", "Sigmoid", "Tanh", "Flatten", "Reshape",
             "BatchNormalization", "Concat", "Dropout", "Identity")

_ACTIVATIONS = {"Relu": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh}


class OnnxImportError(ValueError):
    """An ONNX file numbaconv cannot read as a model (one line naming the node)."""


class Imported(NamedTuple):
    """What :func:`read` found: the model, one example's input shape (``(C, H, W)``), the
    class names stored by numbaconv's export (else ``None``) and the file's opset."""

    model: Sequential
    input_shape: tuple
    classes: list | None
    opset: int


def read(source) -> Imported:
    """The model in ``source`` (a path or an ``onnx.ModelProto``) with its input shape."""
    onnx = require_onnx()
    if isinstance(source, onnx.ModelProto):
        proto, shown = source, "the ONNX model"
    else:
        shown = os.fspath(source)
        if not os.path.isfile(shown):
            raise OnnxImportError(f"ONNX file {shown} does not exist")
        try:
            proto = onnx.load(shown)
        except Exception as error:  # protobuf's DecodeError and friends: not an ONNX file
            raise OnnxImportError(f"{shown} is not an ONNX model: "
                                  f"{_one_line(error)}") from None
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise OnnxImportError(f"{shown} is not a valid ONNX model: {_one_line(error)}") from None
    return _Reader(proto, shown).read()


def load(source) -> Sequential:
    """The numbaconv model (a ``Sequential``) of the ONNX file or ``ModelProto`` ``source``,
    weights loaded."""
    return read(source).model


def from_onnx_model(proto) -> Sequential:
    """:func:`load` of an in-memory ``onnx.ModelProto``."""
    return read(proto).model


def _one_line(error) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _Reader:
    """One graph being read: its constants, producers and consumers, and the shapes."""

    def __init__(self, proto, shown: str):
        onnx = require_onnx()
        self.onnx, self.proto, self.shown = onnx, proto, shown
        self.opset = _default_opset(proto, shown)
        graph = proto.graph
        self.constants: dict[str, np.ndarray] = {
            t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = []
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise OnnxImportError(f"{shown}: unsupported ONNX operator {node.domain}."
                                      f"{node.op_type} (node {_label(node)})")
            if node.op_type == "Constant":
                self.constants[node.output[0]] = self._constant_value(node)
            elif node.op_type == "Identity" and node.input[0] in self.constants:
                # PyTorch's exporter passes weights through Identity without constant folding
                self.constants[node.output[0]] = self.constants[node.input[0]]
            else:
                self.nodes.append(node)
        inputs = [v for v in graph.input if v.name not in self.constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise OnnxImportError(f"{shown} has {len(inputs)} inputs and {len(graph.output)} "
                                  "outputs; numbaconv reads models of one input and one output")
        self.input, self.output = inputs[0], graph.output[0].name
        self.producer = {out: node for node in self.nodes for out in node.output if out}
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in dict.fromkeys(self._data_inputs(node)):
                self.consumers.setdefault(name, []).append(node)
        self.order = {id(node): i for i, node in enumerate(self.nodes)}

    # ----------------------------------------------------------------- the graph

    def read(self) -> Imported:
        shape = (1,) + self._input_shape()
        region = self._ancestors(self.output) & self._descendants(self.input.name)
        if not region:
            raise OnnxImportError(f"{self.shown}: its output {self.output!r} does not depend "
                                  f"on its input {self.input.name!r}")
        for node in self.nodes:
            if id(node) in region and node.op_type not in SUPPORTED:
                raise OnnxImportError(f"{self.shown}: unsupported ONNX operator "
                                      f"{node.op_type} (node {_label(node)}); numbaconv reads "
                                      f"{', '.join(SUPPORTED)}")
        layers, out = self._chain(self.input.name, self.output, shape, region)
        model = Sequential(layers)
        declared = _declared_shape(self.proto.graph.output[0])
        if declared is not None and (len(declared) != len(out) or any(
                d is not None and d != o for d, o in zip(declared[1:], out[1:]))):
            shown = tuple("N" if d is None else d for d in declared)
            raise OnnxImportError(f"{self.shown}: its output is declared as {shown}, but its "
                                  f"nodes compute {('N',) + out[1:]}")
        return Imported(model, shape[1:], self._classes(), self.opset)

    def _input_shape(self) -> tuple:
        value = self.input
        tensor = value.type.tensor_type
        if tensor.elem_type != self.onnx.TensorProto.FLOAT:
            raise OnnxImportError(f"{self.shown}: input {value.name!r} is of type "
                                  f"{self.onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)}"
                                  "; numbaconv models take float32")
        dims = _declared_shape(value)
        if dims is None or len(dims) < 2:
            raise OnnxImportError(f"{self.shown}: input {value.name!r} needs a declared shape "
                                  "(N, C, H, W) or (N, features)")
        free = [axis for axis, d in enumerate(dims[1:], start=1) if d is None]
        if free:
            raise OnnxImportError(f"{self.shown}: input {value.name!r} has a free size on axis "
                                  f"{free[0]}; numbaconv needs every size but the batch's fixed")
        return tuple(dims[1:])

    def _classes(self) -> list | None:
        for prop in self.proto.metadata_props:
            if prop.key == CLASSES_KEY:
                try:
                    names = json.loads(prop.value)
                except ValueError:
                    names = None
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise OnnxImportError(f"{self.shown}: metadata {CLASSES_KEY} is not a JSON "
                                          "list of names")
                return names
        return None

    def _constant_value(self, node) -> np.ndarray:
        for attribute in node.attribute:
            if attribute.name == "value":
                return self.onnx.numpy_helper.to_array(attribute.t)
            if attribute.name in ("value_float", "value_int"):
                return np.array(self.onnx.helper.get_attribute_value(attribute))
            if attribute.name in ("value_floats", "value_ints"):
                return np.array(list(self.onnx.helper.get_attribute_value(attribute)))
        raise OnnxImportError(f"{self.shown}: Constant node {_label(node)} holds no tensor "
                              "numbaconv reads")

    def _data_inputs(self, node) -> list[str]:
        return [name for name in node.input if name and name not in self.constants]

    def _ancestors(self, tensor: str) -> set[int]:
        """The nodes ``tensor`` is computed from (ids)."""
        seen, stack = set(), [tensor]
        while stack:
            node = self.producer.get(stack.pop())
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                stack.extend(self._data_inputs(node))
        return seen

    def _descendants(self, tensor: str) -> set[int]:
        """The nodes that read ``tensor``, directly or not (ids)."""
        seen, stack = set(), [tensor]
        while stack:
            for node in self.consumers.get(stack.pop(), ()):
                if id(node) not in seen:
                    seen.add(id(node))
                    stack.extend(out for out in node.output if out)
        return seen

    def _users(self, tensor: str, region: set[int]) -> list:
        return [n for n in self.consumers.get(tensor, ()) if id(n) in region]

    def _chain(self, x: str, stop: str, shape: tuple, region: set[int]) -> tuple[list, tuple]:
        """The layers that compute tensor ``stop`` from tensor ``x`` (of ``shape``) through the
        nodes of ``region``, and ``stop``'s shape."""
        layers: list[Layer] = []
        while x != stop:
            users = self._users(x, region)
            if not users:
                raise OnnxImportError(f"{self.shown}: tensor {x!r} does not lead to "
                                      f"{stop!r}")
            node = users[0]
            if len(users) == 1 and self._data_inputs(node) == [x]:
                made, x = self._convert(node, x, shape, region)
            else:
                made, x = self._fork(x, shape, region)
            for layer in made:
                shape = self._shape_after(layer, shape, node)
                layers.append(layer)
        return layers, shape

    def _fork(self, x: str, shape: tuple, region: set[int]) -> tuple[list, str]:
        """The ``Residual`` or ``Concat`` of the paths that leave ``x`` and meet again."""
        join = self._meeting_point(x, region)
        parts = join.input if join.op_type == "Concat" else join.input[:2]
        branches = []
        for part in parts:
            if part in self.constants:
                raise OnnxImportError(f"{self.shown}: node {_label(join)} ({join.op_type}) "
                                      f"joins a branch with the constant {part!r}; numbaconv "
                                      "joins computed branches only")
            inside = region & (self._ancestors(part) - {id(join)})
            layers, _ = self._chain(x, part, shape, inside)
            branches.append(layers)
        if join.op_type == "Add":
            body, shortcut = branches
            if not body and shortcut:  # the identity is the shortcut, wherever it is
                body, shortcut = shortcut, body
            return [Residual(Sequential(body), Sequential(shortcut) if shortcut else None)], \
                join.output[0]
        if join.op_type == "Concat":
            axis = _attributes(join).get("axis")
            if axis not in (1, 1 - len(shape)):
                raise OnnxImportError(f"{self.shown}: node {_label(join)} (Concat) joins along "
                                      f"axis {axis}; numbaconv joins along the channels "
                                      "(axis 1)")
            return [Concat(*[Sequential(b) for b in branches])], join.output[0]
        raise OnnxImportError(f"{self.shown}: node {_label(join)} ({join.op_type}) joins "
                              "several paths; numbaconv joins them by Add (Residual) and "
                              "Concat only")

    def _meeting_point(self, x: str, region: set[int]):
        """The first node every path from ``x`` through ``region`` passes (the paths' join)."""
        below = [self.nodes[i] for i in sorted(self.order[n]
                                               for n in self._descendants(x) & region)]
        ends = {id(n) for n in below if not any(
            id(c) in region for out in n.output if out for c in self.consumers.get(out, ()))}
        for candidate in below:
            if len(self._data_inputs(candidate)) < 2:
                continue
            if not self._reachable(x, ends, region - {id(candidate)}):
                return candidate
        node = self._users(x, region)[0]
        raise OnnxImportError(f"{self.shown}: the paths leaving node {_label(node)} do not "
                              "meet in one Add or Concat; numbaconv models are trees of "
                              "Sequential, Residual and Concat")

    def _reachable(self, x: str, ends: set[int], region: set[int]) -> bool:
        seen, stack = set(), [x]
        while stack:
            for node in self._users(stack.pop(), region):
                if id(node) in ends:
                    return True
                if id(node) not in seen:
                    seen.add(id(node))
                    stack.extend(out for out in node.output if out)
        return False

    def _shape_after(self, layer: Layer, shape: tuple, node) -> tuple:
        try:
            return tuple(int(s) for s in layer.output_shape(shape))
        except ShapeError as error:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) does "
                                  f"not fit its input of shape {shape}: {error}") from None

    # ----------------------------------------------------------------- nodes

    def _convert(self, node, x: str, shape: tuple, region: set[int]) -> tuple[list, str]:
        """The layers (none or one) of ``node`` reading ``x`` of ``shape``, and the tensor
        after them."""
        op, attrs = node.op_type, _attributes(node)
        for out in node.output[1:]:
            if out and self.consumers.get(out):
                raise OnnxImportError(f"{self.shown}: node {_label(node)} ({op}): its output "
                                      f"{out!r} is read, numbaconv computes only the first")
        try:
            if op in _ACTIVATIONS:
                return [_ACTIVATIONS[op]()], node.output[0]
            if op == "Identity":
                return [Identity()], node.output[0]
            if op == "MatMul":
                return self._matmul(node, shape, region)
            if op == "Add":
                raise OnnxImportError(f"{self.shown}: node {_label(node)} (Add) adds a "
                                      "constant that no MatMul before it owns; numbaconv has "
                                      "no layer for that")
            converter = getattr(self, "_" + op.lower())
            return [converter(node, attrs, shape)], node.output[0]
        except (ValueError, TypeError) as error:
            if isinstance(error, OnnxImportError):
                raise
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({op}): "
                                  f"{_one_line(error)}") from None

    def _const(self, node, index: int, what: str) -> np.ndarray | None:
        """Input ``index`` of ``node`` as a constant, ``None`` when left out."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.constants:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}): its "
                                  f"{what} {name!r} is computed in the graph; numbaconv needs "
                                  "it stored as a constant")
        return self.constants[name]

    def _need(self, node, index: int, what: str) -> np.ndarray:
        value = self._const(node, index, what)
        if value is None:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) has no "
                                  f"{what}")
        return value

    def _check_rank(self, node, shape: tuple, rank: int, layout: str) -> None:
        if len(shape) != rank:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) reads a "
                                  f"{len(shape)}-D tensor of shape {shape}; numbaconv's layer "
                                  f"takes {layout}")

    def _pads(self, node, attrs: dict, shape: tuple, kernel, stride, dilation) -> tuple:
        """``((top, bottom), (left, right))`` from ``pads`` or ``auto_pad``."""
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if len(pads) != 4:
                raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) has "
                                      f"pads {pads}; numbaconv reads 2-D windows")
            return (pads[0], pads[2]), (pads[1], pads[3])
        if auto == "VALID":
            return (0, 0), (0, 0)
        sides = []
        for n, k, s, d in zip(shape[2:], kernel, stride, dilation):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            small, large = total // 2, total - total // 2
            sides.append((small, large) if auto == "SAME_UPPER" else (large, small))
        return tuple(sides)

    def _conv(self, node, attrs: dict, shape: tuple) -> Conv2d:
        self._check_rank(node, shape, 4, "(N, C, H, W)")
        weight = self._need(node, 1, "weight")
        bias = self._const(node, 2, "bias")
        if weight.ndim != 4:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (Conv) has a "
                                  f"{weight.ndim - 2}-D kernel; numbaconv's Conv2d is 2-D")
        kernel = tuple(attrs.get("kernel_shape", weight.shape[2:]))
        if kernel != weight.shape[2:]:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (Conv): kernel_shape "
                                  f"{kernel} is not its weight's {weight.shape[2:]}")
        stride = tuple(attrs.get("strides", (1, 1)))
        dilation = tuple(attrs.get("dilations", (1, 1)))
        groups = attrs.get("group", 1)
        sides = self._pads(node, attrs, shape, kernel, stride, dilation)
        symmetric = all(a == b for a, b in sides)
        layer = Conv2d(shape[1], weight.shape[0], kernel, stride,
                       (sides[0][0], sides[1][0]) if symmetric else sides, dilation, groups,
                       bias=bias is not None)
        _fill(layer.params, {"weight": weight, "bias": bias})
        return layer

    def _window(self, node, attrs: dict, shape: tuple, dilated: bool) -> dict:
        self._check_rank(node, shape, 4, "(N, C, H, W)")
        kernel = tuple(attrs["kernel_shape"]) if "kernel_shape" in attrs else None
        if kernel is None or len(kernel) != 2:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) needs a "
                                  "2-D kernel_shape")
        stride = tuple(attrs.get("strides", (1, 1)))
        dilation = tuple(attrs.get("dilations", (1, 1)))
        if not dilated and dilation != (1, 1):
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) has "
                                  f"dilations {list(dilation)}; numbaconv's AvgPool2d has "
                                  "none")
        sides = self._pads(node, attrs, shape, kernel, stride, dilation)
        if any(a != b for a, b in sides):
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) pads "
                                  f"unevenly {sides}; numbaconv's pools pad both sides alike")
        window = {"kernel_size": kernel, "stride": stride,
                  "padding": (sides[0][0], sides[1][0])}
        if dilated:
            window["dilation"] = dilation
        # square windows as one int, as specs (and PyTorch's pools) usually give them
        window = {key: pair[0] if pair[0] == pair[1] else pair for key, pair in window.items()}
        return {**window, "ceil_mode": bool(attrs.get("ceil_mode", 0))}

    def _maxpool(self, node, attrs: dict, shape: tuple) -> MaxPool2d:
        return MaxPool2d(**self._window(node, attrs, shape, dilated=True))

    def _averagepool(self, node, attrs: dict, shape: tuple) -> AvgPool2d:
        return AvgPool2d(count_include_pad=bool(attrs.get("count_include_pad", 0)),
                         **self._window(node, attrs, shape, dilated=False))

    def _globalaveragepool(self, node, attrs: dict, shape: tuple) -> AdaptiveAvgPool2d:
        self._check_rank(node, shape, 4, "(N, C, H, W)")
        return AdaptiveAvgPool2d(1)

    def _globalmaxpool(self, node, attrs: dict, shape: tuple) -> AdaptiveMaxPool2d:
        self._check_rank(node, shape, 4, "(N, C, H, W)")
        return AdaptiveMaxPool2d(1)

    def _gemm(self, node, attrs: dict, shape: tuple) -> Linear:
        self._check_rank(node, shape, 2, "(N, features) for Gemm")
        if attrs.get("transA", 0):
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (Gemm) transposes its "
                                  "input (transA); numbaconv's Linear reads (N, features)")
        weight = self._need(node, 1, "weight")
        if weight.ndim != 2:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (Gemm): its weight has "
                                  f"shape {weight.shape}, not 2-D")
        weight = weight if attrs.get("transB", 0) else weight.T
        weight = weight * np.float32(attrs.get("alpha", 1.0))
        bias = self._const(node, 2, "bias")
        if bias is not None:
            bias = self._bias(node, bias, weight.shape[0]) * np.float32(attrs.get("beta", 1.0))
        return self._linear(node, shape, weight, bias)

    def _matmul(self, node, shape: tuple, region: set[int]) -> tuple[list, str]:
        weight = self._need(node, 1, "weight")
        if weight.ndim != 2 or len(shape) < 2:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (MatMul) multiplies "
                                  f"{shape} by {weight.shape}; numbaconv's Linear needs a "
                                  "2-D constant on the right")
        out, bias = node.output[0], None
        users = self._users(out, region)
        if len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = [name for name in add.input if name != out]
            if len(other) == 1 and other[0] in self.constants:
                bias = self._bias(add, self.constants[other[0]], weight.shape[1])
                out = add.output[0]
        return [self._linear(node, shape, weight.T, bias)], out

    def _bias(self, node, value: np.ndarray, features: int) -> np.ndarray:
        """A constant added to ``(N, features)`` rows as a ``(features,)`` bias."""
        if value.shape not in ((), (1,), (features,), (1, 1), (1, features)):
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) adds a "
                                  f"constant of shape {value.shape}, not a bias of "
                                  f"{features} features")
        return np.broadcast_to(value.reshape(-1), (features,))

    def _linear(self, node, shape: tuple, weight: np.ndarray, bias) -> Linear:
        if shape[-1] != weight.shape[1]:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} ({node.op_type}) takes "
                                  f"{weight.shape[1]} features, its input of shape {shape} "
                                  f"has {shape[-1]}")
        layer = Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        _fill(layer.params, {"weight": weight, "bias": bias})
        return layer

    def _flatten(self, node, attrs: dict, shape: tuple) -> Flatten:
        axis = attrs.get("axis", 1)
        if axis not in (1, 1 - len(shape)):
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (Flatten) flattens from "
                                  f"axis {axis}; numbaconv reads Flatten from axis 1")
        return Flatten()

    def _reshape(self, node, attrs: dict, shape: tuple) -> Flatten:
        target = [int(v) for v in self._need(node, 1, "shape").reshape(-1)]
        features = int(np.prod(shape[1:]))
        flat = len(target) == 2 and (
            (target[0] in (0, -1) and target[1] in (-1, features) and target != [-1, -1])
            and not (target[0] == -1 and target[1] == -1))
        if not flat:
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (Reshape) makes shape "
                                  f"{target} of {shape}; numbaconv reads Reshape only as a "
                                  "flattening to (N, features)")
        return Flatten()

    def _dropout(self, node, attrs: dict, shape: tuple) -> Dropout:
        ratio = attrs.get("ratio", 0.5)
        given = self._const(node, 1, "ratio")
        if given is not None:
            ratio = float(given)
        ratio = _tidy(ratio)
        training = self._const(node, 2, "training_mode")
        if training is not None and bool(training):
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (Dropout) runs in "
                                  "training mode; numbaconv reads inference graphs")
        return Dropout(float(ratio))

    def _batchnormalization(self, node, attrs: dict, shape: tuple) -> BatchNorm1d | BatchNorm2d:
        if attrs.get("training_mode", 0) or not attrs.get("spatial", 1):
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (BatchNormalization) is "
                                  "not in inference form")
        if len(shape) not in (2, 3, 4):
            raise OnnxImportError(f"{self.shown}: node {_label(node)} (BatchNormalization) "
                                  f"normalises a {len(shape)}-D tensor of shape {shape}; "
                                  "numbaconv's batch norms take (N, C), (N, C, L) or "
                                  "(N, C, H, W)")
        layer_class = BatchNorm2d if len(shape) == 4 else BatchNorm1d
        values = {key: self._need(node, i, key) for i, key in enumerate(
            ("weight", "bias", "running_mean", "running_var"), start=1)}
        layer = layer_class(shape[1], eps=_tidy(attrs.get("epsilon", 1e-5)),
                            momentum=_tidy(1.0 - _tidy(attrs.get("momentum", 0.9))))
        _fill(layer.params, {"weight": values["weight"], "bias": values["bias"]})
        _fill(layer.buffers, {"running_mean": values["running_mean"],
                              "running_var": values["running_var"]})
        return layer


def _fill(table: dict, values: dict) -> None:
    """Copy each non-None value into the array of the same key, checking its shape."""
    for key, value in values.items():
        if value is None:
            continue
        target = table[key]
        value = np.asarray(value)
        if value.shape != target.shape:
            raise ValueError(f"its {key} has shape {value.shape}, the layer's is "
                             f"{target.shape}")
        if not np.isfinite(value).all():
            raise ValueError(f"its {key} holds NaN or inf")
        copy_into(target, np.ascontiguousarray(value, dtype=target.dtype))


def _tidy(value) -> float:
    """A float32 attribute as the shortest decimal that float32 rounds to it (``1e-05``, not
    ``9.999999747378752e-06``), as the layer was built with before export."""
    return float(str(np.float32(value)))


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _label(node) -> str:
    """How errors name a node: its name, else its first output."""
    return repr(node.name) if node.name else f"computing {node.output[0]!r}"


def _declared_shape(value) -> tuple | None:
    """A value's declared dims (``None`` for a free one), or ``None`` without a shape."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tensor.shape.dim)


def _default_opset(proto, shown: str) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise OnnxImportError(f"{shown} imports no opset of the default ONNX domain")
    version = versions[0]
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise OnnxImportError(f"{shown} uses opset {version}; numbaconv reads opsets "
                              f"{MIN_OPSET} to {MAX_OPSET}")
    return version
