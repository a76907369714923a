"""A numbaconv model as an ONNX graph of standard operators (opset :data:`OPSET`).

Every built-in layer and container maps to operators of the default domain, in evaluation
form (``Dropout`` is ONNX's ``Dropout``, the identity at inference; batch norm uses its
running statistics):

==========================  ====================================================================
numbaconv                   ONNX
==========================  ====================================================================
``Conv2d``                  ``Conv`` (``pads`` top, left, bottom, right; ``'same'`` made explicit)
``MaxPool2d``               ``MaxPool`` (``dilations``, ``ceil_mode``)
``AvgPool2d``               ``AveragePool`` (``count_include_pad``, ``ceil_mode``); with
                            ``divisor_override``, a depthwise ``Conv`` of ``1 / divisor``
``Linear``                  ``Gemm`` (``transB = 1``) on 2-D inputs, else ``MatMul`` + ``Add``
``ReLU``/``Sigmoid``/``Tanh``  ``Relu``/``Sigmoid``/``Tanh``
``Flatten``                 ``Flatten`` (``axis = 1``), else ``Reshape``
``Dropout``                 ``Dropout`` (its ``ratio`` kept for the way back)
``Identity``                ``Identity``
``BatchNorm1d``/``2d``      ``BatchNormalization`` in inference form: the running statistics
                            (a layer without them is refused); ``(N, C)`` inputs too
``AdaptiveAvgPool2d``       ``GlobalAveragePool`` for an output of 1x1, else ``AveragePool``
                            where the input's size gives uniform windows (else refused)
``AdaptiveMaxPool2d``       ``GlobalMaxPool``, else ``MaxPool``, likewise
``Sequential``              its layers' nodes in order
``Residual``                body and shortcut, then ``Add``
``Concat``                  the branches, then ``Concat`` (``axis = 1``)
==========================  ====================================================================

A ceil-mode pool whose ceil and floor sizes agree is written with ``ceil_mode = 0`` (the same
windows): ONNX's shape formula for ceil mode keeps a last window that starts in the padding,
which PyTorch and numbaconv drop, so the attribute is used only where the two agree.

Any other layer exports itself through a method (documented in ``docs/interop.md``)::

    def to_onnx(self, graph: GraphBuilder, x: str, input_shape: tuple) -> str

which adds its nodes and constants to ``graph`` (see :class:`GraphBuilder`), reading the
tensor named ``x`` of shape ``input_shape`` (batch of 1), and returns the name of its output.
A layer with neither is an :class:`OnnxExportError` naming it.

Tensors are named after the layers' paths in the tree (``"3.body.0"``; constants
``"3.body.0.weight"``, as ``state_dict`` keys them); the graph's input is ``input`` with a
free batch axis ``N``, its output ``logits``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ...atomic import atomic_file
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
from ...shapes import as_pair, conv_padding, output_size
from .common import CLASSES_KEY, INPUT, OPSET, OUTPUT, require_onnx

__all__ = ["OnnxExportError", "GraphBuilder", "to_onnx_model", "export"]

#: The free batch axis of the graph's input and output.
BATCH = "N"


class OnnxExportError(ValueError):
    """A model that cannot be written as ONNX (the message names the layer)."""


class GraphBuilder:
    """The nodes and constants of the graph being written; what ``to_onnx`` methods fill.

    ``scope`` is the path of the layer being exported (``"3.body.0"``); names of its nodes and
    constants start with it, so that they are unique and say where they come from.
    """

    opset = OPSET

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self.scope = ""
        self._taken: set[str] = {INPUT, OUTPUT}

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._taken:
            n += 1
            candidate = f"{name}_{n}"
        self._taken.add(candidate)
        return candidate

    def _scoped(self, suffix: str) -> str:
        return f"{self.scope}.{suffix}" if self.scope else suffix

    def add_constant(self, key: str, array) -> str:
        """Store ``array`` (float32 or int64 as given) as a constant of the graph, named
        ``"<scope>.<key>"``; returns its name."""
        onnx = require_onnx()
        array = np.array(array, order="C")  # 0-d stays 0-d (a scalar input)
        name = self._unique(self._scoped(key))
        self.initializers.append(onnx.numpy_helper.from_array(array, name))
        return name

    def add_node(self, op_type: str, inputs, **attributes) -> str:
        """Append an ``op_type`` node of the default domain reading the tensors ``inputs``
        (names; ``""`` for an optional input left out) with ``attributes``; returns the name
        of its (one) output, which is also the node's name: the scope, or ``"<scope>/<op>"``
        when the scope already named a node."""
        onnx = require_onnx()
        base = self.scope or op_type
        name = base if base not in self._taken else self._unique(f"{base}/{op_type}")
        self._taken.add(name)
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), [name], name=name,
                                                **attributes))
        return name


def to_onnx_model(model: Layer, input_shape, classes=None):
    """``model`` in evaluation form as an ``onnx.ModelProto`` for inputs of ``input_shape``
    (one example's shape, ``(C, H, W)`` for images; the batch axis stays free), checked by
    ``onnx.checker``; ``classes`` (the names of the outputs) go into its metadata. Raises
    :class:`OnnxExportError` naming a layer that cannot be written."""
    onnx = require_onnx()
    from ... import __version__

    example = _example_shape(input_shape)
    shape = (1,) + example
    try:
        out_shape = tuple(int(s) for s in model.output_shape(shape))
    except ShapeError as error:
        raise OnnxExportError(f"the model does not take inputs of shape {example}: "
                              f"{error}") from None
    for name, value in model.named_params().items():
        if np.dtype(value.dtype) != np.float32:
            raise OnnxExportError(f"parameter {name} has dtype {value.dtype}; ONNX export "
                                  "writes float32 models")
    builder = GraphBuilder()
    result = _export(model, builder, INPUT, shape, "")
    _name_output(builder, result)
    elem = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        builder.nodes, "numbaconv",
        [onnx.helper.make_tensor_value_info(INPUT, elem, (BATCH,) + example)],
        [onnx.helper.make_tensor_value_info(OUTPUT, elem, (BATCH,) + out_shape[1:])],
        initializer=builder.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="numbaconv", producer_version=__version__)
    if classes is not None:
        onnx.helper.set_model_props(proto, {CLASSES_KEY: json.dumps(list(classes))})
    # the IR version this opset came with, so that older runtimes read the file too
    proto.ir_version = onnx.helper.find_min_ir_version_for([proto.opset_import[0]])
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model: Layer, path, input_shape, classes=None):
    """Write ``model`` to the ONNX file ``path`` (atomically) for inputs of ``input_shape``
    (one example's, e.g. ``(1, 28, 28)``), with the names of its ``classes`` if given;
    returns the ``onnx.ModelProto``."""
    proto = to_onnx_model(model, input_shape, classes)
    with atomic_file(os.fspath(path)) as out:
        out.write(proto.SerializeToString())
    return proto


def _example_shape(input_shape) -> tuple:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be one example's shape of positive sizes, e.g. "
                         f"(1, 28, 28), got {shape}")
    return shape


def _name_output(builder: GraphBuilder, result: str) -> None:
    """Make the model's last tensor the graph output ``logits``."""
    producer = next((node for node in builder.nodes if node.output[0] == result), None)
    if producer is None or any(result in node.input for node in builder.nodes):
        # the input itself (an empty model) or a tensor read elsewhere too
        builder.nodes.append(require_onnx().helper.make_node("Identity", [result], [OUTPUT],
                                                             name=OUTPUT))
        return
    producer.output[0] = OUTPUT


# --------------------------------------------------------------------------- the tree

def _export(layer: Layer, builder: GraphBuilder, x: str, shape: tuple, path: str) -> str:
    """Add ``layer``'s nodes reading ``x`` (of ``shape``); returns its output's name."""
    kind = type(layer)
    if kind is Sequential:
        for name, child in layer.children():
            child_path = _join(path, name)
            next_shape = tuple(int(s) for s in child.output_shape(shape))
            x = _export(child, builder, x, shape, child_path)
            shape = next_shape
        return x
    if kind is Residual:
        body = _export(layer.body, builder, x, shape, _join(path, "body"))
        skip = x if layer.shortcut is None else _export(layer.shortcut, builder, x, shape,
                                                        _join(path, "shortcut"))
        builder.scope = path
        return builder.add_node("Add", [body, skip])
    if kind is Concat:
        outputs = [_export(branch, builder, x, shape, _join(path, name))
                   for name, branch in layer.children()]
        builder.scope = path
        return builder.add_node("Concat", outputs, axis=1)
    builder.scope = path
    own = getattr(layer, "to_onnx", None)
    if callable(own):
        return own(builder, x, shape)
    writer = _WRITERS.get(kind)
    if writer is None:
        raise OnnxExportError(f"layer {path or '(the model)'} ({kind.__name__}) cannot be "
                              "exported to ONNX: it has no to_onnx method (see "
                              "docs/interop.md)")
    return writer(layer, builder, x, shape, path)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --------------------------------------------------------------------------- leaves

def _conv(layer: Conv2d, g: GraphBuilder, x, shape, path) -> str:
    (top, bottom), (left, right) = conv_padding(layer.padding, layer.kernel_size,
                                                layer.stride, layer.dilation)
    inputs = [x, g.add_constant("weight", layer.params["weight"])]
    if layer.bias:
        inputs.append(g.add_constant("bias", layer.params["bias"]))
    return _conv_node(g, inputs, layer.kernel_size, layer.stride, layer.dilation,
                      [top, left, bottom, right], layer.groups)


def _conv_node(g: GraphBuilder, inputs, kernel, stride, dilation, pads, groups) -> str:
    return g.add_node("Conv", inputs, kernel_shape=list(kernel), strides=list(stride),
                      dilations=list(dilation), pads=list(pads), group=groups)


def _window(layer, shape) -> dict:
    """The attributes shared by MaxPool and AveragePool; ``ceil_mode`` only where ONNX's
    ceil size is numbaconv's (see the module docstring)."""
    kernel = as_pair(layer.kernel_size, "kernel_size")
    stride = as_pair(layer.stride, "stride")
    pad = as_pair(layer.padding, "padding")
    dilation = as_pair(getattr(layer, "dilation", 1), "dilation")
    ceil = layer.ceil_mode and any(
        output_size(n, k, s, p, d, True) != output_size(n, k, s, p, d, False)
        for n, k, s, p, d in zip(shape[2:], kernel, stride, pad, dilation))
    attributes = {"kernel_shape": list(kernel), "strides": list(stride),
                  "pads": [pad[0], pad[1], pad[0], pad[1]], "ceil_mode": int(ceil)}
    if dilation != (1, 1):
        attributes["dilations"] = list(dilation)
    return attributes


def _max_pool(layer: MaxPool2d, g: GraphBuilder, x, shape, path) -> str:
    return g.add_node("MaxPool", [x], **_window(layer, shape))


def _avg_pool(layer: AvgPool2d, g: GraphBuilder, x, shape, path) -> str:
    if layer.divisor_override is not None:
        return _divided_sum(layer, g, x, shape)
    return g.add_node("AveragePool", [x], count_include_pad=int(layer.count_include_pad),
                      **_window(layer, shape))


def _divided_sum(layer: AvgPool2d, g: GraphBuilder, x, shape) -> str:
    """Average pooling with ``divisor_override``: each window's sum over ``divisor``, a
    depthwise convolution with constant weights; padding (zeros) adds nothing to a sum, so
    a ceil-mode overhang is more padding at the bottom and right."""
    kernel = as_pair(layer.kernel_size, "kernel_size")
    stride = as_pair(layer.stride, "stride")
    pad = as_pair(layer.padding, "padding")
    out = layer.output_shape(shape)
    extra = [max(0, (o - 1) * s + k - (n + 2 * p))
             for o, n, k, s, p in zip(out[2:], shape[2:], kernel, stride, pad)]
    channels = shape[1]
    weight = np.full((channels, 1) + kernel, 1.0 / layer.divisor_override, np.float32)
    return _conv_node(g, [x, g.add_constant("weight", weight)], kernel, stride, (1, 1),
                      [pad[0], pad[1], pad[0] + extra[0], pad[1] + extra[1]], channels)


def _linear(layer: Linear, g: GraphBuilder, x, shape, path) -> str:
    weight = layer.params["weight"]
    if len(shape) == 2:
        inputs = [x, g.add_constant("weight", weight)]
        if layer.bias:
            inputs.append(g.add_constant("bias", layer.params["bias"]))
        return g.add_node("Gemm", inputs, transB=1)
    y = g.add_node("MatMul", [x, g.add_constant("weight_t", weight.T)])
    if not layer.bias:
        return y
    return g.add_node("Add", [y, g.add_constant("bias", layer.params["bias"])])


def _activation(op_type: str):
    def write(layer, g: GraphBuilder, x, shape, path) -> str:
        return g.add_node(op_type, [x])
    return write


def _flatten(layer: Flatten, g: GraphBuilder, x, shape, path) -> str:
    out = layer.output_shape(shape)
    if layer._dims(shape) == (1, len(shape) - 1):
        return g.add_node("Flatten", [x], axis=1)
    start, _ = layer._dims(shape)
    # 0 copies the input's size (the free batch axis); -1 takes what is left
    target = [0 if i < start else size for i, size in enumerate(out)]
    if start == 0:
        target[0] = -1
    return g.add_node("Reshape", [x, g.add_constant("shape", np.array(target, np.int64))])


def _dropout(layer: Dropout, g: GraphBuilder, x, shape, path) -> str:
    return g.add_node("Dropout", [x, g.add_constant("ratio", np.array(layer.p, np.float32))])


def _identity(layer: Identity, g: GraphBuilder, x, shape, path) -> str:
    return g.add_node("Identity", [x])


def _batch_norm(layer: BatchNorm1d | BatchNorm2d, g: GraphBuilder, x, shape, path) -> str:
    """Batch norm in evaluation form: ``(x - running_mean) / sqrt(running_var + eps) * weight
    + bias`` per channel (axis 1), as ``forward(x, training=False)`` computes it."""
    name = f"layer {path or '(the model)'} ({type(layer).__name__})"
    if not layer.track_running_stats:
        raise OnnxExportError(f"{name} has no running statistics (track_running_stats=False): "
                              "it normalises by each batch, which ONNX's BatchNormalization "
                              "cannot")
    if layer.dtype != np.float32:
        raise OnnxExportError(f"{name} has dtype {layer.dtype}; ONNX export writes float32 "
                              "models")
    channels = layer.num_features
    # affine=False (or bias=False) is a scale of 1 (a shift of 0)
    scale = layer.params.get("weight", np.ones(channels, np.float32))
    shift = layer.params.get("bias", np.zeros(channels, np.float32))
    inputs = [x, g.add_constant("weight", scale), g.add_constant("bias", shift),
              g.add_constant("running_mean", layer.running_mean),
              g.add_constant("running_var", layer.running_var)]
    attributes = {"epsilon": layer.eps}
    if layer.momentum is not None:  # ONNX weighs the old statistics
        attributes["momentum"] = 1.0 - layer.momentum
    return g.add_node("BatchNormalization", inputs, **attributes)


def _uniform_windows(size: int, out: int) -> tuple[int, int] | None:
    """``(kernel, stride)`` of the adaptive windows that pool ``size`` inputs into ``out``
    outputs (``[floor(i * size / out), ceil((i + 1) * size / out))``) when they are all one
    fixed-size window at a fixed step, else ``None``."""
    starts = [i * size // out for i in range(out)]
    sizes = {-(-(i + 1) * size // out) - start for i, start in enumerate(starts)}
    stride = starts[1] if out > 1 else 1
    if len(sizes) != 1 or stride < 1 or starts != [i * stride for i in range(out)]:
        return None
    return sizes.pop(), stride


def _adaptive_pool(global_op: str, window_op: str):
    def write(layer, g: GraphBuilder, x, shape, path) -> str:
        out = tuple(int(s) for s in layer.output_shape(shape)[2:])
        if out == (1, 1):
            return g.add_node(global_op, [x])
        windows = [_uniform_windows(n, o) for n, o in zip(shape[2:], out)]
        if None in windows:
            raise OnnxExportError(
                f"layer {path or '(the model)'} ({type(layer).__name__}) cannot be exported "
                f"to ONNX for {shape[2]}x{shape[3]} inputs: its output size {out[0]}x{out[1]} "
                f"gives windows of different sizes or steps, which {window_op} cannot express")
        attributes = {"kernel_shape": [k for k, _ in windows],
                      "strides": [s for _, s in windows], "pads": [0, 0, 0, 0], "ceil_mode": 0}
        if window_op == "AveragePool":  # as AvgPool2d writes it, so that it comes back alike
            attributes["count_include_pad"] = 0
        return g.add_node(window_op, [x], **attributes)
    return write


_WRITERS = {
    Conv2d: _conv,
    MaxPool2d: _max_pool,
    AvgPool2d: _avg_pool,
    Linear: _linear,
    ReLU: _activation("Relu"),
    Sigmoid: _activation("Sigmoid"),
    Tanh: _activation("Tanh"),
    Flatten: _flatten,
    Dropout: _dropout,
    Identity: _identity,
    BatchNorm1d: _batch_norm,
    BatchNorm2d: _batch_norm,
    AdaptiveAvgPool2d: _adaptive_pool("GlobalAveragePool", "AveragePool"),
    AdaptiveMaxPool2d: _adaptive_pool("GlobalMaxPool", "MaxPool"),
}
