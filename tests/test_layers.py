"""Layers and Sequential: parity with torch.nn, shape checks, summary, state and config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from numbaconv import init
from numbaconv.layers import (
    LAYER_TYPES,
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    ShapeError,
    Sigmoid,
    Tanh,
)
from numbaconv.layers.containers import SummaryRow, format_summary, summary
from numbaconv.losses import softmax_cross_entropy
from numbaconv.testing import numeric_gradient

RTOL = 1e-5


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def rng(seed=0):
    return np.random.default_rng(seed)


def randn(shape, seed=0, dtype=np.float32):
    return rng(seed).standard_normal(shape).astype(dtype)


def assert_close(got, want, rtol=RTOL, what=""):
    """Within ``rtol`` relative to the reference's scale (elementwise rtol + scaled atol)."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-30),
                               err_msg=what)


def to_torch(torch, array, grad=False):
    t = torch.from_numpy(np.array(array, copy=True))
    return t.requires_grad_(grad)


def copy_params_to_torch(torch, layer, module):
    with torch.no_grad():
        for name, p in layer.params.items():
            getattr(module, name).copy_(torch.from_numpy(p))


def check_layer_vs_torch(torch, layer, module, x, seed=1):
    """Forward and all gradients of ``layer`` against ``module`` (same parameters)."""
    copy_params_to_torch(torch, layer, module)
    y = layer.forward(x)
    xt = to_torch(torch, x, grad=True)
    yt = module(xt)
    assert y.dtype == x.dtype
    assert_close(y, yt.detach().numpy(), what="forward")
    grad_y = randn(y.shape, seed, x.dtype)
    grad_x = layer.backward(grad_y)
    yt.backward(torch.from_numpy(grad_y))
    assert grad_x.dtype == x.dtype
    assert_close(grad_x, xt.grad.numpy(), what="grad_x")
    assert set(layer.grads) == set(layer.params)
    for name, g in layer.grads.items():
        assert g.dtype == layer.params[name].dtype
        assert_close(g, getattr(module, name).grad.numpy(), what=f"grad {name}")


# ----------------------------------------------------------------------------- Conv2d

CONV_CASES = [
    dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2),
         dilation=(1, 2)),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, bias=False),
    dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, groups=6),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", dilation=2),
    dict(in_channels=1, out_channels=6, kernel_size=5, padding=2),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in
                                                                     c.items()))
def test_conv2d_matches_torch(torch, case):
    layer = Conv2d(**case, rng=rng(3))
    module = torch.nn.Conv2d(**case)
    x = randn((2, case["in_channels"], 11, 12), seed=4)
    check_layer_vs_torch(torch, layer, module, x)


def test_conv2d_asymmetric_padding_matches_padded_torch(torch):
    layer = Conv2d(2, 3, 3, padding=((1, 2), (0, 1)), rng=rng(5))
    x = randn((2, 2, 7, 8), seed=6)
    y = layer.forward(x)
    xt = to_torch(torch, x, grad=True)
    wt = to_torch(torch, layer.params["weight"], grad=True)
    bt = to_torch(torch, layer.params["bias"], grad=True)
    yt = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (0, 1, 1, 2)), wt, bt)
    assert y.shape == yt.shape == layer.output_shape(x.shape)
    assert_close(y, yt.detach().numpy())
    gy = randn(y.shape, seed=7)
    gx = layer.backward(gy)
    yt.backward(torch.from_numpy(gy))
    assert_close(gx, xt.grad.numpy())
    assert_close(layer.grads["weight"], wt.grad.numpy())
    assert_close(layer.grads["bias"], bt.grad.numpy())


def test_conv2d_default_init_is_pytorch_bound_and_seeded():
    layer = Conv2d(16, 32, 3, rng=7)
    fan_in = 16 * 9
    bound = 1 / math.sqrt(fan_in)
    w, b = layer.params["weight"], layer.params["bias"]
    assert w.shape == (32, 16, 3, 3) and b.shape == (32,)
    assert w.dtype == b.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # uniform on [-bound, bound]: std bound / sqrt(3), and the range is used
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
    assert np.abs(w).max() > 0.95 * bound
    again = Conv2d(16, 32, 3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(again.params["weight"], w)
    np.testing.assert_array_equal(again.params["bias"], b)
    other = Conv2d(16, 32, 3, rng=8)
    assert not np.array_equal(other.params["weight"], w)


def test_conv2d_groups_fan_in_and_shapes():
    layer = Conv2d(8, 4, (3, 5), groups=4, rng=0)
    assert layer.params["weight"].shape == (4, 2, 3, 5)
    bound = 1 / math.sqrt(2 * 15)  # fan_in counts the channels of one group only
    assert bound * 0.9 < np.abs(layer.params["weight"]).max() <= bound
    with pytest.raises(ValueError, match="divisible by groups"):
        Conv2d(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="stride"):
        Conv2d(1, 1, 3, stride=2, padding="same")


def test_conv2d_float64_layer_and_dtype_mismatch():
    layer = Conv2d(2, 3, 3, rng=0, dtype=np.float64)
    assert layer.params["weight"].dtype == np.float64
    assert layer.config()["dtype"] == "float64"
    y = layer.forward(randn((1, 2, 5, 5), dtype=np.float64))
    assert y.dtype == np.float64
    with pytest.raises(TypeError, match="dtype"):
        layer.forward(randn((1, 2, 5, 5), dtype=np.float32))


# ----------------------------------------------------------------------------- pooling

MAX_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), ceil_mode=True),
    dict(kernel_size=3, stride=2, ceil_mode=True),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_maxpool2d_matches_torch(torch, case):
    layer = MaxPool2d(**case)
    module = torch.nn.MaxPool2d(**case)
    x = randn((2, 3, 9, 10), seed=8)
    assert layer.output_shape(x.shape) == tuple(module(to_torch(torch, x)).shape)
    check_layer_vs_torch(torch, layer, module, x)


AVG_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), divisor_override=5),
]


@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avgpool2d_matches_torch(torch, case):
    layer = AvgPool2d(**case)
    module = torch.nn.AvgPool2d(**case)
    x = randn((2, 3, 9, 10), seed=9)
    assert layer.output_shape(x.shape) == tuple(module(to_torch(torch, x)).shape)
    check_layer_vs_torch(torch, layer, module, x)


def test_pool_argument_checks():
    with pytest.raises(ValueError, match="half"):
        MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="divisor_override"):
        AvgPool2d(2, divisor_override=0)
    assert MaxPool2d(3).stride == 3
    assert AvgPool2d((2, 3)).stride == (2, 3)


# ----------------------------------------------------------------------------- Linear

@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(torch, shape, bias):
    layer = Linear(7, 4, bias=bias, rng=rng(10))
    module = torch.nn.Linear(7, 4, bias=bias)
    check_layer_vs_torch(torch, layer, module, randn(shape, seed=11))
    assert layer.output_shape(shape) == shape[:-1] + (4,)


def test_linear_default_init_and_dtype_check():
    layer = Linear(400, 120, rng=0)
    bound = 1 / math.sqrt(400)
    assert layer.params["weight"].shape == (120, 400)
    assert np.abs(layer.params["weight"]).max() <= bound
    assert np.abs(layer.params["bias"]).max() <= bound
    with pytest.raises(TypeError, match="float64"):
        layer.forward(np.zeros((2, 400)))  # float64 into float32 parameters


def finite_difference(f, array, eps=1e-6):
    """The gradient of scalar ``f()`` w.r.t. ``array`` by central differences."""
    return numeric_gradient(f, array, eps).astype(array.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [(256, 400, 120), (37, 9, 5), (3, 1, 70), (65, 130, 1)])
def test_matmul_kernel_matches_float64(dtype, sizes):
    """c += a @ b by register tiles: whole tiles, a last tile of pixels computed in scratch,
    six-row tiles and pairs, a lone last row computed twice (M = 37, 3, 65), against a
    float64 product."""
    from numbaconv.kernels.cpu.dense import matmul_acc

    m, k, p = sizes
    a, b = randn((m, k), seed=1, dtype=dtype), randn((k, p), seed=2, dtype=dtype)
    c = randn((m, p), seed=3, dtype=dtype)
    expected = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    matmul_acc(a, b, c)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(k) * 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("sizes", [(70, 300, 530), (5, 129, 64), (13, 17, 300), (1, 40, 20)])
def test_packed_matmul_matches_float64_and_the_unpacked_sums(dtype, transposed, sizes):
    """c += a @ B by packed panels (b as (K, P) or transposed (P, K)): several panels of taps
    (K > PANEL_TAPS, a tail short of a vector), blocks of columns with a masked tail, rows
    split among tasks in six-row tiles, a four-row and a single-row rest: against a float64
    product, and bit for bit the sums of :func:`matmul_acc`, which adds the taps in the same
    order. With ``overwrite`` the values in c are not read."""
    from numbaconv.kernels.cpu.dense import matmul_acc, packed_matmul_acc

    m, k, p = sizes
    a, b = randn((m, k), seed=1, dtype=dtype), randn((k, p), seed=2, dtype=dtype)
    start = randn((m, p), seed=3, dtype=dtype)
    c = start.copy()
    packed_matmul_acc(a, np.ascontiguousarray(b.T) if transposed else b, c, transposed, False)
    expected = start.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(k) * 4)
    unpacked = start.copy()
    matmul_acc(a, b, unpacked)
    np.testing.assert_array_equal(c, unpacked)
    c[:] = np.nan
    packed_matmul_acc(a, np.ascontiguousarray(b.T) if transposed else b, c, transposed, True)
    zero = np.zeros_like(start)
    matmul_acc(a, b, zero)
    np.testing.assert_array_equal(c, zero)


def test_product_packs_large_b_only():
    """product_acc sends a b of PACKED_B_BYTES or more to the packed kernel (a Linear's
    4096 x 4096 weight), a smaller one (LeNet's) to matmul_acc; both give c += a @ B."""
    from unittest import mock

    from numbaconv.kernels.cpu import dense

    assert dense.uses_packed(4096, 4096, 4) and not dense.uses_packed(400, 120, 4)
    a, b = randn((6, 8), seed=1), randn((8, 5), seed=2)
    for bytes_, kernel in ((1, "packed_matmul_acc"), (1 << 40, "matmul_acc")):
        with mock.patch.object(dense, "PACKED_B_BYTES", bytes_), \
                mock.patch.object(dense, kernel, wraps=getattr(dense, kernel)) as called:
            c = np.ones((6, 5), dtype=np.float32)
            dense.product_acc(a, np.ascontiguousarray(b.T), c, transposed=True)
            assert called.call_count == 1
            np.testing.assert_allclose(c, 1 + a @ b, rtol=1e-5)
            dense.product_acc(a, b, c, overwrite=True)
            np.testing.assert_allclose(c, a @ b, rtol=1e-5)


def test_linear_takes_non_contiguous_input_and_checks_grad_y():
    layer = Linear(6, 5, rng=0)
    x = randn((6, 9), seed=1).T  # (9, 6), Fortran order
    y = layer.forward(x)
    np.testing.assert_allclose(y, x @ layer.params["weight"].T + layer.params["bias"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"grad_y.*\(9, 5\)"):
        layer.backward(np.zeros((9, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        layer.backward(np.zeros((9, 5), np.float64))


def test_linear_backward_finite_difference():
    layer = Linear(5, 3, rng=12, dtype=np.float64)
    x = randn((4, 5), seed=13, dtype=np.float64)
    c = randn((4, 3), seed=14, dtype=np.float64)

    def loss():
        return float(np.sum(layer.forward(x) * c))

    layer.forward(x)
    grad_x = layer.backward(c)
    np.testing.assert_allclose(grad_x, finite_difference(loss, x), rtol=1e-7, atol=1e-9)
    for name in ("weight", "bias"):
        analytic = layer.grads[name].copy()
        numeric = finite_difference(loss, layer.params[name])
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9, err_msg=name)


# ----------------------------------------------------------------------------- activations

@pytest.mark.parametrize("name", ["ReLU", "Sigmoid", "Tanh"])
def test_activation_matches_torch(torch, name):
    layer = {"ReLU": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh}[name]()
    module = getattr(torch.nn, name)()
    x = randn((3, 4, 5, 6), seed=15) * 4
    x[0, 0, 0, :3] = (-100.0, 100.0, 0.0)
    check_layer_vs_torch(torch, layer, module, x)


def test_sigmoid_scaling_in_one_step_is_the_two_step_product():
    """The sigmoid's 2**k scaling by ldexp (with AVX-512: vscalefps) gives the two exact
    power-of-two multiplications' result for every k the sigmoid takes (-126..128), normal,
    subnormal and overflowing ones."""
    from numba import njit

    from numbaconv.kernels.cpu.activation import _ldexp32

    @njit
    def both(values, ks, one_step, two_steps):
        for i in range(values.size):
            k = ks[i]
            one_step[i] = _ldexp32(values[i], k)
            half = k >> 1
            scale_1 = np.int32((half + 127) << 23).view(np.float32)
            scale_2 = np.int32((k - half + 127) << 23).view(np.float32)
            two_steps[i] = (values[i] * scale_1) * scale_2

    rng = np.random.default_rng(3)
    ks = np.repeat(np.arange(-126, 129, dtype=np.int32), 400)
    values = rng.uniform(0.70, 1.42, ks.size).astype(np.float32)  # exp(r), |r| <= ln(2) / 2
    one_step, two_steps = np.empty_like(values), np.empty_like(values)
    both(values, ks, one_step, two_steps)
    np.testing.assert_array_equal(one_step, two_steps)
    assert np.isinf(one_step[ks == 128]).any()
    assert (one_step[ks == -126] < np.finfo(np.float32).tiny).any()  # subnormal


@pytest.mark.parametrize("cls", [ReLU, Sigmoid, Tanh])
def test_activation_keeps_float32_and_extreme_inputs_finite(cls):
    x = np.array([[-1e4, -88.0, -1.0, 0.0, 1.0, 88.0, 1e4, 3e38]], dtype=np.float32)
    layer = cls()
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # stable: never exp(+x)
        y = layer.forward(x)
        g = layer.backward(np.ones_like(x))
    assert y.dtype == g.dtype == np.float32
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(g))
    if cls is Sigmoid:
        assert y[0, 0] == 0.0 and y[0, -1] == 1.0 and y[0, 3] == 0.5


def test_sigmoid_float32_precision_for_negative_inputs():
    x = np.linspace(-30, 30, 1001, dtype=np.float32)
    y = Sigmoid().forward(x)
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(y, exact, rtol=1e-6, atol=0)  # relative even near 0


def test_sigmoid_float32_kernel_within_about_two_ulps_nan_and_infinities():
    # the float32 sigmoid computes its own vectorisable exp: check it over float32's range
    # down to -88.7, where the result is below float32's smallest normal but exp(88.7) finite
    x = np.concatenate([np.linspace(-88.7, 40, 200001, dtype=np.float32),
                        np.float32([-88.72, -1e-30, 0.0, 1e-30])])
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(Sigmoid().forward(x) - exact) / ulp) <= 2.5  # measured: 2.11
    special = Sigmoid().forward(np.float32([np.nan, np.inf, -np.inf, -95.0]))
    assert np.isnan(special[0]) and special[1] == 1.0 and special[2] == 0.0
    assert 0 <= special[3] < 1e-38
    np.testing.assert_array_equal(Sigmoid().forward(np.float64([-800.0, 800.0, 0.0])),
                                  [0.0, 1.0, 0.5])


@pytest.mark.parametrize("cls", [ReLU, Sigmoid, Tanh])
def test_activation_backward_finite_difference(cls):
    layer = cls()
    x = randn((3, 7), seed=16, dtype=np.float64) * 2
    x[np.abs(x) < 1e-3] = 0.5  # keep away from ReLU's kink
    c = randn((3, 7), seed=17, dtype=np.float64)
    layer.forward(x)
    grad = layer.backward(c)
    numeric = finite_difference(lambda: float(np.sum(layer.forward(x) * c)), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- Flatten, Dropout

def test_flatten_forward_backward_and_dims(torch):
    x = randn((2, 3, 4, 5), seed=18)
    for start, end in [(1, -1), (0, -1), (2, 3), (1, 2), (-3, -2)]:
        layer = Flatten(start, end)
        y = layer.forward(x)
        expected = torch.nn.Flatten(start, end)(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(y, expected)
        assert layer.output_shape(x.shape) == y.shape
        np.testing.assert_array_equal(layer.backward(y), x)
    with pytest.raises(ValueError, match="cannot flatten"):
        Flatten(2, 1).output_shape((2, 3, 4))


def test_dropout_eval_is_identity():
    layer = Dropout(0.5, rng=0)
    x = randn((4, 10), seed=19)
    assert layer.forward(x) is x
    assert layer.forward(x, training=False) is x
    g = randn((4, 10), seed=20)
    assert layer.backward(g) is g
    assert layer.mask is None


def test_dropout_training_scales_and_backward_uses_the_same_mask():
    p = 0.3
    layer = Dropout(p, rng=1)
    x = randn((200, 500), seed=21)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert abs(kept.mean() - (1 - p)) < 0.01
    g = randn(x.shape, seed=22)
    gx = layer.backward(g)
    assert gx.dtype == np.float32
    np.testing.assert_allclose(gx[kept], g[kept] / (1 - p), rtol=1e-6)
    assert np.all(gx[~kept] == 0)
    # the expectation is preserved
    ones = np.ones((1000, 1000), np.float32)
    assert abs(layer.forward(ones, training=True).mean() - 1.0) < 0.01


def test_dropout_is_seedable_and_edge_probabilities():
    x = randn((50, 50), seed=23)
    a = Dropout(0.5, rng=42).forward(x, training=True)
    b = Dropout(0.5, rng=np.random.default_rng(42)).forward(x, training=True)
    np.testing.assert_array_equal(a, b)
    layer = Dropout(0.5, rng=42)
    first = layer.forward(x, training=True)
    assert not np.array_equal(first, layer.forward(x, training=True))  # fresh mask per call
    np.testing.assert_array_equal(Dropout(0.0).forward(x, training=True), x)
    assert not np.any(Dropout(1.0).forward(x, training=True))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            Dropout(bad)


# ----------------------------------------------------------------------------- the contract

ALL_LAYERS = [
    lambda: Conv2d(1, 6, 5, padding=2, rng=0),
    lambda: Conv2d(4, 8, (3, 5), stride=(2, 1), padding=((1, 2), (0, 1)),
                   dilation=2, groups=2, bias=False, rng=0),
    lambda: Conv2d(2, 2, 3, padding="same", rng=0),
    lambda: MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    lambda: AvgPool2d((2, 3), padding=1, count_include_pad=False, divisor_override=4),
    lambda: Linear(400, 120, rng=0),
    lambda: Linear(3, 2, bias=False, rng=0, dtype=np.float64),
    ReLU, Sigmoid, Tanh,
    lambda: Flatten(1, 2),
    lambda: Dropout(0.25),
]


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_config_rebuilds_the_layer_and_is_json(make):
    layer = make()
    config = layer.config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = type(layer)(**config)
    assert rebuilt.config() == config
    assert repr(rebuilt) == repr(layer)
    assert {k: v.shape for k, v in rebuilt.params.items()} == \
        {k: v.shape for k, v in layer.params.items()}
    assert LAYER_TYPES[type(layer).__name__] is type(layer)
    assert set(layer.params) == set(layer.grads)
    for name, p in layer.params.items():
        assert layer.grads[name].shape == p.shape and layer.grads[name].dtype == p.dtype


def test_repr_matches_pytorch(torch):
    nn = torch.nn
    pairs = [
        (Conv2d(1, 6, kernel_size=5, padding=2), nn.Conv2d(1, 6, kernel_size=5, padding=2)),
        (Conv2d(6, 16, 5), nn.Conv2d(6, 16, 5)),
        (Conv2d(4, 8, 3, stride=2, dilation=2, groups=2, bias=False),
         nn.Conv2d(4, 8, 3, stride=2, dilation=2, groups=2, bias=False)),
        (Conv2d(2, 2, 3, padding="same"), nn.Conv2d(2, 2, 3, padding="same")),
        (MaxPool2d(2, 2), nn.MaxPool2d(2, 2)),
        (MaxPool2d((3, 2), padding=1, ceil_mode=True),
         nn.MaxPool2d((3, 2), padding=1, ceil_mode=True)),
        (AvgPool2d(kernel_size=2, stride=2), nn.AvgPool2d(kernel_size=2, stride=2)),
        (Linear(400, 120), nn.Linear(400, 120)),
        (Linear(4, 2, bias=False), nn.Linear(4, 2, bias=False)),
        (ReLU(), nn.ReLU()), (Sigmoid(), nn.Sigmoid()), (Tanh(), nn.Tanh()),
        (Flatten(), nn.Flatten()),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


def test_output_shape_errors_name_the_layer_and_shapes():
    with pytest.raises(ValueError, match=r"Linear.*expects 400 input features, got 256 from "
                                         r"shape \(1, 256\)"):
        Linear(400, 120).output_shape((1, 256))
    with pytest.raises(ValueError, match=r"Conv2d\(1, 6.*expects 1 input channels, got 3 "
                                         r"from shape \(2, 3, 28, 28\)"):
        Conv2d(1, 6, 5).output_shape((2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"4-D.*shape \(2, 784\)"):
        Conv2d(1, 6, 5).output_shape((2, 784))
    with pytest.raises(ValueError, match="too small"):
        Conv2d(1, 6, 5).output_shape((2, 1, 4, 4))
    with pytest.raises(ValueError, match="too small"):
        AvgPool2d(2).output_shape((1, 1, 1, 1))
    # the forward checks too, before any computation
    with pytest.raises(ShapeError, match="input channels"):
        Conv2d(3, 4, 3).forward(np.zeros((1, 2, 8, 8), np.float32))
    assert Conv2d(1, 6, 5, padding=2).output_shape((3, 1, 28, 28)) == (3, 6, 28, 28)
    assert ReLU().output_shape([2, 3]) == (2, 3)


def test_geometry_and_flops():
    assert Conv2d(1, 6, 5, stride=2, dilation=3).geometry == ((5, 5), (2, 2), (3, 3))
    assert MaxPool2d(3, 2, dilation=2).geometry == (3, 2, 2)
    assert AvgPool2d(2).geometry == (2, 2, 1)
    assert ReLU().geometry == (1, 1, 1) and Flatten().geometry == (1, 1, 1)
    # conv: 2 * N * C_out * H_out * W_out * (C_in / groups) * kh * kw
    assert Conv2d(4, 6, 3, groups=2).flops((2, 4, 10, 10)) == 2 * 2 * 6 * 8 * 8 * 2 * 9
    assert Linear(400, 120).flops((8, 400)) == 2 * 8 * 400 * 120
    assert ReLU().flops((8, 400)) == 0 and MaxPool2d(2).flops((1, 1, 4, 4)) == 0


def test_backward_overwrites_parameter_grads_in_place():
    layer = Conv2d(2, 3, 3, rng=0)
    x = randn((2, 2, 6, 6), seed=24)
    grads = layer.grads
    g_w = grads["weight"]
    y = layer.forward(x)
    gy = randn(y.shape, seed=25)
    layer.backward(gy)
    first = g_w.copy()
    layer.forward(x)
    layer.backward(gy)
    assert layer.grads["weight"] is g_w  # same array object, overwritten
    np.testing.assert_array_equal(g_w, first)  # not accumulated
    assert np.any(first != 0)

    lin = Linear(4, 3, rng=0)
    x = randn((5, 4), seed=26)
    lin.forward(x)
    lin.backward(np.ones((5, 3), np.float32))
    once = lin.grads["weight"].copy()
    lin.forward(x)
    lin.backward(np.ones((5, 3), np.float32))
    np.testing.assert_array_equal(lin.grads["weight"], once)


@pytest.mark.parametrize("make", [lambda: Conv2d(1, 1, 3), lambda: Linear(2, 2), ReLU, Sigmoid,
                                  Tanh, Flatten, lambda: MaxPool2d(2), lambda: AvgPool2d(2),
                                  Dropout])
def test_backward_before_forward_raises(make):
    with pytest.raises(RuntimeError, match="before forward"):
        make().backward(np.zeros((1, 1, 2, 2), np.float32))


# ----------------------------------------------------------------------------- Sequential

def lenet(seed=0, rng_=None):
    """D2L's LeNet-5 (sigmoid, average pooling) with Xavier-uniform weights."""
    g = np.random.default_rng(seed) if rng_ is None else rng_
    net = Sequential([
        Conv2d(1, 6, kernel_size=5, padding=2, rng=g), Sigmoid(),
        AvgPool2d(kernel_size=2, stride=2),
        Conv2d(6, 16, kernel_size=5, rng=g), Sigmoid(),
        AvgPool2d(kernel_size=2, stride=2),
        Flatten(),
        Linear(16 * 5 * 5, 120, rng=g), Sigmoid(),
        Linear(120, 84, rng=g), Sigmoid(),
        Linear(84, 10, rng=g),
    ])
    init.xavier_uniform_weights_(net, g)
    return net


def torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))


def relu_net(seed=0):
    g = np.random.default_rng(seed)
    return Sequential(
        Conv2d(3, 8, 3, padding=1, rng=g), ReLU(),
        MaxPool2d(3, stride=2, padding=1),
        Conv2d(8, 8, 3, stride=2, groups=2, dilation=1, rng=g), Tanh(),
        Dropout(0.5, rng=g),
        Flatten(),
        Linear(8 * 3 * 3, 16, rng=g), ReLU(),
        Linear(16, 5, rng=g))


def torch_relu_net(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.Tanh(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 16), nn.ReLU(),
        nn.Linear(16, 5))


@pytest.mark.parametrize("build", ["lenet", "relu_net"])
def test_sequential_matches_torch_sequential(torch, build):
    if build == "lenet":
        net, tnet, x_shape, k = lenet(0), torch_lenet(torch), (8, 1, 28, 28), 10
    else:
        net, tnet, x_shape, k = relu_net(0), torch_relu_net(torch), (6, 3, 16, 16), 5
    tnet.eval()  # dropout off on both sides
    tnet.load_state_dict({name: torch.from_numpy(p.copy()) for name, p in
                          net.named_params().items()})
    x = randn(x_shape, seed=27)
    labels = rng(28).integers(0, k, x_shape[0])

    logits = net.forward(x)
    loss, grad_logits = softmax_cross_entropy(logits, labels)
    net.backward(grad_logits)

    tlogits = tnet(torch.from_numpy(x))
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(labels))
    tloss.backward()

    assert logits.dtype == np.float32
    assert_close(logits, tlogits.detach().numpy(), what="logits")
    assert loss == pytest.approx(tloss.item(), rel=RTOL)
    tgrads = {name: p.grad.numpy() for name, p in tnet.named_parameters()}
    grads = net.named_grads()
    assert set(grads) == set(tgrads)
    for name, g in grads.items():
        assert g.dtype == np.float32
        assert_close(g, tgrads[name], what=name)


def test_lenet_summary_receptive_fields_params_and_flops():
    net = lenet()
    root, *rows = summary(net, (1, 1, 28, 28))
    assert all(isinstance(r, SummaryRow) for r in rows)
    assert (root.path, root.name, root.output_shape, root.n_params) == \
        ("", "Sequential", (1, 10), 61706)
    assert [r.path for r in rows] == [str(i) for i in range(12)]
    assert [r.name for r in rows] == ["Conv2d", "Sigmoid", "AvgPool2d", "Conv2d", "Sigmoid",
                                      "AvgPool2d", "Flatten", "Linear", "Sigmoid", "Linear",
                                      "Sigmoid", "Linear"]
    assert [r.output_shape for r in rows] == [
        (1, 6, 28, 28), (1, 6, 28, 28), (1, 6, 14, 14), (1, 16, 10, 10), (1, 16, 10, 10),
        (1, 16, 5, 5), (1, 400), (1, 120), (1, 120), (1, 84), (1, 84), (1, 10)]
    # 5x5 conv -> 5; 2x2/2 pool -> 6 (jump 2); 5x5 conv -> 6 + 4*2 = 14; pool -> 16 (jump 4);
    # every Linear unit sees the whole 28x28 input
    assert [r.receptive_field for r in rows] == [
        (5, 5), (5, 5), (6, 6), (14, 14), (14, 14), (16, 16), (16, 16),
        (28, 28), (28, 28), (28, 28), (28, 28), (28, 28)]
    assert sum(r.n_params for r in rows) == 61706 == net.num_params()
    assert [r.n_params for r in rows if r.n_params] == [156, 2416, 48120, 10164, 850]
    assert rows[0].flops == 2 * 6 * 28 * 28 * 25
    assert rows[3].flops == 2 * 16 * 10 * 10 * 6 * 25
    assert rows[7].flops == 2 * 400 * 120
    assert root.flops == sum(r.flops for r in rows)
    table = format_summary([root, *rows])
    assert "61,706" in table and "14x14" in table and "AvgPool2d" in table


def test_summary_of_non_image_input_has_no_receptive_field():
    rows = summary(Sequential(Linear(784, 10), ReLU()), (3, 784))
    assert [r.receptive_field for r in rows] == [None, None, None]
    assert rows[1].flops == 2 * 3 * 784 * 10


def test_output_shape_error_names_position_and_type():
    net = Sequential(Conv2d(1, 6, 5, padding=2), Sigmoid(), AvgPool2d(2, 2),
                     Conv2d(6, 16, 5), Sigmoid(), Flatten(), Linear(400, 120))
    assert Sequential(net.layers[:5]).output_shape((1, 1, 28, 28)) == (1, 16, 10, 10)
    with pytest.raises(ValueError) as info:
        net.output_shape((1, 1, 28, 28))
    assert str(info.value) == ("layer 6 (Linear): expects 400 input features, got 1600 from "
                               "shape (1, 1600)")
    assert info.value.index == 6
    with pytest.raises(ValueError, match=r"^layer 0 \(Conv2d\): expects 1 input channels, got 3"):
        net.output_shape((1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"^layer 5 \(Linear\): expects 400 input features, "
                                         r"got 256 from shape \(1, 256\)"):
        Sequential(Conv2d(1, 16, 1), MaxPool2d(2), MaxPool2d(2), MaxPool2d(2), Flatten(),
                   Linear(400, 120)).output_shape((1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"^layer 2 \(Linear\)"):
        summary(Sequential(Flatten(), ReLU(), Linear(10, 2)), (1, 3, 2, 2))


def test_sequential_is_list_like_and_params_are_the_layers_arrays():
    net = lenet()
    assert len(net) == 12
    assert isinstance(net[0], Conv2d) and isinstance(net[-1], Linear)
    assert [type(layer) for layer in net] == [type(layer) for layer in net.layers]
    head = net[:3]
    assert isinstance(head, Sequential) and len(head) == 3 and head[0] is net[0]
    params = net.named_params()
    assert list(params) == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
                            "9.weight", "9.bias", "11.weight", "11.bias"]
    assert params["0.weight"] is net[0].params["weight"]
    assert net.named_grads()["11.bias"] is net[11].grads["bias"]
    assert repr(net).startswith("Sequential(\n  (0): Conv2d(1, 6, kernel_size=(5, 5)")
    with pytest.raises(TypeError, match="not a numbaconv.layers.Layer"):
        Sequential([Linear(2, 2), "relu"])
    assert Sequential(Linear(2, 2)).append(ReLU())[1].__class__ is ReLU


def test_xavier_init_on_lenet_weights_keeps_default_biases():
    net = lenet(seed=5)
    for i, (fan_in, fan_out) in {0: (25, 150), 3: (150, 400), 7: (400, 120), 9: (120, 84),
                                 11: (84, 10)}.items():
        w = net[i].params["weight"]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
        assert w.dtype == np.float32
        assert np.abs(net[i].params["bias"]).max() <= 1 / math.sqrt(fan_in)


def test_state_dict_round_trip(tmp_path):
    net = lenet(seed=1)
    state = net.state_dict()
    assert state["0.weight"] is not net[0].params["weight"]  # a copy
    state["0.weight"][...] = 0
    assert np.any(net[0].params["weight"] != 0)
    state = net.state_dict()

    np.savez(tmp_path / "lenet.npz", **state)
    other = lenet(seed=2)
    x = randn((2, 1, 28, 28), seed=29)
    assert not np.allclose(other.forward(x), net.forward(x))
    held = other.named_params()
    with np.load(tmp_path / "lenet.npz") as loaded:
        other.load_state_dict(loaded)
    np.testing.assert_array_equal(other.forward(x), net.forward(x))
    for name, p in other.named_params().items():
        assert p is held[name] and p.dtype == np.float32  # loaded in place


def test_load_state_dict_errors_name_keys_and_change_nothing():
    net = lenet(seed=1)
    before = net.state_dict()
    bad = lenet(seed=2).state_dict()
    del bad["3.bias"]
    bad["12.weight"] = np.zeros(3, np.float32)
    bad["7.weight"] = np.zeros((120, 256), np.float32)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(bad)
    message = str(info.value)
    assert "3.bias" in message and "12.weight" in message
    assert "'7.weight'" in message and "(120, 256)" in message and "(120, 400)" in message
    for name, p in net.named_params().items():
        np.testing.assert_array_equal(p, before[name])


def test_config_round_trip_rebuilds_the_network():
    net = relu_net()
    config = net.config()
    assert config["layers"][0] == {"type": "Conv2d", "in_channels": 3, "out_channels": 8,
                         "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1],
                         "dilation": [1, 1], "groups": 1, "bias": True}
    assert json.loads(json.dumps(config)) == config
    rebuilt = Sequential.from_config(json.loads(json.dumps(config)), rng=3)
    assert rebuilt.config() == config
    assert repr(rebuilt) == repr(net)
    assert rebuilt.output_shape((2, 3, 16, 16)) == net.output_shape((2, 3, 16, 16)) == (2, 5)
    rebuilt.load_state_dict(net.state_dict())
    x = randn((2, 3, 16, 16), seed=30)
    np.testing.assert_array_equal(rebuilt.forward(x), net.forward(x))
    with pytest.raises(ValueError, match="unknown layer type 'Swish'"):
        Sequential.from_config([{"type": "Swish"}])


class Square(Layer):
    """A plugin written the short way: no super().__init__()."""

    def __init__(self):
        self.x = None

    def forward(self, x, training=False):
        self.x = x
        return x * x

    def backward(self, grad_y, need_input_grad=True):
        return 2 * self.x * grad_y


def test_parameter_free_plugin_layer_in_sequential():
    layer = Square()
    assert layer.params == {} and layer.grads == {}
    assert layer.output_shape((2, 3)) == (2, 3)
    assert layer.geometry == (1, 1, 1) and layer.flops((2, 3)) == 0
    assert layer.config() == {} and repr(layer) == "Square()"
    net = Sequential(Linear(3, 4, rng=0), Square(), Linear(4, 2, rng=1))
    x = randn((5, 3), seed=31, dtype=np.float32)
    y = net.forward(x, training=True)
    expected = (x @ net[0].params["weight"].T + net[0].params["bias"]) ** 2 \
        @ net[2].params["weight"].T + net[2].params["bias"]
    assert_close(y, expected)
    c = randn(y.shape, seed=32)
    gx = net.backward(c)
    assert list(net.named_params()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    h = x @ net[0].params["weight"].T + net[0].params["bias"]
    gh = (c @ net[2].params["weight"]) * 2 * h
    assert_close(net.named_grads()["0.weight"], gh.T @ x)
    assert_close(gx, gh @ net[0].params["weight"])
    assert net.output_shape((5, 3)) == (5, 2)
    rows = summary(net, (5, 3))[1:]
    assert rows[1].name == "Square" and rows[1].n_params == 0
    assert Sequential.from_config(net.config(), layer_types={"Square": Square})[1].__class__ \
        is Square


def test_backward_without_input_grad_gives_the_same_parameter_grads():
    x = randn((3, 1, 28, 28), seed=33)
    for first in (Conv2d(1, 4, 5, rng=0), Sigmoid()):
        net = Sequential(first, Flatten(), Linear(4 * 24 * 24 if first.params else 784, 3,
                                                  rng=1))
        gy = randn((3, 3), seed=34)
        net.forward(x)
        assert net.backward(gy) is not None
        full = {k: g.copy() for k, g in net.named_grads().items()}
        net.forward(x)
        assert net.backward(gy, need_input_grad=False) is None
        for k, g in net.named_grads().items():
            np.testing.assert_array_equal(g, full[k], err_msg=k)
    layer = Linear(4, 2, rng=0)
    layer.forward(randn((3, 4)))
    assert layer.backward(randn((3, 2)), need_input_grad=False) is None
    assert np.any(layer.grads["weight"] != 0)


def test_sequential_training_flag_reaches_dropout():
    net = Sequential(Dropout(0.5, rng=0))
    x = np.ones((100, 100), np.float32)
    assert net.forward(x) is x
    y = net.forward(x, training=True)
    assert set(np.unique(y)) == {0.0, 2.0}
    np.testing.assert_array_equal(net.backward(x), y)


def test_forward_error_notes_the_layer():
    net = Sequential(Flatten(), Linear(4, 2))
    with pytest.raises(ValueError) as info:
        net.forward(np.zeros((1, 5), np.float32))
    notes = getattr(info.value, "__notes__", ["in forward of layer 1 (Linear)"])
    assert "in forward of layer 1 (Linear)" in notes


def test_relu_passes_the_gradient_where_the_output_is_nan():
    torch = pytest.importorskip("torch")
    x = np.array([np.nan, -1.0, 2.0], dtype=np.float32)
    layer = ReLU()
    layer.forward(x, training=True)
    got = layer.backward(np.ones(3, np.float32))
    tx = torch.tensor(x, requires_grad=True)
    torch.relu(tx).backward(torch.ones(3))
    np.testing.assert_array_equal(got, tx.grad.numpy())
