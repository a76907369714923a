"""The functional door's dense, activation, dropout and loss functions on the CPU against
PyTorch, their argument checks, the fused stage's functions against the unfused ones, and
every built-in layer computing through ``numbaconv.functional`` only."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from numbaconv import functional as nc
from numbaconv.layers import activation, conv, dropout, fusion, linear, pool, shape

TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


def randn(shape, seed, dtype=np.float32, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def close(got, expected, dtype, what=""):
    assert isinstance(got, np.ndarray) and got.dtype == dtype, what
    np.testing.assert_allclose(got, expected, err_msg=what, **TOL[dtype])


# ------------------------------------------------------------------------------- linear

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (7,)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_torch(torch, dtype, shape, with_bias):
    x, w, b = randn(shape, 1, dtype), randn((4, 7), 2, dtype), randn(4, 3, dtype)
    bias = b if with_bias else None
    y = nc.linear(x, w, bias)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb if with_bias else None)
    close(y, ty.detach().numpy(), dtype, "y")
    gy = randn(y.shape, 4, dtype)
    ty.backward(torch.tensor(gy))
    gx, gw, gb = nc.linear_backward(gy, x, w, need_bias_grad=with_bias)
    close(gx, tx.grad.numpy(), dtype, "grad_x")
    close(gw, tw.grad.numpy(), dtype, "grad_weight")
    if with_bias:
        close(gb, tb.grad.numpy(), dtype, "grad_bias")
    else:
        assert gb is None


def test_linear_backward_writes_into_given_arrays_and_skips_the_input_gradient():
    x, w, gy = randn((6, 3), 1), randn((2, 3), 2), randn((6, 2), 3)
    expected = nc.linear_backward(gy, x, w)
    grad_w, grad_b = np.full((2, 3), 9.0, np.float32), np.full(2, 9.0, np.float32)
    grad_x, gw, gb = nc.linear_backward(gy, x, w, need_input_grad=False, grad_weight=grad_w,
                                        grad_bias=grad_b)
    assert grad_x is None and gw is grad_w and gb is grad_b
    np.testing.assert_array_equal(grad_w, expected[1])
    np.testing.assert_array_equal(grad_b, expected[2])
    with pytest.raises(ValueError, match=r"grad_weight must have shape \(2, 3\), got \(3, 2\)"):
        nc.linear_backward(gy, x, w, grad_weight=np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="grad_bias has dtype float64 but x has dtype float32"):
        nc.linear_backward(gy, x, w, grad_bias=np.zeros(2))
    with pytest.raises(ValueError, match="C-contiguous"):
        nc.linear_backward(gy, x, w, grad_weight=np.zeros((3, 2), np.float32).T)


@pytest.mark.parametrize("n, channels, side", [(32, 32, 3), (4, 32, 3), (2, 3, 8)],
                         ids=["unrolled", "columns", "flat"])
def test_conv2d_backward_writes_into_given_arrays(n, channels, side):
    """Each CPU path writes the weight and bias gradients into a layer's arrays (the unrolled
    kernels directly), equal to the ones it returns without them."""
    x, w = randn((n, channels, side, side), 1), randn((channels, channels, 3, 3), 2)
    gy = randn((n, channels, side, side), 3)
    expected = nc.conv2d_backward(gy, x, w, padding=1)
    grad_w = np.full(w.shape, 9.0, np.float32)
    grad_b = np.full(channels, 9.0, np.float32)
    grad_x, gw, gb = nc.conv2d_backward(gy, x, w, padding=1, grad_weight=grad_w,
                                        grad_bias=grad_b)
    assert gw is grad_w and gb is grad_b
    np.testing.assert_array_equal(grad_x, expected[0])
    np.testing.assert_array_equal(grad_w, expected[1])
    np.testing.assert_array_equal(grad_b, expected[2])


def test_linear_argument_errors_name_the_argument_and_shapes():
    x, w = randn((5, 7), 1), randn((4, 7), 2)
    with pytest.raises(ValueError, match=r"in_features=7.*weight shape \(4, 7\).*\(5, 6\)"):
        nc.linear(randn((5, 6), 1), w)
    with pytest.raises(TypeError, match="x has dtype float64 but weight has dtype float32"):
        nc.linear(x.astype(np.float64), w)
    with pytest.raises(ValueError, match=r"bias must have out_features=4 entries"):
        nc.linear(x, w, randn(3, 3))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        nc.linear([[1.0] * 7], w)
    with pytest.raises(ValueError, match=r"grad_y must have the forward output's shape "
                                         r"\(5, 4\), got \(5, 3\)"):
        nc.linear_backward(randn((5, 3), 3), x, w)


# ------------------------------------------------------------------------------- activations

@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_match_torch_from_the_output(torch, name, dtype):
    x = randn((3, 4, 5), 5, dtype, scale=4)
    x[0, 0, :4] = (0.0, -100.0, 100.0, np.nan)
    y = getattr(nc, name)(x)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch, name)(tx)
    np.testing.assert_allclose(y, ty.detach().numpy(), equal_nan=True, **TOL[dtype])
    assert y.dtype == dtype and y.shape == x.shape
    gy = randn(x.shape, 6, dtype)
    ty.backward(torch.tensor(gy))
    gx = getattr(nc, f"{name}_backward")(gy, y)
    np.testing.assert_allclose(gx, tx.grad.numpy(), equal_nan=True, **TOL[dtype])


def test_activation_backward_checks():
    y = nc.relu(randn((2, 3), 1))
    with pytest.raises(ValueError, match=r"grad_y must have the output y's shape \(2, 3\), "
                                         r"got \(3, 2\)"):
        nc.relu_backward(randn((3, 2), 2), y)
    with pytest.raises(TypeError, match="grad_y has dtype float64 but the output y has dtype "
                                        "float32"):
        nc.sigmoid_backward(randn((2, 3), 2, np.float64), y)
    with pytest.raises(TypeError, match="x must be float32 or float64, got dtype int64"):
        nc.tanh(np.arange(3))


# ------------------------------------------------------------------------------- dropout

def test_dropout_draws_the_layers_mask_and_backward_uses_it():
    x = randn((20, 30), 1)
    y, mask = nc.dropout(x, 0.25, rng=np.random.default_rng(3), return_mask=True)
    keep = np.random.default_rng(3).random(x.shape, dtype=np.float32) >= 0.25
    np.testing.assert_array_equal(mask, keep.astype(np.float32) * np.float32(1 / 0.75))
    np.testing.assert_array_equal(y, x * mask)
    g = randn(x.shape, 2)
    np.testing.assert_array_equal(nc.dropout_backward(g, mask), g * mask)
    assert nc.dropout(x, 0.5, training=False) is x
    assert nc.dropout(x, 0.0, rng=np.random.default_rng(0), return_mask=True) == (x, None)
    assert nc.dropout_backward(g, None) is g
    assert not nc.dropout(x, 1.0, rng=np.random.default_rng(0)).any()
    with pytest.raises(ValueError, match="between 0 and 1"):
        nc.dropout(x, 1.5)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        nc.dropout(x, 0.5, rng=3)
    with pytest.raises(ValueError, match=r"grad_y must have the mask's shape \(20, 30\)"):
        nc.dropout_backward(g[:2], mask)


# ------------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_and_correct_match_torch(torch, dtype):
    logits = randn((9, 5), 7, dtype, scale=3)
    labels = np.random.default_rng(8).integers(0, 5, 9)
    loss = nc.cross_entropy(logits, labels)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float64
    tl = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tl, torch.tensor(labels))
    ref.backward()
    assert float(loss) == pytest.approx(ref.item(), rel=1e-6 if dtype == np.float32 else 1e-12)
    close(nc.cross_entropy_backward(logits, labels), tl.grad.numpy(), dtype, "grad")
    hits = nc.correct(logits, labels)
    assert hits.shape == () and hits.dtype == np.int64
    assert int(hits) == int((logits.argmax(1) == labels).sum())


def test_loss_values_equal_softmax_cross_entropy_bit_for_bit():
    """What the training loop used before: the same loss and gradient, exactly."""
    from numbaconv.losses import softmax_cross_entropy

    logits, labels = randn((256, 10), 1, scale=5), np.random.default_rng(2).integers(0, 10, 256)
    loss, grad = softmax_cross_entropy(logits, labels)
    assert float(nc.cross_entropy(logits, labels)) == loss
    np.testing.assert_array_equal(nc.cross_entropy_backward(logits, labels), grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_with_grad_is_the_loss_and_its_gradient_exactly(dtype):
    logits = randn((64, 10), 3, dtype, scale=20)
    labels = np.random.default_rng(4).integers(0, 10, 64)
    kept = logits.copy()
    loss, grad = nc.cross_entropy_with_grad(logits, labels)
    assert loss.shape == () and loss.dtype == np.float64 and grad.dtype == dtype
    assert float(loss) == float(nc.cross_entropy(logits, labels))
    np.testing.assert_array_equal(grad, nc.cross_entropy_backward(logits, labels))
    np.testing.assert_array_equal(logits, kept)  # the logits are left as they were
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        nc.cross_entropy_with_grad(logits, labels + 1)
    with pytest.raises(ValueError, match="cross_entropy_with_grad needs at least one"):
        nc.cross_entropy_with_grad(logits[:0], labels[:0])


def test_loss_argument_errors():
    logits = randn((3, 4), 1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        nc.cross_entropy(logits, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        nc.cross_entropy_backward(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
        nc.correct(logits, np.zeros(3))
    with pytest.raises(ValueError, match="cross_entropy needs at least one example"):
        nc.cross_entropy(logits[:0], np.array([], np.int64))
    assert int(nc.correct(logits[:0], np.array([], np.int64))) == 0


# ------------------------------------------------------------------------------- fused stage

@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("pool_name", ["avg", "max"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_act_pool_equals_the_unfused_functions(activation, pool_name, stride):
    x, w, b = randn((2, 3, 11, 13), 1), randn((4, 3, 3, 3), 2), randn(4, 3)
    z, y = nc.conv2d_act_pool(x, w, b, stride, 1, 1, 1, activation, pool_name)
    conv_y = nc.conv2d(x, w, b, stride, 1)
    act = getattr(nc, activation)(conv_y)
    pooled = nc.avg_pool2d(act, 2) if pool_name == "avg" else nc.max_pool2d(act, 2)
    np.testing.assert_array_equal(z, act)
    np.testing.assert_array_equal(y, pooled)
    gy = randn(y.shape, 4)
    grads = nc.conv2d_act_pool_backward(gy, x, z, w, stride, 1, 1, 1, activation, pool_name)
    if pool_name == "avg":
        g_act = nc.avg_pool2d_backward(gy, act.shape, 2)
    else:
        _, indices = nc.max_pool2d(act, 2, return_indices=True)
        g_act = nc.max_pool2d_backward(gy, indices, act.shape)
    g_conv = getattr(nc, f"{activation}_backward")(g_act, act)
    for got, want in zip(grads, nc.conv2d_backward(g_conv, x, w, stride, 1), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="activation must be one of"):
        nc.conv2d_act_pool(x, w, b, activation="tanh")
    with pytest.raises(ValueError, match=r"at least 2x2, got \(1, 1\)"):
        nc.conv2d_act_pool(x[:, :, :3, :3], w, b)


# ------------------------------------------------------------------------------- one door

LAYER_MODULES = [activation, conv, dropout, fusion, linear, pool, shape]


@pytest.mark.parametrize("module", LAYER_MODULES, ids=lambda m: m.__name__)
def test_layers_reach_kernels_only_through_functional(module):
    """No built-in layer imports a kernel module or calls NumPy's maths on its arrays: what
    they compute goes through numbaconv.functional, which dispatches to either device."""
    tree = ast.parse(inspect.getsource(module))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("kernels" in (name or "") for name in imported), imported
    numpy_calls = {node.attr for node in ast.walk(tree)
                   if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                   and node.value.id == "np"}
    # dtypes, type names and shape helpers only
    assert numpy_calls <= {"ndarray", "dtype", "float32", "float64", "shape"}, numpy_calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [2, 128])  # NumPy's concatenation; the parallel copy
def test_concat_channels_is_numpys_concatenation_and_split_its_inverse(dtype, batch):
    """Three arrays, one a strided view, joined along the channels: at batch 128 the result
    (over 4 MiB) comes from the reused buffers by one copy per array."""
    from numbaconv.kernels.cpu import buffers

    parts = [randn((batch, c, 9, 10), seed=c, dtype=dtype) for c in (64, 32, 16)]
    parts[1] = np.ascontiguousarray(parts[1].transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    joined = nc.concat_channels(parts)
    np.testing.assert_array_equal(joined, np.concatenate(parts, axis=1))
    assert (joined.nbytes >= buffers.HUGE_PAGE_BYTES) == (batch == 128)
    for got, part in zip(nc.split_channels(joined, [64, 32, 16]), parts, strict=True):
        np.testing.assert_array_equal(got, part)
    with pytest.raises(ValueError, match="array 1 has shape"):
        nc.concat_channels([parts[0], parts[1][:, :, :8]])
