"""ONNX export and import: standard operators that onnx.checker accepts, onnxruntime's logits
within 1e-4 of numbaconv's, the way back to a numbaconv tree (and to the same graph), graphs
from torch.onnx.export, and one-line errors naming the layer, operator and node."""

from __future__ import annotations

import io

import numpy as np
import pytest
from interop_support import (
    d2l_lenet,
    onnxruntime_logits,
    require,
    require_layer,
    sample_images,
)

import numbaconv
from numbaconv.layers import (
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
    Tanh,
)
from numbaconv.network import from_spec

onnx = require("onnx", "onnx")
from numbaconv.interop.onnx import (  # noqa: E402  (needs onnx)
    OPSET,
    OnnxExportError,
    OnnxImportError,
    export,
    from_onnx_model,
    load,
    read,
    to_onnx_model,
)

ATOL = 1e-4


def round_trip(model: Layer, input_shape, x: np.ndarray):
    """Export ``model``, check the graph, compare onnxruntime's and the imported model's
    logits with numbaconv's on ``x`` and export the imported model again; returns both
    ``ModelProto`` and the imported model."""
    proto = to_onnx_model(model, input_shape)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == OPSET
    assert {node.domain for node in proto.graph.node} <= {""}
    expected = model.forward(x)
    np.testing.assert_allclose(onnxruntime_logits(proto, x), expected, rtol=0, atol=ATOL)
    imported = from_onnx_model(proto)
    np.testing.assert_allclose(imported.forward(x), expected, rtol=0, atol=1e-6)
    again = to_onnx_model(imported, input_shape)
    assert again.graph == proto.graph  # nodes, attributes, names and weights
    return proto, again, imported


@pytest.mark.parametrize("activation, pool", [("sigmoid", "avg"), ("relu", "max")])
def test_lenet_round_trips_and_onnxruntime_agrees(activation, pool):
    model = numbaconv.build_model("lenet", activation=activation, pool=pool, rng=3)
    proto, _, _ = round_trip(model, (1, 28, 28), sample_images(32))
    ops = [node.op_type for node in proto.graph.node]
    act, pool_op = {"sigmoid": "Sigmoid", "relu": "Relu"}[activation], \
        {"avg": "AveragePool", "max": "MaxPool"}[pool]
    assert ops == ["Conv", act, pool_op, "Conv", act, pool_op, "Flatten",
                   "Gemm", act, "Gemm", act, "Gemm"]
    assert [i.name for i in proto.graph.input] == ["input"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def residual_concat_tree(rng=0) -> Sequential:
    """A ResNet/Inception-style tree on 1x28x28 images: an identity Residual, one with a 1x1
    shortcut, a Concat with a convolution, two pools and an identity branch."""
    return from_spec([
        {"type": "Conv2d", "in_channels": 1, "out_channels": 8, "kernel_size": 3,
         "padding": 1},
        {"type": "ReLU"},
        {"type": "Residual", "body": [
            {"type": "Conv2d", "in_channels": 8, "out_channels": 8, "kernel_size": 3,
             "padding": 1},
            {"type": "ReLU"},
            {"type": "Conv2d", "in_channels": 8, "out_channels": 8, "kernel_size": 3,
             "padding": 1}]},
        {"type": "ReLU"},
        {"type": "Residual", "body": [
            {"type": "Conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": 3,
             "stride": 2, "padding": 1},
            {"type": "Tanh"},
            {"type": "Conv2d", "in_channels": 16, "out_channels": 16, "kernel_size": 4,
             "padding": "same"}],
         "shortcut": [{"type": "Conv2d", "in_channels": 8, "out_channels": 16,
                       "kernel_size": 1, "stride": 2}]},
        {"type": "Concat", "branches": [
            [{"type": "Conv2d", "in_channels": 16, "out_channels": 4, "kernel_size": 1}],
            [{"type": "MaxPool2d", "kernel_size": 3, "stride": 1, "padding": 1}],
            [{"type": "AvgPool2d", "kernel_size": 3, "stride": 1, "padding": 1,
              "count_include_pad": False}],
            []]},
        {"type": "MaxPool2d", "kernel_size": 2, "ceil_mode": True},
        {"type": "AvgPool2d", "kernel_size": 7},
        {"type": "Flatten"},
        {"type": "Dropout", "p": 0.25},
        {"type": "Linear", "in_features": 52, "out_features": 10},
    ], rng=rng)


def test_a_residual_and_concat_tree_round_trips():
    model = residual_concat_tree()
    proto, _, imported = round_trip(model, (1, 28, 28), sample_images(16))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Add") == 2 and ops.count("Concat") == 1 and "Dropout" in ops
    assert types(imported) == types(model)


def types(layer: Layer):
    """The tree's layer types: ``[name, [children's types]...]``."""
    return [type(layer).__name__] + [types(child) for _, child in layer.children()]


POOLS_AND_CONVS = {
    "max ceil, padding": [MaxPool2d(3, stride=2, padding=1, ceil_mode=True)],
    "max dilated, rectangular": [MaxPool2d((2, 3), stride=(2, 1), padding=(1, 1),
                                           dilation=(2, 1))],
    "avg ceil, padding counted": [AvgPool2d(3, stride=2, padding=1, ceil_mode=True)],
    "avg ceil, padding not counted": [AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                                count_include_pad=False)],
    "avg ceil, overhang without padding": [AvgPool2d(3, stride=2, ceil_mode=True)],
    "avg ceil whose last window would start in the padding": [
        AvgPool2d(2, stride=2, padding=1, ceil_mode=True)],
    "avg divisor_override": [AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                       divisor_override=5)],
    "conv same, even kernel": [Conv2d(3, 4, 4, padding="same", rng=1)],
    "conv uneven padding, dilation, groups, no bias": [
        Conv2d(3, 6, 3, stride=2, padding=((1, 2), (0, 1)), dilation=2, groups=3,
               bias=False, rng=2)],
}


@pytest.mark.parametrize("name", POOLS_AND_CONVS)
def test_pools_and_convolutions_with_every_argument(name):
    model = Sequential(POOLS_AND_CONVS[name])
    for side in (9, 10):  # odd and even: ceil mode's last windows differ
        x = np.random.default_rng(side).standard_normal((2, 3, side, side)).astype(np.float32)
        round_trip(model, (3, side, side), x)


def test_ceil_mode_is_written_only_where_onnx_agrees():
    # 9 + 2 - 2 = 9: ceil and floor agree once the window that would start in the padding
    # is dropped, which ONNX's shape formula would keep: written as floor
    agrees = to_onnx_model(Sequential([AvgPool2d(2, stride=2, padding=1, ceil_mode=True)]),
                           (1, 9, 9))
    differs = to_onnx_model(Sequential([AvgPool2d(3, stride=2, padding=1, ceil_mode=True)]),
                            (1, 10, 10))
    ceil = [[a.i for a in p.graph.node[0].attribute if a.name == "ceil_mode"][0]
            for p in (agrees, differs)]
    assert ceil == [0, 1]


def test_linear_beyond_2d_and_flatten_of_inner_axes():
    model = Sequential([Flatten(start_dim=2), Linear(100, 5, rng=0), ReLU()])
    x = np.random.default_rng(1).standard_normal((2, 3, 10, 10)).astype(np.float32)
    proto = to_onnx_model(model, (3, 10, 10))
    assert [n.op_type for n in proto.graph.node] == ["Reshape", "MatMul", "Add", "Relu"]
    np.testing.assert_allclose(onnxruntime_logits(proto, x), model.forward(x), atol=ATOL)
    with pytest.raises(OnnxImportError, match=r"node '0' \(Reshape\).*flattening to"):
        from_onnx_model(proto)


def test_a_model_of_features_round_trips():
    model = Sequential([Linear(6, 4, rng=0), Tanh(), Dropout(0.5), Linear(4, 3, bias=False,
                                                                         rng=1)])
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    round_trip(model, (6,), x)


def batch_norm_classes():
    return require_layer("BatchNorm2d"), require_layer("BatchNorm1d")


def test_batch_norm_exports_in_evaluation_form_and_comes_back():
    bn2d, bn1d = batch_norm_classes()
    rng = np.random.default_rng(4)
    model = Sequential([Conv2d(1, 4, 3, rng=0), bn2d(4, eps=1e-3), ReLU(), Flatten(),
                        bn1d(4 * 26 * 26, momentum=0.2), Linear(4 * 26 * 26, 10, rng=1)])
    for _, layer in model.named_layers():
        if "running_mean" in layer.buffers:
            n = layer.num_features
            layer.buffers["running_mean"][...] = rng.uniform(-1, 1, n)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2, n)
            layer.params["weight"][...] = rng.uniform(0.5, 1.5, n)
            layer.params["bias"][...] = rng.uniform(-0.5, 0.5, n)
    proto, _, imported = round_trip(model, (1, 28, 28), sample_images(8))
    assert [n.op_type for n in proto.graph.node].count("BatchNormalization") == 2
    assert imported[1].eps == 1e-3 and imported[4].momentum == 0.2


def test_batch_norm_without_running_statistics_is_refused():
    bn2d, _ = batch_norm_classes()
    model = Sequential([Conv2d(1, 2, 3, rng=0), bn2d(2, track_running_stats=False)])
    with pytest.raises(OnnxExportError, match=r"layer 1 \(BatchNorm2d\).*running statistics"):
        to_onnx_model(model, (1, 8, 8))


def test_core_batch_norm_exports_its_running_statistics_not_the_batchs():
    """A training forward moves the running statistics; the file normalises by them, as
    forward(x, training=False) does, for (N, C, H, W), (N, C) and (N, C, L) inputs."""
    rng = np.random.default_rng(5)
    images = Sequential([Conv2d(3, 4, 3, rng=0), BatchNorm2d(4, momentum=0.5), ReLU(),
                         Flatten(), BatchNorm1d(4 * 6 * 6, affine=False), Linear(144, 5, rng=1)])
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32) * 3 + 1
    sequences = Sequential([BatchNorm1d(3, bias=False), Linear(7, 2, rng=2)])
    z = rng.standard_normal((4, 3, 7)).astype(np.float32) * 2 - 1
    for model, data in ((images, x), (sequences, z)):
        model.forward(data, training=True)
        model.forward(data * 2, training=True)
        proto, _, imported = round_trip(model, data.shape[1:], data)
        assert not np.allclose(model.forward(data, training=True),
                               model.forward(data, training=False), atol=1e-2)
        for _, layer in imported.named_layers():
            assert type(layer) not in (BatchNorm1d, BatchNorm2d) or \
                layer.running_var.min() != 1.0
    assert [type(layer) for layer in imported] == [BatchNorm1d, Linear]


def test_batch_norm_with_a_cumulative_average_exports_without_momentum():
    model = Sequential([BatchNorm1d(6, momentum=None), Linear(6, 2, rng=0)])
    x = np.random.default_rng(6).standard_normal((3, 6)).astype(np.float32)
    model.forward(x, training=True)
    proto = to_onnx_model(model, (6,))
    assert [a.name for a in proto.graph.node[0].attribute] == ["epsilon"]
    np.testing.assert_allclose(onnxruntime_logits(proto, x), model.forward(x), atol=ATOL)


def test_global_adaptive_pools_are_global_pools_and_come_back():
    model = Sequential([Conv2d(1, 4, 3, rng=0), Concat(Sequential([AdaptiveAvgPool2d(1)]),
                                                      Sequential([AdaptiveMaxPool2d((1, 1))])),
                        Flatten(), Linear(8, 3, rng=1)])
    proto, _, imported = round_trip(model, (1, 28, 28), sample_images(4))
    ops = [n.op_type for n in proto.graph.node]
    assert "GlobalAveragePool" in ops and "GlobalMaxPool" in ops
    assert types(imported[1]) == types(model[1])


@pytest.mark.parametrize("output_size, side, kernel, stride", [
    ((2, 3), (8, 9), [4, 3], [4, 3]),  # the sides divide: windows side // out apart
    (2, (3, 3), [2, 2], [1, 1]),        # overlapping windows [0, 2) and [1, 3)
    ((4, 1), (4, 5), [1, 5], [1, 1]),
])
def test_adaptive_pools_of_uniform_windows_are_average_and_max_pools(output_size, side,
                                                                     kernel, stride):
    x = np.random.default_rng(7).standard_normal((2, 2) + side).astype(np.float32)
    for pool, op in ((AdaptiveAvgPool2d, "AveragePool"), (AdaptiveMaxPool2d, "MaxPool")):
        proto, _, imported = round_trip(Sequential([pool(output_size)]), (2,) + side, x)
        node = proto.graph.node[0]
        attributes = {a.name: list(a.ints) for a in node.attribute if a.ints}
        assert node.op_type == op and attributes["kernel_shape"] == kernel
        assert attributes["strides"] == stride and attributes["pads"] == [0] * 4


def test_an_adaptive_pool_of_uneven_windows_is_one_line_naming_it():
    model = Sequential([Conv2d(1, 2, 1, rng=0), AdaptiveAvgPool2d(3)])
    message = (r"^layer 1 \(AdaptiveAvgPool2d\) cannot be exported to ONNX for 5x5 inputs: its "
               r"output size 3x3 gives windows of different sizes or steps, which AveragePool "
               r"cannot express$")
    with pytest.raises(OnnxExportError, match=message):
        to_onnx_model(model, (1, 5, 5))
    with pytest.raises(OnnxExportError, match=r"\(AdaptiveMaxPool2d\).*MaxPool cannot"):
        to_onnx_model(Sequential([AdaptiveMaxPool2d((1, 3))]), (1, 4, 5))


def test_identity_is_onnx_identity_also_as_a_concat_branch():
    model = Sequential([Conv2d(1, 3, 3, rng=0), Identity(),
                        Concat(Sequential([Identity()]), Sequential([Conv2d(3, 2, 1, rng=1)])),
                        Flatten(), Linear(5 * 26 * 26, 4, rng=2)])
    proto, _, imported = round_trip(model, (1, 28, 28), sample_images(4))
    assert [n.op_type for n in proto.graph.node].count("Identity") == 2
    assert types(imported) == types(model)


class Doubling(Layer):
    """A plugin-style layer that exports itself: ``2 x``."""

    def forward(self, x, training=False):
        return x * np.float32(2)

    def backward(self, grad_y, need_input_grad=True):
        return grad_y * np.float32(2)

    def to_onnx(self, graph, x, input_shape):
        return graph.add_node("Mul", [x, graph.add_constant("two", np.float32(2))])


class Halving(Layer):
    """A plugin-style layer without ``to_onnx``."""

    def forward(self, x, training=False):
        return x / np.float32(2)


def test_a_layer_with_to_onnx_exports_itself_and_unknown_operators_are_named():
    model = Sequential([Conv2d(1, 2, 3, rng=0), Residual([Doubling()])])
    x = sample_images(4)
    proto = to_onnx_model(model, (1, 28, 28))
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Mul", "Add"]
    assert proto.graph.node[1].name == "1.body.0"
    np.testing.assert_allclose(onnxruntime_logits(proto, x), model.forward(x), atol=ATOL)
    with pytest.raises(OnnxImportError) as caught:
        from_onnx_model(proto)
    message = str(caught.value)
    assert "unsupported ONNX operator Mul (node '1.body.0')" in message
    assert "\n" not in message


class MyReLU(ReLU):
    """A subclass may compute something else than its base: never exported as the base."""


@pytest.mark.parametrize("layer, name", [(Halving(), "Halving"), (MyReLU(), "MyReLU")])
def test_a_layer_that_cannot_export_is_named(layer, name):
    model = Sequential([Conv2d(1, 2, 3, rng=0), Concat([layer], [])])
    with pytest.raises(OnnxExportError) as caught:
        to_onnx_model(model, (1, 8, 8))
    assert str(caught.value) == (f"layer 1.0.0 ({name}) cannot be exported to ONNX: it has "
                                 "no to_onnx method (see docs/interop.md)")


def test_export_writes_a_file_and_load_reads_it(tmp_path):
    model = numbaconv.build_model("lenet", rng=0)
    path = tmp_path / "lenet.onnx"
    export(model, path, (1, 28, 28), classes=[str(i) for i in range(10)])
    x = sample_images(4)
    np.testing.assert_allclose(load(path).forward(x), model.forward(x), atol=1e-6)
    assert read(path).classes == [str(i) for i in range(10)]
    assert read(path).input_shape == (1, 28, 28)


def handmade(nodes, initializers=(), input_shape=("N", 1, 4, 4)):
    helper = onnx.helper
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ("N", "c", "h", "w"))],
        initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_operators_are_one_line_naming_operator_and_node():
    proto = handmade([onnx.helper.make_node("Relu", ["x"], ["r"], name="act"),
                      onnx.helper.make_node("Softmax", ["r"], ["y"], name="probs")])
    with pytest.raises(OnnxImportError) as caught:
        from_onnx_model(proto)
    assert "unsupported ONNX operator Softmax (node 'probs')" in str(caught.value)


def test_graphs_numbaconv_cannot_express_say_where():
    helper = onnx.helper
    height = handmade([helper.make_node("Relu", ["x"], ["a"], name="a"),
                    helper.make_node("Sigmoid", ["x"], ["b"], name="b"),
                    helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=2)])
    with pytest.raises(OnnxImportError, match=r"node 'cat' \(Concat\) joins along axis 2"):
        from_onnx_model(height)
    free = handmade([helper.make_node("Relu", ["x"], ["y"])], input_shape=("N", 1, "H", 4))
    with pytest.raises(OnnxImportError, match="free size on axis 2"):
        from_onnx_model(free)
    uneven = handmade([helper.make_node("MaxPool", ["x"], ["y"], name="pool",
                                        kernel_shape=[2, 2], pads=[0, 0, 1, 1])])
    with pytest.raises(OnnxImportError, match=r"node 'pool' \(MaxPool\) pads unevenly"):
        from_onnx_model(uneven)


def test_not_an_onnx_file_is_one_line(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\xffnot protobuf at all" * 10)
    with pytest.raises(OnnxImportError, match="is not an ONNX model|is not a valid ONNX"):
        load(path)


# --------------------------------------------------------------------------- from PyTorch

def torch_onnx(torch, net, input_shape, **options) -> onnx.ModelProto:
    """``net`` through ``torch.onnx.export`` (TorchScript's exporter: onnxscript, which the
    dynamo exporter needs, is not a test dependency)."""
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros((1,) + input_shape), buffer, dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **options)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_d2l_lenet_from_torch_onnx_export_gives_pytorchs_logits(torch):
    torch.manual_seed(0)
    net = d2l_lenet(torch).eval()
    x = sample_images(32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    model = from_onnx_model(torch_onnx(torch, net, (1, 28, 28)))
    np.testing.assert_allclose(model.forward(x), expected, rtol=0, atol=ATOL)


def torch_resnet_twin(torch):
    """D2L's ResNet (section 8.6) in small: its stem, an identity block and a strided block
    with a 1x1 shortcut, global average pooling and a linear head."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self, cin, cout, use_1x1conv=False, strides=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=strides)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.conv3 = nn.Conv2d(cin, cout, 1, stride=strides) if use_1x1conv else None
            self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if self.conv3 is not None:
                x = self.conv3(x)
            return F.relu(y + x)

    net = nn.Sequential(nn.Conv2d(1, 8, 7, stride=2, padding=3), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(3, 2, 1), Block(8, 8), Block(8, 16, True, 2),
                        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():  # statistics as if trained, so that batch norm does something
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("folded", [True, False], ids=["bn-folded", "bn-kept"])
def test_a_resnet_twin_from_torch_onnx_export_gives_pytorchs_logits(torch, folded):
    if not folded:
        batch_norm_classes()
    torch.manual_seed(0)
    net = torch_resnet_twin(torch)
    x = sample_images(16)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    proto = torch_onnx(torch, net, (1, 28, 28), do_constant_folding=folded)
    assert ("BatchNormalization" in {n.op_type for n in proto.graph.node}) is not folded
    model = from_onnx_model(proto)
    assert sum(isinstance(layer, Residual) for layer in model) == 2
    np.testing.assert_allclose(model.forward(x), expected, rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- the command line

def invoke(*args):
    from click.testing import CliRunner

    from numbaconv.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result) -> str:
    """The ``Error: ...`` line of a command that failed as a user error (status 1)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from tiny_data import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), 256, 128)


def test_export_import_evaluate_and_train_further_from_the_cli(tmp_path, data_dir):
    from numbaconv import checkpoint as ckpt
    from numbaconv.layers import layer_spec

    model = numbaconv.build_model("lenet", activation="relu", pool="max", rng=5)
    original = tmp_path / "lenet.npz"
    ckpt.save(original, ckpt.Checkpoint(spec=layer_spec(model), params=model.state_dict(),
                                        epoch=1, model="lenet",
                                        options={"activation": "relu", "pool": "max"}))
    exported = tmp_path / "lenet.onnx"
    result = invoke("export", original, exported)
    assert result.exit_code == 0, result.output
    assert result.output == (f"wrote {exported}: 12 ONNX nodes (opset {OPSET}), input "
                             "(N, 1, 28, 28), logits (N, 10)\n")
    proto = onnx.load(exported)
    onnx.checker.check_model(proto, full_check=True)
    x = sample_images(16)
    np.testing.assert_allclose(onnxruntime_logits(proto, x), model.forward(x), atol=ATOL)
    assert read(exported).classes[0] == "T-shirt/top"  # Fashion-MNIST's, in the metadata

    imported = tmp_path / "imported.npz"
    result = invoke("import", exported, imported)
    assert result.exit_code == 0, result.output
    saved = ckpt.load(imported)
    assert saved.classes[-1] == "Ankle boot" and saved.input_shape == [1, 28, 28]
    accuracies = [invoke("evaluate", path, "--data", data_dir).output
                  for path in (original, imported)]
    assert accuracies[0] == accuracies[1] and accuracies[0].startswith("test_acc ")

    tuned = tmp_path / "tuned.npz"
    result = invoke("run", imported, "--data", data_dir, "--epochs", "1", "--batch-size", "64",
                    "--optimizer", "adam", "--lr", "0.001", "--threads", "1", "--save", tuned)
    assert result.exit_code == 0, result.output
    assert f"training {imported} on 256 images" in result.output
    after = ckpt.load(tuned)
    assert after.epoch == 1 and after.spec == saved.spec
    assert any((after.params[k] != saved.params[k]).any() for k in saved.params)


def test_the_cli_names_an_unsupported_operator_and_a_layer_that_cannot_export(tmp_path):
    from numbaconv import checkpoint as ckpt
    from numbaconv.registry import pm

    path = tmp_path / "softmax.onnx"
    onnx.save(handmade([onnx.helper.make_node("Softmax", ["x"], ["y"], name="probs")]), path)
    assert one_line_error(invoke("import", path, tmp_path / "out.npz")) == (
        f"Error: {path}: unsupported ONNX operator Softmax (node 'probs'); numbaconv reads "
        "Conv, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Gemm, MatMul, Add, "
        "Relu, Sigmoid, Tanh, Flatten, Reshape, BatchNormalization, Concat, Dropout, Identity")

    class Plugin:
        @numbaconv.hookimpl
        def register_layers(self, register):
            register(Halving)

    pm.register(Plugin(), name="halving-plugin")
    try:
        model = Sequential([Conv2d(1, 2, 3, rng=0), Halving(), Flatten(),
                            Linear(2 * 26 * 26, 10, rng=0)])
        saved = tmp_path / "halving.npz"
        ckpt.save(saved, ckpt.Checkpoint(spec=numbaconv.layers.layer_spec(model),
                                         params=model.state_dict()))
        assert one_line_error(invoke("export", saved, tmp_path / "h.onnx")) == (
            "Error: layer 1 (Halving) cannot be exported to ONNX: it has no to_onnx method "
            "(see docs/interop.md)")
    finally:
        pm.unregister(name="halving-plugin")
    assert not (tmp_path / "h.onnx").exists()


def test_without_the_onnx_extra_the_commands_say_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx fails
    assert one_line_error(invoke("import", tmp_path / "m.onnx", tmp_path / "m.npz")) == (
        "Error: ONNX support needs the onnx package: pip install 'numbaconv[onnx]'")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_interop_guide_runs(torch, tmp_path, monkeypatch):
    """Every ```python block of docs/interop.md, in order, in one namespace, in an empty
    folder."""
    import re
    from pathlib import Path

    require("onnxruntime", "onnx")
    guide = Path(__file__).resolve().parent.parent / "docs" / "interop.md"
    blocks = re.findall(r"^```python\n(.*?)^```", guide.read_text(encoding="utf-8"),
                        re.S | re.M)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "interop_guide"}
    for code in blocks:
        exec(compile(code, str(guide), "exec"), namespace)
