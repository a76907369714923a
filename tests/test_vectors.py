"""``numbaconv.vectors``: 512-bit vectors chosen at import, and when the choice is skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from support import REPO_ROOT

from numbaconv.vectors import wide_features

HAS_AVX512 = wide_features() is not None

PROBE = textwrap.dedent("""
    import os, sys
    if sys.argv[1] == "numba-first":  # a program that defined a Numba function already
        import numba
        numba.njit(lambda x: x)
    import numba, numbaconv
    from numba.core.registry import cpu_target
    features = cpu_target.target_context.codegen()._tm_features
    print(os.environ.get("NUMBA_CPU_FEATURES", "-"), features.endswith("-prefer-256-bit"))
""")


def _probe(mode: str, **env) -> list[str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_CPU_FEATURES", "NUMBACONV_WIDE_VECTORS")}
    environ.update(env, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=environ, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not HAS_AVX512, reason="this CPU has no AVX-512")
def test_import_prefers_wide_vectors_and_children_inherit_it():
    features, in_codegen = _probe("plain")
    assert features == wide_features() and features.endswith(",-prefer-256-bit")
    assert in_codegen == "True"


@pytest.mark.parametrize("mode, env", [("plain", {"NUMBACONV_WIDE_VECTORS": "0"}),
                                       ("numba-first", {}),
                                       ("plain", {"NUMBA_CPU_FEATURES": "+avx2"})])
def test_wide_vectors_skipped(mode, env):
    features, in_codegen = _probe(mode, **env)
    assert features == env.get("NUMBA_CPU_FEATURES", "-")  # unset, or the user's own
    assert in_codegen == "False"


def test_without_avx512_nothing_changes(monkeypatch):
    import llvmlite.binding as llvm

    class NoAvx512(dict):
        def flatten(self):
            return "+avx2"

    monkeypatch.setattr(llvm, "get_host_cpu_features", lambda: NoAvx512(avx2=True))
    assert wide_features() is None


@pytest.mark.skipif(not HAS_AVX512, reason="this CPU has no AVX-512: its own run tests the "
                    "16-register tiles already")
def test_the_16_register_tiles_compute_the_same_convolutions(tmp_path):
    """The kernels as a CPU without AVX-512 gets them (32-byte vectors, the output-channel
    kernels' six-position tiles, the products' two-row ones: ``simd.REGISTERS`` 16), compiled
    here for this CPU with its AVX-512 features turned off, against the float64 reference:
    the tests of those kernels, LeNet's, the vector type's and the pixel-major layout's
    (the unrolled products, the swaps by W x W squares), run again in such a process (its own
    Numba cache)."""
    import llvmlite.binding as llvm

    narrow = llvm.get_host_cpu_features().flatten().replace("+avx512", "-avx512")
    environ = {k: v for k, v in os.environ.items() if k != "NUMBACONV_WIDE_VECTORS"}
    environ.update(NUMBA_CPU_FEATURES=narrow, NUMBA_CACHE_DIR=str(tmp_path))
    check = subprocess.run(
        [sys.executable, "-c", "from numbaconv.kernels.cpu import simd; "
         "print(simd.REGISTERS, simd.VECTOR_BYTES)"],
        env=environ, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert check.stdout.split() == ["16", "32"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "tests/test_conv.py", "tests/test_lenet_kernels.py", "tests/test_simd.py",
         "tests/test_pixel_major.py",
         # -k selects among all the files' tests: test_conv.py's output-channel ones, the rest
         # (the file's name: "test_conv" alone also matched tests named test_convolutions_...)
         "-k", "channel_vector or not test_conv.py"],
        env=environ, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
