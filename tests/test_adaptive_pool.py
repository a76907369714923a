"""AdaptiveAvgPool2d, AdaptiveMaxPool2d (and their functional forms) against PyTorch: window
arithmetic, indices, ties and NaN, gradients; numbaconv.testing.check_layer; Identity as a
Concat branch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import LAYOUTS, assert_close, layout, require_torch

import numbaconv
from numbaconv import functional as F
from numbaconv.layers import (
    LAYER_TYPES,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    Concat,
    Conv2d,
    Identity,
    Sequential,
    ShapeError,
)
from numbaconv.layers.containers import summary
from numbaconv.testing import check_layer


@pytest.fixture(scope="module")
def torch():
    return require_torch()


def distinct(rng, shape):
    """Inputs without ties (max pooling's gradient is then smooth)."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0


# output sizes: global, divisible, overlapping windows, larger than the input, None entries
SIZES = [1, (1, 1), (2, 3), (3, 2), 4, (7, 6), (9, 10), (None, 2), (3, None), (None, None)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_adaptive_pools_match_torch(torch, size, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7, 6)).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, size)
    y = F.adaptive_avg_pool2d(x, size)
    assert_close(y, ty.detach().numpy(), dtype, "avg")
    grad_y = rng.normal(size=y.shape).astype(dtype)
    ty.backward(torch.from_numpy(grad_y))
    assert_close(F.adaptive_avg_pool2d_backward(grad_y, x.shape), tx.grad.numpy(), dtype,
                 "avg backward")

    tx = torch.from_numpy(x).requires_grad_()
    ty, t_indices = torch.nn.functional.adaptive_max_pool2d(tx, size, return_indices=True)
    y, indices = F.adaptive_max_pool2d(x, size, return_indices=True)
    assert_close(y, ty.detach().numpy(), dtype, "max")
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, t_indices.numpy())
    ty.backward(torch.from_numpy(grad_y))
    assert_close(F.adaptive_max_pool2d_backward(grad_y, indices, x.shape), tx.grad.numpy(),
                 dtype, "max backward")


@pytest.mark.parametrize("kind", LAYOUTS)
def test_any_input_layout(torch, kind):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 2, 5, 6))
    for size in ((1, 1), (2, 4)):
        expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), size).numpy()
        assert_close(F.adaptive_avg_pool2d(layout(x, kind), size), expected, np.float64, kind)
        expected = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(x), size).numpy()
        assert_close(F.adaptive_max_pool2d(layout(x, kind), size), expected, np.float64, kind)
    grad_y = rng.normal(size=(2, 2, 1, 1))
    assert_close(F.adaptive_avg_pool2d_backward(layout(grad_y, kind), x.shape),
                 np.broadcast_to(grad_y / 30, x.shape), np.float64, "global backward")


def test_max_ties_nan_and_infinities_follow_torch(torch):
    x = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [3.0, np.nan, 2.0, np.nan],
                    [-np.inf, -np.inf, 5.0, 5.0]]]], dtype=np.float32)
    for size in ((1, 1), (2, 2), (3, 3), (1, 4)):
        ty, t_indices = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(x), size,
                                                                return_indices=True)
        y, indices = F.adaptive_max_pool2d(x, size, return_indices=True)
        np.testing.assert_array_equal(y, ty.numpy())  # NaNs in the same places
        np.testing.assert_array_equal(indices, t_indices.numpy(), err_msg=str(size))
    only_minus_inf = np.full((1, 1, 2, 2), -np.inf, np.float32)
    y, indices = F.adaptive_max_pool2d(only_minus_inf, 1, return_indices=True)
    assert y[0, 0, 0, 0] == -np.inf and indices[0, 0, 0, 0] == 0


def test_global_average_is_one_pass_over_each_plane():
    """(1, 1) takes the plane-sum kernels; their results agree with the general windows'."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, 9, 11)).astype(np.float32)
    y = F.adaptive_avg_pool2d(x, 1)
    assert y.shape == (3, 4, 1, 1)
    np.testing.assert_allclose(y[:, :, 0, 0], x.astype(np.float64).mean(axis=(2, 3)),
                               rtol=1e-6)
    grad = F.adaptive_avg_pool2d_backward(np.ones_like(y), x.shape)
    np.testing.assert_array_equal(grad, np.full(x.shape, 1 / 99, np.float32))
    empty = F.adaptive_avg_pool2d(np.zeros((0, 4, 3, 3), np.float32), 1)
    assert empty.shape == (0, 4, 1, 1)


@pytest.mark.parametrize("make,shape", [
    (lambda: AdaptiveAvgPool2d(1), (2, 3, 5, 4)),
    (lambda: AdaptiveAvgPool2d((3, None)), (2, 2, 7, 3)),
    (lambda: AdaptiveMaxPool2d((2, 3)), (2, 2, 5, 7)),
    (lambda: AdaptiveMaxPool2d(1), (3, 2, 4, 4)),
    (Identity, (2, 3, 4)),
], ids=["avg-global", "avg-none", "max", "max-global", "identity"])
def test_the_layers_keep_the_layer_contract(make, shape):
    check_layer(make(), shape, input_values=distinct)


def test_layers_config_repr_registry_and_errors(torch):
    pairs = [(AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1)),
             (AdaptiveAvgPool2d((2, None)), torch.nn.AdaptiveAvgPool2d((2, None))),
             (AdaptiveMaxPool2d((1, 1)), torch.nn.AdaptiveMaxPool2d((1, 1))),
             (AdaptiveMaxPool2d([3, 4]), torch.nn.AdaptiveMaxPool2d((3, 4))),
             (Identity(), torch.nn.Identity())]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
        config = ours.config()
        assert json.loads(json.dumps(config)) == config
        assert repr(type(ours)(**config)) == repr(ours)
        assert LAYER_TYPES[type(ours).__name__] is type(ours)
        assert numbaconv.get_layers()[type(ours).__name__] is type(ours)
        assert ours.params == {} and ours.buffers == {}
    assert AdaptiveAvgPool2d((2, None)).output_shape((1, 3, 5, 6)) == (1, 3, 2, 6)
    assert AdaptiveMaxPool2d(7).output_shape((4, 3, 2, 2)) == (4, 3, 7, 7)
    for bad in (0, -1, (1, 0), (1, 2, 3), 2.5, "1", (None, 1.5), True, None):
        with pytest.raises((TypeError, ValueError), match="output_size"):
            AdaptiveAvgPool2d(bad)
    with pytest.raises(ShapeError, match=r"AdaptiveAvgPool2d\(output_size=1\): expects a 4-D"):
        AdaptiveAvgPool2d(1).output_shape((3, 5, 5))
    with pytest.raises(ShapeError, match=r"at least 1x1, got shape \(1, 2, 0, 3\)"):
        AdaptiveMaxPool2d(1).forward(np.zeros((1, 2, 0, 3), np.float32))
    with pytest.raises(ValueError, match="grad_y shape .* does not fit input_shape"):
        F.adaptive_avg_pool2d_backward(np.zeros((1, 2, 1, 1)), (1, 3, 4, 4))
    with pytest.raises(ValueError, match="indices must be int64"):
        F.adaptive_max_pool2d_backward(np.zeros((1, 2, 1, 1)), np.zeros((1, 2, 1, 1)),
                                       (1, 2, 4, 4))
    for make in (lambda: AdaptiveAvgPool2d(1), lambda: AdaptiveMaxPool2d(2)):
        with pytest.raises(RuntimeError, match="before forward"):
            make().backward(np.zeros((1, 1, 2, 2), np.float32))


def test_global_pool_sees_the_whole_input_in_the_summary():
    model = Sequential(Conv2d(1, 2, 3, rng=0), AdaptiveAvgPool2d(1))
    rows = summary(model, (1, 1, 9, 9))
    assert rows[-1].output_shape == (1, 2, 1, 1) and rows[-1].receptive_field == (9, 9)
    assert AdaptiveAvgPool2d(1).global_field and not AdaptiveAvgPool2d(2).global_field


def test_identity_branch_of_concat_matches_torch(torch):
    """DenseNet's pattern: the input beside a convolution of it, joined on the channels."""
    rng = np.random.default_rng(3)
    conv = Conv2d(2, 3, 3, padding=1, rng=0)
    block = Concat(Identity(), [conv])
    x = rng.normal(size=(2, 2, 4, 5)).astype(np.float32)
    y = block.forward(x, training=True)
    assert block.branches[0].forward(x) is x
    t_conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        t_conv.weight.copy_(torch.from_numpy(conv.params["weight"]))
        t_conv.bias.copy_(torch.from_numpy(conv.params["bias"]))
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.cat([torch.nn.Identity()(tx), t_conv(tx)], dim=1)
    assert_close(y, ty.detach().numpy(), np.float32, "y")
    grad_y = rng.normal(size=y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(grad_y))
    assert_close(block.backward(grad_y), tx.grad.numpy(), np.float32, "grad_x")
    assert_close(conv.grads["weight"], t_conv.weight.grad.numpy(), np.float32, "grad weight")
    assert Identity().output_shape((2, 7)) == (2, 7) and Identity().flops((2, 7)) == 0
    spec = [{"type": "Concat", "branches": [[{"type": "Identity"}],
                                            [{"type": "AdaptiveAvgPool2d",
                                              "output_size": [None, 5]}]]}]
    built = Sequential.from_config(spec, layer_types=numbaconv.get_layers())
    assert built.output_shape((1, 2, 4, 5)) == (1, 4, 4, 5)
