"""Fusion of conv -> activation -> pool in ``Sequential`` (``numbaconv.layers.fusion``).

The fused stage must give the unfused layers' results bit for bit (forward, input gradient,
parameter gradients), fuse only what its kernel computes exactly, and its kernels must agree
with a float64 NumPy reference, including ties, NaN and infinities.
"""

from __future__ import annotations

import numpy as np
import pytest

from numbaconv import functional as F
from numbaconv.kernels.cpu import activation as K
from numbaconv.layers import (
    AvgPool2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)
from numbaconv.layers.fusion import ConvActPool, fusable
from numbaconv.testing import finite_difference

ACTIVATIONS = {"sigmoid": Sigmoid, "relu": ReLU}
POOLS = {"avg": AvgPool2d, "max": MaxPool2d}


def _pair(activation, pool, dtype, kernel=2, size=(9, 11), padding=1, seed=0):
    """Two equal networks (conv, act, pool, conv, act, pool, flatten, linear), fused and not."""
    def build(fuse):
        rng = np.random.default_rng(seed)
        return Sequential([
            Conv2d(2, 3, 3, padding=padding, rng=rng, dtype=dtype), ACTIVATIONS[activation](),
            POOLS[pool](kernel),
            Conv2d(3, 4, 2, rng=rng, dtype=dtype), ACTIVATIONS[activation](),
            POOLS[pool](kernel, stride=kernel),
            Flatten(), Linear(4 * _flat(size, kernel, padding), 5, rng=rng, dtype=dtype),
        ], fuse=fuse)
    x = np.random.default_rng(seed + 1).standard_normal((3, 2) + size).astype(dtype) * 2
    return build(True), build(False), x


def _flat(size, kernel, padding):
    h, w = size
    h, w = (h + 2 * padding - 2) // kernel, (w + 2 * padding - 2) // kernel  # conv 3, pool
    return ((h - 1) // kernel) * ((w - 1) // kernel)  # conv 2, pool


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel, size", [(2, (9, 11)), (2, (12, 12)), (3, (13, 17))])
def test_fused_network_equals_unfused_bit_for_bit(activation, pool, dtype, kernel, size):
    fused_net, plain_net, x = _pair(activation, pool, dtype, kernel, size)
    fuses = kernel == 2  # the fused kernels know D2L's 2x2 windows only
    assert [s.fused is not None for s in fused_net.stages()] == [fuses] * 2 + [False] * (
        2 if fuses else 6)
    assert all(s.fused is None for s in plain_net.stages())
    for training in (True, False):
        y_fused = fused_net.forward(x, training=training)
        y_plain = plain_net.forward(x, training=training)
        np.testing.assert_array_equal(y_fused, y_plain)
    assert y_fused.dtype == dtype
    g = np.random.default_rng(5).standard_normal(y_plain.shape).astype(dtype)
    np.testing.assert_array_equal(fused_net.backward(g), plain_net.backward(g))
    for (name, a), b in zip(fused_net.named_grads().items(),
                            plain_net.named_grads().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert fused_net.backward(g, need_input_grad=False) is None  # first conv: no input grad
    for (name, a), b in zip(fused_net.named_grads().items(),
                            plain_net.named_grads().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_pass_convolution_activation_pool_equals_the_layers(activation, pool, dtype):
    """The stage's one-pass kernel (kernels/cpu/conv_act_pool.py) over several blocks of
    rows, the last one odd (31 rows: blocks of 26 and 5), groups, a dilation, no bias."""
    rng = np.random.default_rng(4)

    def build(fuse):
        layers = [Conv2d(4, 64, 3, padding=(1, 2), dilation=(1, 2), groups=2, bias=False,
                         rng=np.random.default_rng(1), dtype=dtype),
                  ACTIVATIONS[activation](), POOLS[pool](2)]
        return Sequential(layers, fuse=fuse)

    fused_net, plain_net = build(True), build(False)
    x = rng.standard_normal((2, 4, 31, 70)).astype(dtype)
    conv = fused_net[0]
    assert F._conv2d_act_pool(x, conv.params["weight"], None, conv.stride, conv.padding,
                              conv.dilation, conv.groups, 0, 0) is not None  # it applies
    for training in (True, False):
        np.testing.assert_array_equal(fused_net.forward(x, training=training),
                                      plain_net.forward(x, training=training))
    g = rng.standard_normal((2, 64, 15, 35)).astype(dtype)
    np.testing.assert_array_equal(fused_net.backward(g), plain_net.backward(g))
    np.testing.assert_array_equal(fused_net.named_grads()["0.weight"],
                                  plain_net.named_grads()["0.weight"])


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# LeNet's second layer at a batch of two blocks and one with a block of 18 empty lanes; groups
# and padding with odd maps (the last row and column unpooled); a row stride; a dilation
@pytest.mark.parametrize("x_shape, w_shape, geometry", [
    ((64, 6, 14, 14), (16, 6, 5, 5), {}),
    ((50, 6, 14, 14), (16, 6, 5, 5), {}),
    ((64, 4, 13, 13), (6, 2, 5, 5), {"groups": 2, "padding": 1}),
    ((64, 3, 14, 14), (4, 3, 5, 5), {"stride": (2, 1), "padding": (1, 2)}),
    ((64, 6, 14, 14), (16, 6, 5, 5), {"dilation": (2, 1)})])
def test_one_pass_backward_on_interleaved_samples_equals_the_unfused_functions(
        activation, pool, dtype, x_shape, w_shape, geometry, monkeypatch):
    """conv_act_pool.conv_act_pool_backward_lanes (the gradient at z computed, interleaved once
    and used by both gradients in each block) against the activation and pool backward and
    the convolution's backward, bit for bit, with and without the input gradient."""
    from numbaconv.kernels.cpu import conv_act_pool

    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) * 0.3).astype(dtype)
    args = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **geometry}
    geo = F._ConvGeometry(x, w, args["stride"], args["padding"], args["dilation"],
                          args["groups"])
    assert conv_act_pool.backward_lanes_applies(
        x_shape, x_shape[:2] + geo.padded, w_shape, x.itemsize, geo.stride, geo.groups,
        *geo.output_shape[2:])
    z = F.conv2d(x, w, None, **args)
    z = F.sigmoid(z) if activation == "sigmoid" else F.relu(z)
    z[0, 0, 0, :2] = z[0, 0, 1, :2] = z[0, 0, 0, 0]  # a tied window
    gy = rng.standard_normal(z.shape[:2] + (z.shape[2] // 2, z.shape[3] // 2)).astype(dtype)
    grad_z = K.act_pool_backward(gy, z, *F._fused_codes(activation, pool))
    expected = {need: F.conv2d_backward(grad_z, x, w, need_input_grad=need, **args)
                for need in (True, False)}
    monkeypatch.setattr(K, "act_pool_backward", None)  # the unfused path is not taken
    for need_input_grad in (True, False):
        got = F.conv2d_act_pool_backward(gy, x, z, w, activation=activation, pool=pool,
                                         need_input_grad=need_input_grad, **args)
        for name, a, b in zip(("grad_x", "grad_w", "grad_b"), got, expected[need_input_grad],
                              strict=True):
            if b is None:
                assert a is None, name
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)


def test_layers_run_one_by_one_after_a_fused_forward_get_their_own_backward():
    fused_net, plain_net, x = _pair("relu", "max", np.float32)
    fused_net.forward(x * 3, training=True)  # fused state for another input
    h = x
    for layer in fused_net:  # a teaching loop: each layer's own forward
        h = layer.forward(h, training=True)
    g = np.ones_like(h)
    plain_net.forward(x, training=True)
    np.testing.assert_array_equal(fused_net.backward(g), plain_net.backward(g))
    for (name, a), b in zip(fused_net.named_grads().items(),
                            plain_net.named_grads().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not any(s.fused.current() for s in fused_net.stages() if s.fused)


def test_a_reused_input_buffer_run_layer_by_layer_gets_the_layers_backward():
    fused_net, plain_net, x = _pair("sigmoid", "avg", np.float32)
    buffer = x.copy()
    fused_net.forward(buffer, training=True)
    buffer[:] = x[::-1]  # the next batch, into the same array
    h = buffer
    for layer in fused_net:
        h = layer.forward(h, training=True)
    g = np.ones_like(h)
    plain_net.forward(x[::-1].copy(), training=True)
    np.testing.assert_array_equal(fused_net.backward(g), plain_net.backward(g))
    for (name, a), b in zip(fused_net.named_grads().items(),
                            plain_net.named_grads().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_fused_forward_clears_the_layers_own_state():
    model = Sequential(Conv2d(1, 2, 3), Sigmoid(), MaxPool2d(2))
    h = np.ones((1, 1, 6, 6), np.float32)
    for layer in model:  # each layer's own forward first
        h = layer.forward(h)
    model.forward(np.ones((1, 1, 6, 6), np.float32))
    for layer in model:  # stale state would give a wrong gradient: raise instead
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.ones((1, 2, 4, 4), np.float32))
    assert model.stages()[0].fused.current()


def test_relu_of_negative_zero_is_positive_zero_as_unfused():
    z = np.full((1, 1, 2, 2), -0.0, np.float32)
    z[0, 0, 0, 0] = -1.0
    y = K.act_pool_forward(z.copy(), K.RELU, K.MAX)
    unfused = MaxPool2d(2).forward(ReLU().forward(z))
    np.testing.assert_array_equal(y.view(np.int32), unfused.view(np.int32))  # the sign too
    assert not np.signbit(y).any()


def test_fused_gradients_match_finite_differences():
    net, _, x = _pair("sigmoid", "avg", np.float64, size=(6, 7))
    c = np.random.default_rng(9).standard_normal(net.output_shape(x.shape))
    net.forward(x, training=True)
    grad_x = net.backward(c)
    grad_w = net.named_grads()["0.weight"].copy()

    def loss():
        return float(np.sum(net.forward(x) * c))

    for index in [(0, 0, 1, 2), (2, 1, 5, 6), (1, 1, 0, 0)]:
        assert grad_x[index] == pytest.approx(finite_difference(loss, x, index, 1e-6), rel=1e-6,
                                              abs=1e-9)
    weight = net.named_params()["0.weight"]
    for index in [(0, 0, 0, 0), (2, 1, 2, 1)]:
        assert grad_w[index] == pytest.approx(finite_difference(loss, weight, index, 1e-6),
                                              rel=1e-6, abs=1e-9)


def _reference(z, activation, pool, k):
    """float64 NumPy: pool(activation(z)) and the gradient at z for grad_y = g."""
    z64 = z.astype(np.float64)
    a = 1 / (1 + np.exp(-z64)) if activation == K.SIGMOID else np.maximum(z64, 0)
    n, c, h, w = z.shape
    oh, ow = h // k, w // k
    windows = a[:, :, :oh * k, :ow * k].reshape(n, c, oh, k, ow, k).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, oh, ow, k * k)
    if pool == K.AVG:
        return windows.mean(axis=-1), windows
    nan = np.isnan(windows)
    # the first maximum wins; the last NaN wins over everything (the kernels' scan)
    winner = np.where(nan.any(-1), k * k - 1 - np.argmax(nan[..., ::-1], axis=-1),
                      np.argmax(np.where(nan, -np.inf, windows), axis=-1))
    return np.take_along_axis(windows, winner[..., None], -1)[..., 0], winner


@pytest.mark.parametrize("activation", [K.SIGMOID, K.RELU])
@pytest.mark.parametrize("pool", [K.AVG, K.MAX])
# (40, 7, 9, 11): 280 planes of 99 values, several to a task and the last task short; odd H, W
@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (40, 7, 9, 11)])
def test_kernels_against_float64_reference_with_ties_nan_and_infinities(activation, pool,
                                                                         shape):
    k = 2
    rng = np.random.default_rng(3)
    z = (rng.standard_normal(shape) * 4).astype(np.float32)
    z[0, 0, 0, :2] = 1.5  # a tie inside a window
    z[0, 1, :2, :2] = -3.0  # ReLU ties at 0 across a window
    z[1, 0, 1, 1] = np.nan
    z[1, 0, 0, 0] = np.nan  # two NaNs in one 2x2 window
    z[1, 1, 0, :3] = (np.inf, -np.inf, 1e4)
    z[1, 2, -1, -1] = np.nan  # outside every window (H is odd): its gradient is 0 * NaN
    want, winner = _reference(z, activation, pool, k)
    activated = z.copy()
    y = K.act_pool_forward(activated, activation, pool)  # activates its argument in place
    np.testing.assert_allclose(y, want, rtol=3e-7, atol=1e-30, equal_nan=True)
    want_activated = 1 / (1 + np.exp(-z.astype(np.float64))) if activation == K.SIGMOID else \
        np.maximum(z, 0)
    np.testing.assert_allclose(activated, want_activated, rtol=3e-7, atol=1e-30, equal_nan=True)

    g = rng.standard_normal(y.shape).astype(np.float32)
    grad = K.act_pool_backward(g, activated, activation, pool).astype(np.float64)
    z64 = z.astype(np.float64)
    if activation == K.SIGMOID:
        s = 1 / (1 + np.exp(-z64))
        derivative = s * (1 - s)
    else:
        derivative = np.where(z64 <= 0, 0.0, 1.0)
    n, c, oh, ow = y.shape
    spread = np.zeros(z.shape)
    for i in range(k * k):
        dh, dw = divmod(i, k)
        share = g / (k * k) if pool == K.AVG else np.where(winner == i, g, 0.0)
        spread[:, :, dh:oh * k:k, dw:ow * k:k] = share
    want = spread * derivative
    # float32's 1 - s loses digits where the sigmoid saturates (as PyTorch's): scale the atol
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-6 * np.nanmax(np.abs(want)),
                               equal_nan=True)
    # outside every window: 0 * the derivative, which is NaN for the sigmoid (1 for ReLU)
    assert np.isnan(grad[1, 2, -1, -1]) == (activation == K.SIGMOID)


def test_what_fuses():
    conv, relu, pool = Conv2d(1, 2, 3), ReLU(), MaxPool2d(2)
    assert fusable(conv, relu, pool) and fusable(conv, Sigmoid(), AvgPool2d((2, 2), stride=2))
    assert not fusable(conv, Tanh(), pool)
    assert not fusable(conv, relu, MaxPool2d(3))  # tiling, but not 2x2
    assert not fusable(conv, Sigmoid(), AvgPool2d((2, 1)))
    assert not fusable(conv, relu, MaxPool2d(3, stride=2))  # overlapping windows
    assert not fusable(conv, relu, MaxPool2d(2, padding=1))
    assert not fusable(conv, relu, MaxPool2d(2, dilation=2))
    assert not fusable(conv, relu, MaxPool2d(2, ceil_mode=True))
    assert not fusable(conv, relu, AvgPool2d(2, divisor_override=3))
    assert not fusable(relu, conv, pool)

    class MyReLU(ReLU):  # a subclass may compute something else
        pass

    assert not fusable(conv, MyReLU(), pool)
    with pytest.raises(ValueError, match="cannot fuse"):
        ConvActPool(conv, Tanh(), pool)
    # a triple that stops fitting is no longer fused; layers appended later are
    model = Sequential(Conv2d(1, 2, 3), ReLU())
    assert [s.fused for s in model.stages()] == [None, None]
    model.append(MaxPool2d(2))
    (stage,) = model.stages()
    assert stage.fused.layers == tuple(model.layers) and model.stages()[0].fused is stage.fused
    assert model[:].fuse and not Sequential(model.layers, fuse=False)[:].fuse


def test_fused_stage_errors():
    model = Sequential(Conv2d(1, 2, 3), Sigmoid(), AvgPool2d(2))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        model.backward(np.ones((1, 2, 2, 2), np.float32))
    x = np.ones((1, 1, 6, 6), np.float32)
    model.forward(x)
    with pytest.raises(ValueError, match=r"grad_y has shape \(1, 2, 3, 3\).*\(1, 2, 2, 2\)") \
            as info:
        model.backward(np.ones((1, 2, 3, 3), np.float32))
    assert "layers 0-2 (Conv2d, Sigmoid, AvgPool2d; fused)" in info.value.__notes__[0]
    with pytest.raises(TypeError, match="grad_y has dtype float64 but the fused stage computes "
                                        "in float32"):
        model.backward(np.ones((1, 2, 2, 2), np.float64))
    with pytest.raises(ValueError, match="too small"):  # the pool's own message
        model.forward(np.ones((1, 1, 3, 3), np.float32))


# ------------------------------------------------------------------------ batch norm -> ReLU

def _norm_pair(norm_cls, dtype, shape, seed=3):
    """Two equal networks with BatchNorm -> ReLU twice (fused and not) and an input."""
    from numbaconv.layers import BatchNorm1d, BatchNorm2d

    def build(fuse):
        rng = np.random.default_rng(seed)
        if norm_cls is BatchNorm2d:
            layers = [Conv2d(shape[1], 4, 3, padding=1, rng=rng, dtype=dtype),
                      BatchNorm2d(4, dtype=dtype), ReLU(),
                      Conv2d(4, 4, 1, rng=rng, dtype=dtype), BatchNorm2d(4, dtype=dtype),
                      ReLU()]
        else:
            layers = [Linear(shape[1], 6, rng=rng, dtype=dtype), BatchNorm1d(6, dtype=dtype),
                      ReLU(), Linear(6, 5, rng=rng, dtype=dtype),
                      BatchNorm1d(5, momentum=None, dtype=dtype), ReLU()]
        net = Sequential(layers, fuse=fuse)
        for layer in net[1::3]:  # the batch norms' scales and shifts, not 1 and 0
            layer.params["weight"][...] = rng.uniform(0.2, 1.5, layer.num_features)
            layer.params["bias"][...] = rng.uniform(-0.5, 0.5, layer.num_features)
        return net
    x = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    return build(True), build(False), x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm, shape", [("2d", (5, 3, 7, 9)), ("2d", (4, 2, 12, 12)),
                                         ("1d", (16, 7))])
def test_batch_norm_relu_equals_the_two_layers_bit_for_bit(norm, shape, dtype):
    from numbaconv.layers import BatchNorm1d, BatchNorm2d
    from numbaconv.layers.fusion import NormReLU

    fused_net, plain_net, x = _norm_pair(BatchNorm2d if norm == "2d" else BatchNorm1d, dtype,
                                         shape)
    assert [type(s.fused) for s in fused_net.stages()] == [type(None), NormReLU] * 2
    assert all(s.fused is None for s in plain_net.stages())
    rng = np.random.default_rng(9)
    for training in (True, False, True):
        y_fused = fused_net.forward(x, training=training)
        y_plain = plain_net.forward(x, training=training)
        np.testing.assert_array_equal(y_fused, y_plain)
        assert (y_fused == 0).any() and (y_fused > 0).any()  # both sides of the ReLU
        g = rng.standard_normal(y_fused.shape).astype(dtype)
        np.testing.assert_array_equal(fused_net.backward(g), plain_net.backward(g))
        for key, grad in plain_net.named_grads().items():
            np.testing.assert_array_equal(fused_net.named_grads()[key], grad, err_msg=key)
        for key, value in plain_net.state_dict().items():  # running statistics too
            np.testing.assert_array_equal(fused_net.state_dict()[key], value, err_msg=key)


def test_batch_norm_relu_keeps_nan_and_gives_positive_zero():
    x = np.array([[np.nan, -0.0, 0.0, -np.inf, np.inf, -1.0, 2.0]], np.float32).T[None]
    x = np.repeat(x, 2, axis=0).reshape(2, 7, 1)  # (N, C, L): a channel per value
    mean, var = np.zeros(7, np.float32), np.ones(7, np.float32)
    y, _, _ = F.batch_norm_relu(x, mean, var, eps=0.0)
    expected = np.maximum(F.batch_norm(x, mean, var, eps=0.0)[0], 0)
    np.testing.assert_array_equal(y, expected)  # NaN where NaN, +0.0 for -0.0
    assert not np.signbit(y[np.isfinite(y)]).any()
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        F.batch_norm_relu(x)


def test_what_fuses_with_relu():
    from numbaconv.layers import BatchNorm1d, BatchNorm2d
    from numbaconv.layers.fusion import NormReLU, norm_relu_fusable

    class MyNorm(BatchNorm2d):
        pass

    assert norm_relu_fusable(BatchNorm2d(3), ReLU()) and norm_relu_fusable(BatchNorm1d(3), ReLU())
    assert not norm_relu_fusable(BatchNorm2d(3), Sigmoid())
    assert not norm_relu_fusable(MyNorm(3), ReLU())  # subclasses may compute otherwise
    assert not norm_relu_fusable(ReLU(), BatchNorm2d(3))
    with pytest.raises(ValueError, match="cannot fuse"):
        NormReLU(BatchNorm2d(3), Tanh())
    # a conv -> ReLU -> pool triple takes precedence; a BatchNorm -> ReLU after it pairs
    net = Sequential([Conv2d(1, 2, 3), ReLU(), MaxPool2d(2), BatchNorm2d(2), ReLU()])
    assert [(s.start, s.stop, type(s.fused).__name__) for s in net.stages()] == [
        (0, 3, "ConvActPool"), (3, 5, "NormReLU")]
