"""Adaptive pooling and Identity on CUDA device arrays (the simulator or a GPU) against the same
calls on the CPU: numbaconv.functional and the layers. Tiny shapes: the simulator is slow."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from cuda_support import close as close_within  # noqa: E402

from numbaconv import functional as F  # noqa: E402
from numbaconv.kernels.cuda.device import to_device, to_host  # noqa: E402
from numbaconv.layers import (  # noqa: E402
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    Concat,
    Conv2d,
    Flatten,
    Identity,
    Sequential,
)

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}
close = functools.partial(close_within, tol=TOL)


def randn(shape, rng, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def assert_same(device_result, host_result, what=""):
    close(device_result, host_result, host_result.dtype.type, what)


@pytest.mark.parametrize("size", [1, (2, 3), (4, None), (6, 7)], ids=str)
def test_adaptive_pools_match_the_cpu(size, rng):
    x = randn((2, 3, 5, 4), rng, np.float64)
    dx = to_device(x)
    y, indices = F.adaptive_max_pool2d(x, size, return_indices=True)
    dy, dindices = F.adaptive_max_pool2d(dx, size, return_indices=True)
    assert_same(dy, y, "max")
    np.testing.assert_array_equal(to_host(dindices), indices)
    g = randn(y.shape, rng, np.float64)
    assert_same(F.adaptive_max_pool2d_backward(to_device(g), dindices, x.shape),
                F.adaptive_max_pool2d_backward(g, indices, x.shape), "max backward")
    assert_same(F.adaptive_avg_pool2d(dx, size), F.adaptive_avg_pool2d(x, size), "avg")
    assert_same(F.adaptive_avg_pool2d_backward(to_device(g), x.shape),
                F.adaptive_avg_pool2d_backward(g, x.shape), "avg backward")


def test_adaptive_max_nan_on_the_device():
    x = np.array([[[[1.0, np.nan], [3.0, np.nan]]]], dtype=np.float32)
    y, indices = F.adaptive_max_pool2d(x, 1, return_indices=True)
    dy, dindices = F.adaptive_max_pool2d(to_device(x), 1, return_indices=True)
    np.testing.assert_array_equal(to_host(dy), y)
    np.testing.assert_array_equal(to_host(dindices), indices)


def test_layers_match_the_cpu(rng):
    """Identity as a Concat branch beside an adaptive max pool, then the global average."""
    model = Sequential(Conv2d(2, 3, 3, padding=1, rng=0),
                       Concat(Identity(), AdaptiveMaxPool2d((5, None))), AdaptiveAvgPool2d(1),
                       Flatten())
    twin = copy.deepcopy(model)
    model.to("cuda")
    x = randn((2, 2, 5, 6), rng)
    want = twin.forward(x, training=True)
    assert_same(model.forward(to_device(x), training=True), want, "forward")
    g = randn(want.shape, rng)
    assert_same(model.backward(to_device(g)), twin.backward(g), "backward")
    for name, grad in twin.named_grads().items():
        assert_same(model.named_grads()[name], grad, name)
