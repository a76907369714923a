"""Device discovery and host<->device transfers for the CUDA backend.

Importing this module never imports numba-cuda: every function imports it on first use, so
``cuda_available()`` can report *why* the backend is unusable instead of failing to import.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import warnings

import numpy as np


def simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1`` before import)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        from numba import config
    except ImportError:
        return False
    return bool(getattr(config, "ENABLE_CUDASIM", False))


def is_device_array(obj) -> bool:
    """True for a numba CUDA device array (a simulator one too) or any object that exports
    ``__cuda_array_interface__`` (a CuPy array, a CUDA torch tensor)."""
    return bool(getattr(obj, "__cuda_ndarray__", False)) \
        or hasattr(obj, "__cuda_array_interface__")


INSTALL_HINT = "install it with: pip install 'numbaconv[cuda]'"


def cuda_available() -> tuple[bool, str]:
    """``(usable, reason)``: whether the CUDA backend can run here, and why (not)."""
    try:
        from numba import cuda
    except Exception as exc:  # numba-cuda missing or broken
        return False, (f"numba-cuda is not importable ({type(exc).__name__}: {exc}); "
                       f"{INSTALL_HINT}")
    if simulator_enabled():
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        if not cuda.is_available():
            if importlib.util.find_spec("numba_cuda") is None:  # Numba's own, older cuda
                return False, f"numba-cuda is not installed; {INSTALL_HINT}"
            return False, "numba-cuda found no usable CUDA GPU or driver"
        name = cuda.get_current_device().name
    except Exception as exc:
        return False, f"CUDA initialisation failed ({type(exc).__name__}: {exc})"
    if isinstance(name, bytes):
        name = name.decode()
    try:
        _compile_and_launch_probe(cuda)
    except Exception as exc:
        first_line = (str(exc).splitlines() or [""])[0]
        return False, (f"numba-cuda cannot compile or launch a kernel on {name} "
                       f"({type(exc).__name__}: {first_line})")
    return True, f"CUDA device {name}"


def _compile_and_launch_probe(cuda) -> None:
    """Compile and run a one-thread kernel, so that a numba-cuda which imports but cannot
    compile (seen: numba-cuda 0.30.4 beside NumPy 2.5, which dropped ``np.row_stack``) is
    reported here, in one line, rather than as a traceback in the middle of a run."""
    def write_one(out):
        out[0] = 1.0

    out = cuda.device_array(1, dtype=np.float32)
    with small_grids_allowed():  # a one-block grid is the point here
        cuda.jit(write_one)[1, 1](out)
    if out.copy_to_host()[0] != 1.0:
        raise RuntimeError("a probe kernel ran but did not write its output")


@contextlib.contextmanager
def small_grids_allowed():
    """A context without numba-cuda's performance warnings, which it raises for every launch
    of fewer than 128 blocks (a bias sum over a few channels, a probe): expected here."""
    classes = []
    for module in ("numba.core.errors", "numba.cuda.core.errors"):  # numba-cuda 0.30 has its own
        try:
            classes.append(importlib.import_module(module).NumbaPerformanceWarning)
        except (ImportError, AttributeError):
            pass
    with warnings.catch_warnings():
        for cls in classes:
            warnings.simplefilter("ignore", cls)
        yield


def device_name() -> str:
    """Name of the current CUDA device (``'simulator'`` under the simulator)."""
    from numba import cuda

    if simulator_enabled():
        return "simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def to_device(array, dtype=None):
    """Copy a host array (any array-like) to a new C-contiguous device array.

    A device array is returned as it is (or converted when ``dtype`` differs, via the host).
    """
    from numba import cuda

    if is_device_array(array):
        if dtype is None or np.dtype(dtype) == np.dtype(array.dtype):
            return array
        array = to_host(array)
    return cuda.to_device(np.asarray(array, dtype=dtype, order="C"))  # 0-d stays 0-d


def to_host(array) -> np.ndarray:
    """Copy a device array back to a new host ``numpy.ndarray`` (host arrays pass through)."""
    if is_device_array(array) and hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    if hasattr(array, "__cuda_array_interface__"):
        from numba import cuda

        return cuda.as_cuda_array(array).copy_to_host()
    return np.asarray(array)


def zeros(shape, dtype=np.float32):
    """A new device array of zeros (through a host copy: meant for one-off optimizer state)."""
    from numba import cuda

    return cuda.to_device(np.zeros(shape, dtype=dtype))


def zeros_like(array):
    """A new zeroed device array with the shape and dtype of ``array``."""
    return zeros(array.shape, array.dtype)


def synchronize() -> None:
    """Wait for every kernel launched so far to finish."""
    from numba import cuda

    cuda.synchronize()
