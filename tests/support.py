"""Helpers shared by the test modules (import them from here, not from ``conftest``: with
``tests/cuda/conftest.py`` beside it, the name ``conftest`` is ambiguous).

* ``require_torch()``: PyTorch parity tests skip when torch is absent, except when the ``CI``
  environment variable is set, where a missing torch is a failure.
* ``layout``: the same values in a contiguous or a non-contiguous array (transposed, strided,
  Fortran-ordered or negatively strided views).
* tolerance helpers shared by the parity tests.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


def require_torch():
    """Import torch, or skip the calling test; with ``CI`` set a missing torch fails instead."""
    if os.environ.get("CI"):
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            pytest.fail(f"torch is required for the parity tests when CI is set: {exc}",
                        pytrace=False)
    else:
        torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def on_1_and_2_threads(compute) -> list:
    """``[compute() on 1 Numba thread, compute() on 2]``, the default count restored after
    each: for the kernels whose results must not depend on the number of threads."""
    from numbaconv.threads import set_threads

    results = []
    for threads in (1, 2):
        set_threads(threads)
        try:
            results.append(compute())
        finally:
            set_threads(None)
    return results


# --------------------------------------------------------------------------------------------
# array layouts

LAYOUTS = ("C", "F", "transposed", "strided", "reversed")


def layout(arr: np.ndarray, kind: str) -> np.ndarray:
    """``arr``'s values in an array laid out as ``kind``; every kind but "C" is non-contiguous
    (for arrays with more than one element along the last two axes)."""
    arr = np.asarray(arr)
    if kind == "C":
        return np.ascontiguousarray(arr)
    if kind == "F":
        return np.asfortranarray(arr)
    if kind == "transposed":
        swapped = np.ascontiguousarray(np.swapaxes(arr, -1, -2))
        return np.swapaxes(swapped, -1, -2)
    if kind == "strided":
        big = np.full(arr.shape[:-2] + (2 * arr.shape[-2], 3 * arr.shape[-1]), 7.0,
                      dtype=arr.dtype)
        view = big[..., ::2, ::3]
        view[...] = arr
        return view
    if kind == "reversed":
        flipped = np.ascontiguousarray(arr[..., ::-1, ::-1])
        return flipped[..., ::-1, ::-1]
    raise ValueError(kind)


# --------------------------------------------------------------------------------------------
# tolerances

TOL = {
    np.float64: dict(rtol=1e-10, atol=1e-10),
    np.float32: dict(rtol=1e-4, atol=1e-4),
}


def tol(dtype) -> dict:
    return TOL[np.dtype(dtype).type]


def assert_close(got, expected, dtype, what=""):
    """``got`` has dtype ``dtype``, the shape of ``expected`` and its values within tolerance."""
    got_arr = np.asarray(got)
    expected = np.asarray(expected)
    assert isinstance(got, np.ndarray), f"{what}: expected an ndarray, got {type(got)}"
    assert got_arr.dtype == np.dtype(dtype), f"{what}: dtype {got_arr.dtype} != {dtype}"
    assert got_arr.shape == expected.shape, f"{what}: shape {got_arr.shape} != {expected.shape}"
    np.testing.assert_allclose(got_arr.astype(np.float64), expected, err_msg=what,
                               equal_nan=True, **tol(dtype))
