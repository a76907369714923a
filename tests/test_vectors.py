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
