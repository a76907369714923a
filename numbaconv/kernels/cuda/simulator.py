"""A fix for Numba's CUDA simulator: shared arrays allocated atomically.

The simulator runs each thread of a block as a Python thread. The threads that reach the same
``cuda.shared.array(...)`` line get one NumPy array, which ``FakeCUDAShared.array`` looks up
by file and line in a dict: it reads the dict and, when the entry is missing, creates the
array and stores it, in two steps. A thread switched out between the two keeps an array of
its own that the rest of the block never sees: its writes are lost and it reads
uninitialised memory (a simulated LeNet training run once reported a loss of 2.2e27; forcing
the switch makes every such launch wrong). ``dict.setdefault`` makes the step atomic under
the GIL. Installed by :mod:`numbaconv.kernels.cuda.ops` when the simulator is on, and only
over the implementation known to race (recognised by its source line: numba-cuda 0.20 to at
least 0.30.4 have it).
"""

from __future__ import annotations

import inspect
import sys

import numpy as np

_RACY_LOOKUP = "res = self._allocations.get(caller)"


def share_arrays_atomically() -> bool:
    """Replace the simulator's ``FakeCUDAShared.array`` with an atomic one; True if done
    (False: not the racy implementation, e.g. a fixed numba-cuda, so left alone)."""
    from numba.cuda.simulator import kernelapi

    types, numpy_support = kernelapi.types, kernelapi.numpy_support  # its own, in every version
    original = kernelapi.FakeCUDAShared.array
    if getattr(original, "_numbaconv_atomic", False):
        return True
    try:
        racy = _RACY_LOOKUP in inspect.getsource(original)
    except (OSError, TypeError):
        racy = False
    if not racy:
        return False

    def array(self, shape, dtype, alignment=None):
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        if shape == 0:  # dynamic shared memory: one buffer for every request
            count = self._dynshared_size // dtype.itemsize
            return np.frombuffer(self._dynshared.data, dtype=dtype, count=count)
        frame = sys._getframe(1)  # the kernel's line that asks for the array
        caller = (frame.f_code.co_filename, frame.f_lineno)
        return self._allocations.setdefault(caller, np.empty(shape, dtype))

    array._numbaconv_atomic = True
    array.__wrapped_original__ = original  # for the tests' control experiment
    kernelapi.FakeCUDAShared.array = array
    return True
