"""Numba's on-disk cache of the CPU kernels (``numbaconv.kernels.cpu.cache``): an edit to any
kernel module must reach every kernel that inlines its code, without clearing a cache by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from support import REPO_ROOT

HELPER = textwrap.dedent("""
    from numba import njit


    @njit(inline="always")
    def value():
        return {value}
""")

KERNEL = textwrap.dedent("""
    from numba import njit

    from ._probe_helper import value


    @njit(cache=True)
    def probe():
        return value()
""")

RUN = textwrap.dedent("""
    from numbaconv.kernels.cpu._probe_kernel import probe

    print(probe(), "loaded" if probe.stats.cache_hits else "compiled")
""")


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the numbaconv package with a probe kernel that inlines a helper from another
    module, as the conv kernels inline ``conv/tiles.py`` and ``simd.py``."""
    root = tmp_path / "src"
    shutil.copytree(os.path.join(REPO_ROOT, "numbaconv"), root / "numbaconv",
                    ignore=shutil.ignore_patterns("__pycache__", "*.gz"))
    kernels = root / "numbaconv" / "kernels" / "cpu"
    (kernels / "_probe_helper.py").write_text(HELPER.format(value=1))
    (kernels / "_probe_kernel.py").write_text(KERNEL)
    return root


@pytest.mark.parametrize("where", ["NUMBA_CACHE_DIR", "__pycache__"])
def test_an_edit_to_an_inlined_helpers_module_recompiles_the_kernel(package_copy, tmp_path,
                                                                    where):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = str(package_copy)
    if where == "NUMBA_CACHE_DIR":
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")

    def run():
        out = subprocess.run([sys.executable, "-c", RUN], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert run() == ["1", "compiled"]
    assert run() == ["1", "loaded"]  # the cache works
    helper = package_copy / "numbaconv" / "kernels" / "cpu" / "_probe_helper.py"
    helper.write_text(HELPER.format(value=2))
    assert run() == ["2", "compiled"]  # not the stale 1 of the kernel's unchanged module
    assert run() == ["2", "loaded"]
    cached = [name for _, _, names in os.walk(tmp_path) for name in names
              if name.startswith("_probe_kernel.probe") and name.endswith(".nbi")]
    assert len(cached) == 1  # the edit reused the kernel's index file: nothing left behind


def test_every_kernel_is_cached_through_the_locator():
    from numbaconv import precompile as P
    from numbaconv.kernels.cpu.cache import KernelSourcesLocator

    for name in P.KERNELS:
        assert isinstance(P._dispatcher(name)._cache._impl.locator, KernelSourcesLocator), name


def test_other_functions_keep_numbas_locators(tmp_path):
    # a program's own cached function, outside numbaconv's kernels: stamped by its own file
    module = tmp_path / "own_kernel.py"
    module.write_text("from numba import njit\n\n\n@njit(cache=True)\ndef f():\n    return 1\n")
    from numbaconv.kernels.cpu.cache import KernelSourcesLocator  # installs the locator

    sys.path.insert(0, str(tmp_path))
    try:
        import own_kernel

        assert not isinstance(own_kernel.f._cache._impl.locator, KernelSourcesLocator)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("own_kernel", None)
