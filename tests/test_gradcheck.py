"""Finite-difference checks of every backward: central differences in float64.

For a forward ``f`` and a fixed random upstream gradient ``g``, the scalar loss is
``L = sum(f(...) * g)``; each analytic gradient must match ``(L(a + eps) - L(a - eps)) / 2eps``
element by element. Convolution and average pooling are linear, so the difference quotient is
exact up to rounding; max pooling is piecewise linear and is checked on inputs without ties
(every pair of values at least 0.01 apart, far more than ``eps``).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from numbaconv.testing import numeric_gradient

EPS = 1e-6
TOL = dict(rtol=1e-6, atol=1e-6)


def numeric_grad(loss, arr, eps=EPS):
    """The gradient of ``loss()`` w.r.t. ``arr`` by central differences."""
    return numeric_gradient(loss, arr, eps).astype(arr.dtype)


def distinct_values(rng, shape):
    """A float64 array whose values are pairwise at least 0.01 apart (no max-pool ties)."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * 0.01 - size * 0.005).reshape(shape) \
        + rng.uniform(0, 1e-3, size=shape)


# --------------------------------------------------------------------------------------------
# convolution

CONV_CASES = [
    dict(),
    dict(stride=2),
    dict(stride=(2, 3), padding=1),
    dict(dilation=2, padding=2),
    dict(dilation=(1, 3), padding=(0, 2)),
    dict(groups=2, padding=1),
    dict(groups=4, stride=2, dilation=2, padding=((2, 0), (1, 3))),
    dict(padding="same", dilation=(2, 1)),
    dict(padding=((0, 1), (2, 0)), stride=(1, 2)),
]


def _check_conv(nc, rng, shape_x, shape_w, args):
    x = rng.normal(size=shape_x)
    w = rng.normal(size=shape_w)
    b = rng.normal(size=shape_w[0])
    y = nc.conv2d(x, w, b, **args)
    g = rng.normal(size=y.shape)

    def loss():
        return float(np.sum(nc.conv2d(x, w, b, **args) * g))

    gx, gw, gb = nc.conv2d_backward(g, x, w, **args)
    np.testing.assert_allclose(gx, numeric_grad(loss, x), err_msg="grad_x", **TOL)
    np.testing.assert_allclose(gw, numeric_grad(loss, w), err_msg="grad_weight", **TOL)
    np.testing.assert_allclose(gb, numeric_grad(loss, b), err_msg="grad_bias", **TOL)


@pytest.mark.parametrize("args", CONV_CASES, ids=lambda a: repr(a) if a else "plain")
def test_conv2d_backward_finite_differences(nc, args):
    rng = np.random.default_rng(100)
    _check_conv(nc, rng, (2, 4, 6, 5), (4, 4 // args.get("groups", 1), 3, 2), args)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv2d_backward_finite_differences(nc, stride):
    """A 1x1 layer the pointwise kernels take (16 channels in, 16 out; 8x8 outputs)."""
    from numbaconv.kernels.cpu.conv import use_pointwise

    shape_x, shape_w = (1, 16, 8 * stride, 8 * stride), (16, 16, 1, 1)
    assert use_pointwise(shape_x, shape_w, 1, (stride, stride), ((0, 0), (0, 0)), 8)
    _check_conv(nc, np.random.default_rng(102), shape_x, shape_w, dict(stride=stride))


@settings(max_examples=15)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 2), st.integers(1, 2),
       st.integers(0, 2), st.integers(1, 2), st.integers(0, 2**32 - 1))
def test_conv2d_backward_finite_differences_random(nc, groups, k, stride, dilation, padding,
                                                   cout_g, seed):
    rng = np.random.default_rng(seed)
    size = max(1, dilation * (k - 1) + 1 - 2 * padding) + int(rng.integers(0, 3))
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    _check_conv(nc, rng, (1, 2 * groups, size, size + 1), (cout_g * groups, 2, k, k), args)


def test_reference_conv2d_backward_finite_differences():
    """The reference's own backward against its own forward."""
    rng = np.random.default_rng(101)
    args = dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2)
    x = rng.normal(size=(1, 4, 5, 5))
    w = rng.normal(size=(2, 2, 2, 2))
    g = rng.normal(size=ref.conv2d(x, w, **args).shape)

    def loss():
        return float(np.sum(ref.conv2d(x, w, **args) * g))

    gx, gw, _ = ref.conv2d_backward(g, x, w, **args)
    np.testing.assert_allclose(gx, numeric_grad(loss, x), **TOL)
    np.testing.assert_allclose(gw, numeric_grad(loss, w), **TOL)


# --------------------------------------------------------------------------------------------
# pooling

MAX_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1)),
    dict(kernel_size=2, stride=1, dilation=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=2, dilation=(1, 2), padding=(1, 0), ceil_mode=True),
]


@pytest.mark.parametrize("args", MAX_CASES, ids=repr)
def test_max_pool2d_backward_finite_differences(nc, args):
    rng = np.random.default_rng(200)
    x = distinct_values(rng, (2, 2, 6, 7))
    y, idx = nc.max_pool2d(x, return_indices=True, **args)
    g = rng.normal(size=y.shape)

    def loss():
        return float(np.sum(nc.max_pool2d(x, **args) * g))

    gx = nc.max_pool2d_backward(g, idx, x.shape)
    np.testing.assert_allclose(gx, numeric_grad(loss, x), **TOL)


AVG_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=2, stride=3, ceil_mode=True),
    dict(kernel_size=(3, 2), padding=(1, 0), divisor_override=5),
]


@pytest.mark.parametrize("args", AVG_CASES, ids=repr)
def test_avg_pool2d_backward_finite_differences(nc, args):
    rng = np.random.default_rng(300)
    x = rng.normal(size=(2, 2, 7, 6))
    y = nc.avg_pool2d(x, **args)
    g = rng.normal(size=y.shape)

    def loss():
        return float(np.sum(nc.avg_pool2d(x, **args) * g))

    gx = nc.avg_pool2d_backward(g, x.shape, **args)
    np.testing.assert_allclose(gx, numeric_grad(loss, x), **TOL)


def test_reference_pool_backwards_finite_differences():
    rng = np.random.default_rng(301)
    margs = dict(kernel_size=(3, 2), stride=2, dilation=(1, 2), padding=(1, 0), ceil_mode=True)
    x = distinct_values(rng, (1, 2, 6, 7))
    y, idx = ref.max_pool2d(x, return_indices=True, **margs)
    g = rng.normal(size=y.shape)
    np.testing.assert_allclose(
        ref.max_pool2d_backward(g, idx, x.shape),
        numeric_grad(lambda: float(np.sum(ref.max_pool2d(x, **margs) * g)), x), **TOL)

    aargs = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    x = rng.normal(size=(1, 2, 6, 7))
    g = rng.normal(size=ref.avg_pool2d(x, **aargs).shape)
    np.testing.assert_allclose(
        ref.avg_pool2d_backward(g, x.shape, **aargs),
        numeric_grad(lambda: float(np.sum(ref.avg_pool2d(x, **aargs) * g)), x), **TOL)
