"""numbaconv.functional on CUDA device arrays against the same calls on NumPy arrays: every
function of the door dispatches to the CUDA backend and returns device arrays that match
the CPU's results (tiny shapes: the simulator is slow)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from cuda_support import close as close_within  # noqa: E402

from numbaconv import functional as F  # noqa: E402
from numbaconv.kernels.cuda.device import to_device, to_host  # noqa: E402

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}
close = functools.partial(close_within, tol=TOL)


def both(array):
    return array, to_device(array)


def assert_same(device_result, host_result, what=""):
    if host_result is None:
        assert device_result is None, what
        return
    close(device_result, host_result, host_result.dtype.type, what)


def randn(shape, rng, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_convolution_and_the_fused_stage(activation, pool, rng):
    (x, dx), (w, dw), (b, db) = both(randn((2, 2, 7, 6), rng)), both(randn((3, 2, 3, 3), rng)), \
        both(randn(3, rng))
    args = (1, 1, 1, 1)
    assert_same(F.conv2d(dx, dw, db, *args), F.conv2d(x, w, b, *args), "conv2d")
    (z, y), (dz, dy) = F.conv2d_act_pool(x, w, b, *args, activation, pool), \
        F.conv2d_act_pool(dx, dw, db, *args, activation, pool)
    assert_same(dz, z, "z")
    assert_same(dy, y, "y")
    g, dg = both(randn(y.shape, rng))
    grad_w, grad_b = to_device(np.zeros_like(w)), to_device(np.zeros_like(b))
    got = F.conv2d_act_pool_backward(dg, dx, dz, dw, *args, activation, pool,
                                     grad_weight=grad_w, grad_bias=grad_b)
    want = F.conv2d_act_pool_backward(g, x, z, w, *args, activation, pool)
    assert got[1] is grad_w and got[2] is grad_b  # written into the given arrays
    for name, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got, want, strict=True):
        assert_same(a, e, name)
    gy, dgy = both(randn(z.shape, rng))
    got = F.conv2d_backward(dgy, dx, dw, *args, need_input_grad=False, need_bias_grad=False)
    assert got[0] is None and got[2] is None
    assert_same(got[1], F.conv2d_backward(gy, x, w, *args)[1], "grad_weight")


def test_pools(rng):
    x, dx = both(randn((2, 3, 5, 6), rng))
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    dy, dindices = F.max_pool2d(dx, 3, 2, 1, return_indices=True)
    assert_same(dy, y, "max")
    np.testing.assert_array_equal(to_host(dindices), indices)
    g, dg = both(randn(y.shape, rng))
    want = F.max_pool2d_backward(g, indices, x.shape)
    assert_same(F.max_pool2d_backward(dg, dindices, x.shape), want, "max backward (scatter)")
    assert_same(F.max_pool2d_backward(dg, dindices, x.shape, 3, 2, 1), want,
                "max backward (gather)")
    assert_same(F.avg_pool2d(dx, 2, 1, 1, count_include_pad=False),
                F.avg_pool2d(x, 2, 1, 1, count_include_pad=False), "avg")
    y = F.avg_pool2d(x, 2)
    g, dg = both(randn(y.shape, rng))
    assert_same(F.avg_pool2d_backward(dg, x.shape, 2), F.avg_pool2d_backward(g, x.shape, 2),
                "avg backward")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_activations_and_the_loss(dtype, rng):
    (x, dx), (w, dw), (b, db) = both(randn((2, 3, 5), rng, dtype)), \
        both(randn((4, 5), rng, dtype)), both(randn(4, rng, dtype))
    y = F.linear(x, w, b)
    dy = F.linear(dx, dw, db)
    assert_same(dy, y, "linear")
    g, dg = both(randn(y.shape, rng, dtype))
    grad_w = to_device(np.zeros_like(w))
    got = F.linear_backward(dg, dx, dw, grad_weight=grad_w)
    assert got[1] is grad_w
    for name, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got,
                          F.linear_backward(g, x, w), strict=True):
        assert_same(a, e, name)
    for name in ("relu", "sigmoid", "tanh"):
        forward, backward = getattr(F, name), getattr(F, f"{name}_backward")
        out, dout = forward(y), forward(dy)
        assert_same(dout, out, name)
        assert_same(backward(dg, dout), backward(g, out), f"{name} backward")
    logits, dlogits = both(randn((5, 4), rng, dtype) * 3)
    labels, dlabels = both(rng.integers(0, 4, 5))
    loss = F.cross_entropy(dlogits, dlabels)
    assert to_host(loss).shape == () and to_host(loss).dtype == np.float64
    np.testing.assert_allclose(to_host(loss), F.cross_entropy(logits, labels), **TOL[dtype])
    assert_same(F.cross_entropy_backward(dlogits, dlabels),
                F.cross_entropy_backward(logits, labels), "cross_entropy_backward")
    dloss, dgrad = F.cross_entropy_with_grad(dlogits, dlabels)
    np.testing.assert_allclose(to_host(dloss), to_host(loss), **TOL[dtype])
    assert_same(dgrad, F.cross_entropy_backward(logits, labels), "cross_entropy_with_grad")
    assert to_host(F.correct(dlogits, dlabels)) == F.correct(logits, labels)


def test_dropout_draws_the_same_masks_on_both_devices(rng):
    x, dx = both(randn((3, 4, 5), rng))
    y, mask = F.dropout(x, 0.4, rng=np.random.default_rng(5), return_mask=True)
    dy, dmask = F.dropout(dx, 0.4, rng=np.random.default_rng(5), return_mask=True)
    np.testing.assert_array_equal(to_host(dmask), mask)
    np.testing.assert_array_equal(to_host(dy), y)
    g, dg = both(randn(x.shape, rng))
    np.testing.assert_array_equal(to_host(F.dropout_backward(dg, dmask)),
                                  F.dropout_backward(g, mask))
    assert F.dropout(dx, 0.4, training=False) is dx
    assert not to_host(F.dropout(dx, 1.0, rng=np.random.default_rng(0))).any()


def test_branch_points(rng):
    (a, da), (b, db) = both(randn((2, 3, 2, 2), rng)), both(randn((2, 3, 2, 2), rng))
    assert_same(F.add(da, db), F.add(a, b), "add")
    parts = [randn((2, c, 2, 2), rng) for c in (1, 2)]
    whole = F.concat_channels([to_device(p) for p in parts])
    assert_same(whole, F.concat_channels(parts), "concat")
    for got, want in zip(F.split_channels(whole, [1, 2]), parts, strict=True):
        assert_same(got, want, "split")
    with pytest.raises(TypeError, match="b must be a CUDA device array like x"):
        F.add(da, b)
