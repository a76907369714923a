"""Helpers shared by the CUDA test modules."""

import os

import numpy as np

from numbaconv.kernels.cuda.device import is_device_array, to_host

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def close(got_device, expected, dtype, what="", *, tol):
    """``got_device`` is a device array of ``dtype`` and ``expected``'s shape, within
    ``tol[dtype]`` (a dict of assert_allclose's rtol/atol per NumPy float type)."""
    assert is_device_array(got_device), f"{what}: not a device array: {type(got_device)}"
    got = to_host(got_device)
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype} != {np.dtype(dtype)}"
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    np.testing.assert_allclose(got.astype(np.float64), np.asarray(expected, np.float64),
                               err_msg=what, equal_nan=True, **tol[np.dtype(dtype).type])
