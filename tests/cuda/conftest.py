"""The CUDA backend's tests run under Numba's CUDA simulator or on a real GPU, else skip.

Run them as their own pytest invocation, with the simulator switched on before Numba loads:
``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q``. Without it and without a GPU every
test here is skipped, with the reason in the report header and in each skip, except the two
that need neither (the PTX compilation check, which needs NVVM, and the lazy-import check).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _skip_reason():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return None
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"numba-cuda is not importable ({exc})"
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"CUDA initialisation failed ({exc})"
    return ("no CUDA GPU and the simulator is off: run "
            "`NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda`")


SKIP_REASON = _skip_reason()

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator's block manager busy-polls its threads for barriers while holding the
    # GIL; a short switch interval hands the GIL back sooner (about 6x faster here). The finer
    # interleaving once exposed a race in the simulator's shared arrays, which
    # numbaconv.kernels.cuda.simulator fixes (tests/cuda/test_cuda_simulator.py).
    sys.setswitchinterval(1e-4)


def pytest_report_header(config):
    if SKIP_REASON:
        return f"numbaconv CUDA tests: skipped, {SKIP_REASON}"
    mode = "simulator" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "GPU"
    return f"numbaconv CUDA tests: on the {mode}"


# Tests that need neither a GPU nor the simulator (each skips itself if what it needs is absent).
RUNS_WITHOUT_DEVICE = {
    "test_kernels_compile_to_ptx",  # the real CUDA compiler (NVVM) only
    "test_importing_the_backend_does_not_import_numba_cuda",
}


def pytest_collection_modifyitems(config, items):
    if not SKIP_REASON:
        return
    mark = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep) \
                and item.originalname not in RUNS_WITHOUT_DEVICE:
            item.add_marker(mark)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch
