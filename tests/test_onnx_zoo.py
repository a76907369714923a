"""Every registered model through ONNX: exported with random running statistics, accepted by
onnx.checker, onnxruntime's logits on a batch of 2 agreeing with ``forward(x,
training=False)``, and export -> import -> export giving the same graph (up to the tensors'
names, which follow the layer tree: the importer's tree wraps every branch in a
``Sequential``) and then the very same graph."""

from __future__ import annotations

import numpy as np
import pytest
from interop_support import onnxruntime_logits, require

import numbaconv
from numbaconv.layers import BatchNorm1d, BatchNorm2d
from numbaconv.models import smallest_input

onnx = require("onnx", "onnx")
from numbaconv.interop.onnx import (  # noqa: E402  (needs onnx)
    OnnxExportError,
    from_onnx_model,
    to_onnx_model,
)

#: Below this smallest side a model is tested at :data:`SMALL_SIDE` (GoogLeNet and ResNet-18
#: take 1x1 images, whose global pools see one pixel); larger smallest sides are used as they
#: are (AlexNet 193, VGG-11 224, NiN 67, DenseNet 29, the LeNets 28).
TINY, SMALL_SIDE = 16, 64
#: The issue's float32 tolerance, absolute as in test_onnx.py. Measured (rng 7): at most
#: 6e-7 (ResNet-18), onnxruntime's convolutions summing in another order than numbaconv's
#: kernels; 1e-4 leaves room for other BLAS builds while a wrong layer (a missed batch norm,
#: a pool's other windows) moves the logits by far more.
ATOL = 1e-4
#: Keyword arguments of the factories, beyond ``rng`` (VGG-11 at D2L's channel ratio).
FACTORY_ARGS = {"vgg11": {"ratio": 4}}
#: Models that take a fixed ``input_size`` (their Linear follows a fixed feature map).
SIZED = {"alexnet", "vgg11"}


def build(name: str):
    """``name`` built with ``rng=0`` at its test side; returns the model and the side."""
    args = dict(FACTORY_ARGS.get(name, {}), rng=0)
    if name in SIZED:
        side = smallest_input(numbaconv.build_model(name, **args))
        args["input_size"] = side
    model = numbaconv.build_model(name, **args)
    side = smallest_input(model)
    return model, side if side >= TINY else SMALL_SIDE


def randomise_running_stats(model, rng) -> int:
    """Random running statistics (and affine parameters) for every batch norm, so that
    evaluation form differs from the fresh layer's identity; returns how many there are."""
    count = 0
    for _, layer in model.named_layers():
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            n = layer.num_features
            layer.buffers["running_mean"][...] = rng.uniform(-0.5, 0.5, n)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, n)
            if "weight" in layer.params:
                layer.params["weight"][...] = rng.uniform(0.5, 1.5, n)
            if "bias" in layer.params:
                layer.params["bias"][...] = rng.uniform(-0.5, 0.5, n)
            count += 1
    return count


def graph_without_names(graph):
    """The graph's operators, attributes and weights in order, its tensors' names left out."""
    nodes = [(n.op_type, len(n.input), tuple(a.SerializeToString() for a in n.attribute))
             for n in graph.node]
    weights = [(t.dims, t.data_type, t.raw_data) for t in graph.initializer]
    return nodes, weights


def builtin_models() -> list[str]:
    """The registered models that numbaconv itself provides (plugins' models come with their
    own layers; ``lenet-lrn``'s LocalResponseNorm has no ONNX export here)."""
    return sorted(name for name, factory in numbaconv.get_models().items()
                  if getattr(factory, "__module__", "").startswith("numbaconv."))


MODELS = ["alexnet", "densenet", "googlenet", "lenet", "lenet-bn", "nin", "resnet18", "vgg11"]


def test_every_builtin_model_is_tested():
    assert builtin_models() == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_onnxruntime_agrees_and_round_trips(name):
    rng = np.random.default_rng(7)
    model, side = build(name)
    batch_norms = randomise_running_stats(model, rng)
    assert (batch_norms > 0) == (name in ("densenet", "lenet-bn", "resnet18"))
    in_channels = 1
    proto = to_onnx_model(model, (in_channels, side, side))
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert ("BatchNormalization" in ops) == (batch_norms > 0)

    x = rng.standard_normal((2, in_channels, side, side)).astype(np.float32)
    expected = model.forward(x, training=False)
    got = onnxruntime_logits(proto, x)
    assert got.shape == expected.shape == (2, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)

    imported = from_onnx_model(proto)
    again = to_onnx_model(imported, (in_channels, side, side))
    assert graph_without_names(again.graph) == graph_without_names(proto.graph)
    assert to_onnx_model(from_onnx_model(again), (in_channels, side, side)).graph == again.graph


def test_a_plugin_model_without_export_is_one_line_naming_its_layer():
    """Models the zoo does not own are checked too: each exports, or names its layer."""
    for name in sorted(set(numbaconv.get_models()) - set(MODELS)):
        model = numbaconv.build_model(name, rng=0)
        side = smallest_input(model)
        try:
            to_onnx_model(model, (1, side, side))
        except OnnxExportError as error:
            assert "\n" not in str(error) and "cannot be exported" in str(error)
