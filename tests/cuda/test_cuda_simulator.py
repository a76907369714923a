"""The simulator fix (numbaconv.kernels.cuda.simulator): threads of a block that ask for the
same shared array get one array even when the interpreter switches threads mid-request."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

import numba  # noqa: E402
from numba import cuda  # noqa: E402

# importing ops installs the fix
from numbaconv.kernels.cuda import config, ops, simulator  # noqa: E402, F401

pytestmark = pytest.mark.skipif(not config.SIMULATOR, reason="the CUDA simulator only")

THREADS = 16


@cuda.jit
def _fill_barrier_sum(out):
    first = cuda.shared.array(THREADS, numba.float64)
    second = cuda.shared.array(THREADS, numba.float64)
    t = cuda.threadIdx.x
    first[t] = 1.0
    second[t] = 2.0
    cuda.syncthreads()
    total = 0.0
    for j in range(THREADS):
        total += first[j] + second[j]
    out[t] = total


class _SlowEmpty:
    """numpy, except that ``empty`` sleeps first: the thread switch the race needs."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(*args, **kwargs):
        time.sleep(0.002)
        return np.empty(*args, **kwargs)


def _bad_launches(launches=4):
    bad = 0
    for _ in range(launches):
        out = np.zeros(THREADS)
        _fill_barrier_sum[1, THREADS](out)
        bad += not np.all(out == 3.0 * THREADS)
    return bad


def _installed_fix():
    from numba.cuda.simulator import kernelapi

    fixed = kernelapi.FakeCUDAShared.array
    if not getattr(fixed, "_numbaconv_atomic", False):
        pytest.skip("this numba-cuda's shared arrays are not the racy implementation")
    return kernelapi, fixed


def test_shared_arrays_are_shared_when_threads_switch_mid_allocation(monkeypatch):
    _installed_fix()
    monkeypatch.setattr(simulator, "np", _SlowEmpty())
    assert _bad_launches() == 0


def test_without_the_fix_the_same_switch_breaks_the_kernel(monkeypatch):
    """The control: the forced switch does expose the race in the simulator's own code."""
    kernelapi, fixed = _installed_fix()
    monkeypatch.setattr(kernelapi.FakeCUDAShared, "array", fixed.__wrapped_original__)
    monkeypatch.setattr(kernelapi, "np", _SlowEmpty())
    assert _bad_launches() > 0
