"""bench/gpu_check.py --ptx: ptxas' report of registers, spills and shared memory, and a
kernel that spills failing the check.

Here, not in tests/cuda, so that the plain ``python -m pytest`` runs it on a machine without
a GPU (tests/cuda's conftest skips its tests there); it needs the real CUDA compiler, which
``numba-cuda[cu12]`` (the ``cuda`` extra) brings: NVVM and ptxas. Without them it skips,
except where ``CI`` is set (CI installs them: there their absence is a failure).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from support import REPO_ROOT

spec = importlib.util.spec_from_file_location(
    "gpu_check", os.path.join(REPO_ROOT, "bench", "gpu_check.py"))
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)

# Two reports of ptxas 12.9 (`ptxas -v`), the mangled names shortened: sm_80 under
# --maxrregcount 24, a kernel that spills; sm_90, a convolution kernel with shared memory.
SPILLING_REPORT = """\
ptxas info    : Overriding maximum register limit 256 for '_ZN8__main__11spill_probeB2v1E' with  24 of maxrregcount option
ptxas info    : 8 bytes gmem, 8 bytes cmem[4]
ptxas info    : Compiling entry function '_ZN8__main__11spill_probeB2v1E' for 'sm_80'
ptxas info    : Function properties for _ZN8__main__11spill_probeB2v1E
    168 bytes stack frame, 188 bytes spill stores, 216 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers, 168 bytes cumulative stack size, 464 bytes cmem[0]
ptxas info    : Compile time = 8.416 ms
"""  # noqa: E501

CONV_REPORT = """\
ptxas info    : 40 bytes gmem
ptxas info    : Compiling entry function '_ZN9numbaconv12conv_forwardB4v127E' for 'sm_90'
ptxas info    : Function properties for _ZN9numbaconv12conv_forwardB4v127E
    128 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 120 registers, used 1 barriers, 128 bytes cumulative stack size, 6208 bytes smem
ptxas info    : Compile time = 158.671 ms
"""  # noqa: E501


def test_the_report_of_a_spilling_kernel():
    (name, got), = gpu_check.parse_ptxas_report(SPILLING_REPORT).items()
    assert name == "_ZN8__main__11spill_probeB2v1E"
    assert got == gpu_check.Resources(registers=24, spill_stores=188, spill_loads=216,
                                      stack=168, smem=0)
    assert got.spills


def test_the_report_of_a_kernel_with_shared_memory():
    (name, got), = gpu_check.parse_ptxas_report(CONV_REPORT).items()
    assert name == "_ZN9numbaconv12conv_forwardB4v127E"
    assert got == gpu_check.Resources(registers=120, spill_stores=0, spill_loads=0, stack=128,
                                      smem=6208)
    assert not got.spills


@pytest.fixture
def compiler(monkeypatch):
    """numba-cuda's real compiler (NVVM) and ptxas, else a skip (a failure under ``CI``);
    whatever the check changes in numba-cuda is undone afterwards."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("needs the real CUDA compiler, not the simulator")
    missing = None
    try:
        from numba import cuda
        from numba import types as nbtypes

        cuda.compile_ptx(lambda a: None, (nbtypes.float32[::1],), cc=(8, 0))
    except Exception as exc:  # numba-cuda or NVVM missing
        missing = f"no CUDA compiler (NVVM): {type(exc).__name__}: {exc}"
    if missing is None and gpu_check.find_ptxas() is None:
        missing = "no ptxas"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI installs numba-cuda[cu12], which brings it")
        pytest.skip(missing)
    import numba.cuda.dispatcher as dispatcher

    monkeypatch.setattr(dispatcher, "get_current_device", dispatcher.get_current_device)
    return cuda


def _spill_probe(cuda):
    """(signatures for ptx_check, its kernel): a float32 kernel whose 32 loaded values all
    stay live across a store that may alias them: 48 registers on sm_80, so it spills when
    ptxas may use 24."""
    from numba import types

    @cuda.jit
    def spill_probe(x, out):
        i = cuda.grid(1)
        values = cuda.local.array(32, types.float32)
        for k in range(32):
            values[k] = x[i + k]
        out[i] = 0
        total = values[0] * values[31]
        for k in range(1, 32):
            total += values[k] * values[31 - k]
        out[i] = total

    def signatures(dt):
        if dt != types.float32:
            return []
        return [("spill_probe", spill_probe, (types.float32[::1], types.float32[::1]))]

    return signatures


def test_a_kernel_that_spills_fails_the_check(compiler, capsys):
    signatures = _spill_probe(compiler)
    assert gpu_check.ptx_check("8.0", signatures=signatures) == 0
    out = capsys.readouterr().out
    assert "kernels that spill registers: none" in out, out
    assert "spills 0/0 bytes" in out, out

    assert gpu_check.ptx_check("8.0", max_registers=24, signatures=signatures) == 1
    out = capsys.readouterr().out
    assert "kernels that spill registers: spill_probe [float32] sm_80 (" in out, out
