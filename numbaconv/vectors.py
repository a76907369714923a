"""512-bit vectors for Numba's kernels on CPUs with AVX-512.

LLVM, and so Numba, prefers 256-bit vectors even where AVX-512 exists, because the first
AVX-512 CPUs lowered their clock while running 512-bit instructions. numbaconv's kernels are
multiply-add loops over long rows and gain from the double width on current CPUs: 5-12% per
LeNet stage on the reference machine's Xeon (see docs/performance.md).

``import numbaconv`` calls :func:`prefer_wide_vectors` before its kernels are defined. The
choice belongs to the whole process (Numba fixes its CPU features when it first compiles or
defines a function), so it also applies to the importing program's own Numba functions
defined afterwards. It is skipped when Numba has already been used (then nothing would
change), when ``NUMBA_CPU_FEATURES`` is set (the user's choice wins), and with
``NUMBACONV_WIDE_VECTORS=0``. Numba keys its on-disk cache by the CPU features, so kernels
compiled either way never mix; child processes inherit the choice through the environment.
"""

from __future__ import annotations

import os

__all__ = ["prefer_wide_vectors", "wide_features"]


def wide_features() -> str | None:
    """The host's CPU features for LLVM without its 256-bit preference (``...,
    -prefer-256-bit``), or None on a CPU without AVX-512."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    if not features.get("avx512f"):
        return None
    return features.flatten() + ",-prefer-256-bit"


def _numba_started() -> bool:
    """Whether Numba's CPU target exists already (its CPU features are then fixed)."""
    from numba.core.registry import cpu_target

    return "_toplevel_target_context" in vars(cpu_target)


def prefer_wide_vectors() -> bool:
    """Let this process's Numba use 512-bit vectors where the CPU has AVX-512; True if it
    did (see the module's docstring for when it does not)."""
    if "NUMBA_CPU_FEATURES" in os.environ or os.environ.get("NUMBACONV_WIDE_VECTORS") == "0":
        return False
    import numba

    if _numba_started():
        return False
    features = wide_features()
    if features is None:
        return False
    os.environ["NUMBA_CPU_FEATURES"] = features  # for child processes
    numba.config.CPU_FEATURES = features  # read when Numba's CPU target starts
    return True


if __name__ == "__main__":  # NUMBA_CPU_FEATURES="$(python -m numbaconv.vectors)" for others
    print(wide_features() or "")
