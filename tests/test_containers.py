"""Models are trees: Sequential nests, Residual adds, Concat joins; specs nest (TOML too)."""

import json
import textwrap

import numpy as np
import pytest

import numbaconv
from numbaconv.layers import (
    AvgPool2d,
    Concat,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Tanh,
    build_layer,
    layer_spec,
)
from numbaconv.layers.containers import MAX_DEPTH, format_summary, summary
from numbaconv.network import SpecError, load_spec
from numbaconv.testing import check_layer


def residual_block(rng=0):
    return Residual([Conv2d(3, 4, 3, padding=1, rng=rng), Tanh(),
                     Conv2d(4, 4, 3, padding=1, rng=rng)],
                    shortcut=[Conv2d(3, 4, 1, rng=rng)])


def inception(rng=0):
    return Concat([Conv2d(3, 2, 1, rng=rng)],
                  [Conv2d(3, 2, 1, rng=rng), Tanh(), Conv2d(2, 3, 3, padding=1, rng=rng)],
                  [AvgPool2d(3, stride=1, padding=1)])


@pytest.mark.parametrize("build", [residual_block, inception,
                                   lambda: Residual([Conv2d(3, 3, 3, padding=1, rng=1),
                                                     Sigmoid()]),
                                   lambda: Sequential(residual_block(), Tanh(),
                                                      Residual([Conv2d(4, 4, 1, rng=3)]))])
def test_containers_keep_the_layer_contract(build):
    check_layer(build(), (2, 3, 6, 5))


def test_residual_sums_body_and_shortcut_and_their_input_gradients():
    block = residual_block()
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    y = block.forward(x)
    body, short = block.body, block.shortcut
    np.testing.assert_allclose(y, body.forward(x) + short.forward(x), rtol=1e-6)
    identity = Residual([Conv2d(3, 3, 3, padding=1, rng=0)])
    gy = np.ones((2, 3, 5, 5), np.float32)
    identity.forward(x)
    gx = identity.backward(gy)
    identity.body.forward(x)
    np.testing.assert_allclose(gx, identity.body.backward(gy) + gy, rtol=1e-6)
    assert identity.backward(gy, need_input_grad=False) is None


def test_parameter_names_are_tree_paths_and_state_round_trips():
    net = Sequential(Conv2d(1, 3, 3, padding=1, rng=0), ReLU(), residual_block(),
                     Concat([Conv2d(4, 2, 1, rng=0)], [MaxPool2d(3, 1, 1)]))
    assert list(net.named_params()) == [
        "0.weight", "0.bias", "2.body.0.weight", "2.body.0.bias", "2.body.2.weight",
        "2.body.2.bias", "2.shortcut.0.weight", "2.shortcut.0.bias", "3.0.0.weight",
        "3.0.0.bias"]
    assert net.num_params() == sum(p.size for p in net.named_params().values())
    clone = build_layer(json.loads(json.dumps(layer_spec(net))), rng=7)
    assert layer_spec(clone) == layer_spec(net)
    clone.load_state_dict(net.state_dict())
    x = np.random.default_rng(2).random((2, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(clone.forward(x), net.forward(x))


def test_shape_errors_name_the_path():
    net = Sequential(Conv2d(1, 4, 3), Residual([Conv2d(4, 8, 3, padding=1)]))
    with pytest.raises(ValueError, match=r"^layer 1 .*Residual.*body's output \(1, 8, 6, 6\) "
                                         r"cannot be added to the input \(1, 4, 6, 6\)"):
        net.output_shape((1, 1, 8, 8))
    deep = Sequential(Conv2d(1, 4, 3), Residual([Conv2d(4, 4, 3, padding=1), Linear(4, 2)]))
    with pytest.raises(ValueError, match=r"^layer 1\.body\.1 \(Linear\)"):
        deep.output_shape((1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"branch 1's output"):
        Concat([Conv2d(1, 2, 1)], [Conv2d(1, 2, 3)]).output_shape((1, 1, 8, 8))


def test_fusion_applies_inside_nested_sequentials_bit_for_bit():
    def stage(rng):
        return [Conv2d(2, 4, 3, padding=1, rng=rng), Sigmoid(), AvgPool2d(2)]

    fused = Sequential(Residual(Sequential(*stage(0), fuse=True),
                                shortcut=[AvgPool2d(2), Conv2d(2, 4, 1, rng=1)]))
    plain = Sequential(Residual(Sequential(*stage(0), fuse=False),
                                shortcut=[AvgPool2d(2), Conv2d(2, 4, 1, rng=1)]))
    assert fused.layers[0].body.stages()[0].fused is not None
    x = np.random.default_rng(3).random((3, 2, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(fused.forward(x, training=True),
                                  plain.forward(x, training=True))
    g = np.random.default_rng(4).random((3, 4, 4, 4), dtype=np.float32)
    np.testing.assert_array_equal(fused.backward(g), plain.backward(g))
    for name, grad in fused.named_grads().items():
        np.testing.assert_array_equal(grad, plain.named_grads()[name], err_msg=name)


def test_summary_shows_the_tree_and_totals():
    net = Sequential(Conv2d(1, 3, 3, padding=1), residual_block(), Flatten(),
                     Linear(4 * 8 * 8, 10))
    rows = summary(net, (1, 1, 8, 8))
    assert [r.path for r in rows] == ["", "0", "1", "1.body", "1.body.0", "1.body.1",
                                      "1.body.2", "1.shortcut", "1.shortcut.0", "2", "3"]
    by_path = {r.path: r for r in rows}
    assert by_path["1"].n_params == net[1].num_params()
    assert by_path[""].n_params == net.num_params()
    assert by_path["1.body.2"].receptive_field == (7, 7)  # 3 + 2 + 2
    assert by_path["1"].receptive_field == (7, 7)  # the widest branch
    assert by_path["1"].flops == net[1].flops((1, 3, 8, 8))
    assert by_path[""].flops == sum(by_path[p].flops for p in ("0", "1", "2", "3"))
    assert "  Conv2d" in format_summary(rows)


def test_summary_and_checks_are_linear_in_the_number_of_layers():
    import gc
    import time

    small = Sequential([ReLU() for _ in range(2000)])
    large = Sequential([ReLU() for _ in range(20000)])
    # this process's CPU time (other processes on a shared machine take none of it), the best
    # of interleaved repeats (the least disturbed by caches, the collector and the scheduler)
    best = [float("inf")] * 2
    for _ in range(5):
        for i, net in enumerate((small, large)):
            gc.collect()
            start = time.process_time()
            summary(net, (1, 1, 4, 4))
            net.output_shape((1, 1, 4, 4))
            best[i] = min(best[i], time.process_time() - start)
    assert best[1] < 30 * best[0], best  # ten times the layers: linear 10x (~12), quadratic 100x


def test_specs_nest_and_refuse_bad_shapes():
    spec = [{"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3},
            {"type": "Residual", "body": [{"type": "ReLU"}],
             "shortcut": {"type": "Sequential", "layers": [{"type": "Tanh"}]}},
            {"type": "Concat", "branches": [[{"type": "ReLU"}], {"type": "Sigmoid"}]}]
    net = build_layer(spec)
    assert isinstance(net[1], Residual) and isinstance(net[2], Concat)
    assert net.output_shape((1, 1, 8, 8)) == (1, 8, 6, 6)
    for bad, message in [
            ([{"type": "Residual"}], r"layer 0 \(Residual\): needs 'body'"),
            ([{"type": "Concat", "branches": []}], r"layer 0 \(Concat\): needs 'branches"),
            ([{"type": "Residual", "body": [{"type": "Nope"}]}],
             r"layer 0\.body\.0: unknown layer type 'Nope'"),
            ([{"type": "Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 3,
               "stride": 10 ** 20}], r"layer 0 \(Conv2d\): stride must be at most"),
            ([3], r"layer 0: a layer is a table")]:
        with pytest.raises((TypeError, ValueError), match=message):
            build_layer(bad)
    nested = [{"type": "ReLU"}]
    for _ in range(MAX_DEPTH + 2):
        nested = [{"type": "Residual", "body": nested}]
    with pytest.raises(ValueError, match="nest more than"):
        build_layer(nested)


RESNET_TOML = textwrap.dedent("""\
    [[layers]]
    type = "Conv2d"
    in_channels = 1
    out_channels = 8
    kernel_size = 3
    padding = 1

    [[layers]]
    type = "ReLU"

    [[layers]]
    type = "Residual"
      [[layers.body]]
      type = "Conv2d"
      in_channels = 8
      out_channels = 16
      kernel_size = 3
      stride = 2
      padding = 1
      [[layers.body]]
      type = "ReLU"
      [[layers.body]]
      type = "Conv2d"
      in_channels = 16
      out_channels = 16
      kernel_size = 3
      padding = 1
      [[layers.shortcut]]
      type = "Conv2d"
      in_channels = 8
      out_channels = 16
      kernel_size = 1
      stride = 2

    [[layers]]
    type = "ReLU"

    [[layers]]
    type = "Concat"
      [[layers.branches]]
      type = "Conv2d"
      in_channels = 16
      out_channels = 8
      kernel_size = 1
      [[layers.branches]]
      type = "Sequential"
        [[layers.branches.layers]]
        type = "MaxPool2d"
        kernel_size = 3
        stride = 1
        padding = 1

    [[layers]]
    type = "AvgPool2d"
    kernel_size = 14

    [[layers]]
    type = "Flatten"

    [[layers]]
    type = "Linear"
    in_features = 24
    out_features = 10

    [train]
    optimizer = "adam"
    lr = 0.01
    batch_size = 64
""")

RESNET_INLINE = textwrap.dedent("""\
    layers = [
      {type = "Conv2d", in_channels = 1, out_channels = 8, kernel_size = 3, padding = 1},
      {type = "ReLU"},
      {type = "Residual", body = [{type = "Conv2d", in_channels = 8, out_channels = 16, kernel_size = 3, stride = 2, padding = 1}, {type = "ReLU"}, {type = "Conv2d", in_channels = 16, out_channels = 16, kernel_size = 3, padding = 1}], shortcut = [{type = "Conv2d", in_channels = 8, out_channels = 16, kernel_size = 1, stride = 2}]},
      {type = "ReLU"},
      {type = "Concat", branches = [{type = "Conv2d", in_channels = 16, out_channels = 8, kernel_size = 1}, [{type = "MaxPool2d", kernel_size = 3, stride = 1, padding = 1}]]},
      {type = "AvgPool2d", kernel_size = 14},
      {type = "Flatten"},
      {type = "Linear", in_features = 24, out_features = 10},
    ]
    [train]
    optimizer = "adam"
    lr = 0.01
    batch_size = 64
""")  # noqa: E501


def test_toml_arrays_of_tables_and_inline_tables_give_the_same_tree(tmp_path):
    readable, inline = tmp_path / "readable.toml", tmp_path / "inline.toml"
    readable.write_text(RESNET_TOML)
    inline.write_text(RESNET_INLINE)
    (a, train_a), (b, train_b) = load_spec(str(readable), 0), load_spec(str(inline), 0)
    assert layer_spec(a) == layer_spec(b)
    assert train_a == train_b == {"optimizer": "adam", "lr": 0.01, "batch_size": 64}
    assert a.output_shape((2, 1, 28, 28)) == (2, 10)
    for name, p in a.named_params().items():
        np.testing.assert_array_equal(p, b.named_params()[name])


@pytest.mark.parametrize("text, message", [
    ('layers = [{type = "ReLU"}]\n[train]\nmomentum = 0.9\n', r"\[train\] has unknown key "
                                                              r"'momentum'"),
    ('layers = [{type = "ReLU"}]\ntrian = 1\n', r"unknown key 'trian'"),
    ("layers = " + "[" * 100000 + "]" * 100000 + "\n", r"nests too deeply|needs a non-empty"),
])
def test_bad_specs_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(str(path))


def test_registry_knows_the_containers():
    assert {"Sequential", "Residual", "Concat"} <= set(numbaconv.get_layers())


def test_check_layer_catches_a_wrong_gradient_and_a_wrong_output_shape():
    class WrongGradient(numbaconv.Layer):
        def forward(self, x, training=False):
            return 2 * x

        def backward(self, grad_y, need_input_grad=True):
            return 2.1 * grad_y

    class WrongShape(WrongGradient):
        def output_shape(self, input_shape):
            return tuple(input_shape)[:1]

    with pytest.raises(AssertionError, match="by finite differences"):
        check_layer(WrongGradient(), (2, 3))
    with pytest.raises(AssertionError, match="output_shape says"):
        check_layer(WrongShape(), (2, 3))
