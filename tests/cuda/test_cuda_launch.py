"""Prepared launches (numbaconv.kernels.cuda.launch) against the dispatcher's launch.

On a GPU the prepared path must be taken (``fast``) and give the dispatcher's results; under
the simulator, or with ``config.PREPARED_LAUNCHES`` off, the dispatcher is called instead.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from numba import cuda  # noqa: E402

from numbaconv.kernels.cuda import config  # noqa: E402
from numbaconv.kernels.cuda.device import simulator_enabled  # noqa: E402
from numbaconv.kernels.cuda.launch import prepare  # noqa: E402


@cuda.jit
def _scaled_sum_kernel(x, y, a, flag, out, start):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i] + (y[i] if flag else 0) + start


@pytest.mark.parametrize("prepared", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_launch_matches_the_dispatcher(prepared, dtype, monkeypatch, rng):
    monkeypatch.setattr(config, "PREPARED_LAUNCHES", prepared)
    x, y = (rng.standard_normal(37).astype(dtype) for _ in range(2))
    a = dtype(1.5)
    d_x, d_y = cuda.to_device(x), cuda.to_device(y)
    ours, theirs = cuda.device_array(37, dtype), cuda.device_array(37, dtype)
    launch = prepare(_scaled_sum_kernel, 2, 32, d_x, d_y, a, True, ours, with_start=True)
    assert launch.fast == (prepared and not simulator_enabled())
    assert launch.name == "_scaled_sum_kernel"
    for start in (5, -3):  # the start is the call's, the other arguments are fixed
        launch(start)
        _scaled_sum_kernel[2, 32](d_x, d_y, a, True, theirs, start)
        np.testing.assert_array_equal(ours.copy_to_host(), theirs.copy_to_host())
        np.testing.assert_allclose(ours.copy_to_host(), a * x + y + start, rtol=1e-6)
    without_start = prepare(_scaled_sum_kernel, 2, 32, d_x, d_y, a, False, ours, 7)
    without_start()
    np.testing.assert_allclose(ours.copy_to_host(), a * x + 7, rtol=1e-6)


@pytest.mark.skipif(simulator_enabled(), reason="the simulator takes the dispatcher's path")
def test_prepared_launch_refuses_host_arrays(rng):
    x = rng.standard_normal(8).astype(np.float32)
    out = cuda.device_array(8, np.float32)
    with pytest.raises(TypeError, match="device arrays only"):
        prepare(_scaled_sum_kernel, 1, 32, x, x, np.float32(1), True, out, 0)


@cuda.jit(debug=True, opt=False)
def _debug_copy_kernel(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i]


def test_a_debug_kernel_goes_through_the_dispatcher(rng):
    # a debug kernel (NUMBA_CUDA_DEBUGINFO=1 makes every kernel one) checks an error flag
    # after each launch, which only the dispatcher does
    x = rng.standard_normal(5).astype(np.float32)
    out = cuda.device_array(5, np.float32)
    launch = prepare(_debug_copy_kernel, 1, 32, cuda.to_device(x), out)
    assert not launch.fast
    launch()
    np.testing.assert_array_equal(out.copy_to_host(), x)


def test_a_prepared_launch_keeps_its_arrays_alive(rng):
    # views made only for the launch: their memory must not be freed and reused
    x = rng.standard_normal((4, 8)).astype(np.float32)
    out = cuda.device_array(32, np.float32)
    launch = prepare(_scaled_sum_kernel, 1, 32, cuda.to_device(x).reshape(32),
                     cuda.to_device(np.zeros(32, np.float32)), np.float32(2), True, out, 0)
    gc.collect()
    scratch = [cuda.to_device(np.full(32, 99.0, np.float32)) for _ in range(8)]
    launch()
    np.testing.assert_array_equal(out.copy_to_host(), 2 * x.reshape(32))
    assert all(array.copy_to_host()[0] == 99.0 for array in scratch)


def test_a_launch_that_does_not_hold_its_arrays_takes_them_at_each_call(rng):
    """hold=False (numbaconv.kernels.cuda.steps, which checks the arrays' addresses before
    each call): nothing is kept, and the dispatcher's path launches the call's arrays."""
    from numbaconv.kernels.cuda.launch import PreparedLaunch

    x = cuda.to_device(rng.standard_normal(8).astype(np.float32))
    out = cuda.device_array(8, np.float32)
    args = (x, x, np.float32(3), False, out)
    launch = PreparedLaunch(_scaled_sum_kernel, 1, 32, args, with_start=True, hold=False)
    assert launch._args is None
    launch(1, args)
    np.testing.assert_allclose(out.copy_to_host(), 3 * x.copy_to_host() + 1, rtol=1e-6)
