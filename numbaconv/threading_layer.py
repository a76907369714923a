"""Numba's threading layer for numbaconv's parallel kernels: TBB, where it can load.

The layer Numba picks by default on Linux, GNU OpenMP, is not fork-safe: after any parallel
kernel, a child made by ``fork()`` (``multiprocessing``'s default start method on Linux
before Python 3.14) that runs a parallel kernel kills itself with SIGTERM ("Terminating:
fork() called from a process already using GNU OpenMP"), and a ``multiprocessing.Pool``
whose worker died that way waits forever. Numba's ``workqueue`` layer survives fork but
aborts the process when two Python threads launch kernels at once. Numba's ``tbb`` layer
survives both (Numba's docs call it the one "safe" layer), so ``import numbaconv`` selects
it through :func:`prefer_tbb`; ``pip install numbaconv`` brings TBB (the ``tbb`` package,
2021.6 or later as Numba requires) on the platforms that have its wheels, Linux and Windows
on x86-64.

``pip install tbb`` puts the library where the dynamic loader does not look (a virtual
environment's ``lib/``), so Numba cannot load its own ``tbb`` layer there even when asked
to. :func:`load_tbb` loads the library from the ``tbb`` package's files first; Numba's layer
then finds it loaded.

The user's choice wins: with ``NUMBA_THREADING_LAYER`` or ``NUMBA_THREADING_LAYER_PRIORITY``
set, or ``numba.config.THREADING_LAYER`` assigned before ``import numbaconv``, numbaconv only
makes TBB loadable and Numba chooses. Where TBB cannot load (macOS, Arm, no ``tbb``
package), Numba's default stays: there use the ``spawn`` or ``forkserver`` start method with
multiprocessing, or call kernels from one thread at a time under ``workqueue``.
``numba.threading_layer()`` after the first parallel kernel names the layer in use.

On a quiet machine TBB costs no speed: on a 2-CPU "Intel(R) Xeon(R) Processor", timed in
the same quiet moments as OpenMP, a LeNet training step (batch 256) took 6.8-7.0 ms on 2
threads against OpenMP's 6.9-7.1 ms (11.8-12.1 against 12.3-13.8 ms on 1 thread); conv2's
forward and conv1's backward were within 8% either way. TBB's idle threads spin briefly and
then sleep, so no wait policy applies (``OMP_WAIT_POLICY``, see :mod:`numbaconv.threads`).
On a busy machine (load 3-8 on the 2 CPUs) a step on 2 threads took 17-18 ms against
114-258 ms with OpenMP's default policy and 13 ms with ``PASSIVE`` (what ``numbaconv run``
chose there).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MIN_TBB_INTERFACE", "load_tbb", "may_use_openmp", "prefer_tbb", "user_choice"]

#: TBB_runtime_interface_version of TBB 2021.6, the oldest release Numba's layer accepts.
MIN_TBB_INTERFACE = 12060

#: The file name TBB's runtime library has on each system (as Numba loads it).
_TBB_LIBRARY = {"win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}.get(sys.platform,
                                                                       "libtbb.so.12")


def _tbb_package_libraries() -> list[str]:
    """Paths of TBB's runtime library among the installed ``tbb`` package's files."""
    from importlib import metadata

    try:
        files = metadata.distribution("tbb").files or []
    except metadata.PackageNotFoundError:
        return []
    return [str(file.locate()) for file in files if file.name == _TBB_LIBRARY]


def _interface_version() -> int | None:
    """TBB_runtime_interface_version of the TBB that loads by its library's name, as Numba
    loads it (one already loaded, else the dynamic loader's find), or None."""
    try:
        version = ctypes.CDLL(_TBB_LIBRARY).TBB_runtime_interface_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_int
    return version()


def load_tbb() -> bool:
    """Load TBB's runtime library into this process, the ``tbb`` package's first (a library
    loaded once is the one every later load by name gets), else the dynamic loader's; True
    when a TBB of :data:`MIN_TBB_INTERFACE` or later is loaded."""
    for path in _tbb_package_libraries():
        try:
            ctypes.CDLL(path)
            break
        except OSError:
            continue
    version = _interface_version()
    return version is not None and version >= MIN_TBB_INTERFACE


def user_choice() -> str | None:
    """The threading layer the user asked Numba for (lower case), or None when Numba's
    default stands; ``"priority"`` for an order of layers in
    ``NUMBA_THREADING_LAYER_PRIORITY``."""
    import numba

    if "NUMBA_THREADING_LAYER" in os.environ:
        return os.environ["NUMBA_THREADING_LAYER"].strip().lower()
    if str(numba.config.THREADING_LAYER).lower() != "default":
        return str(numba.config.THREADING_LAYER).lower()
    if "NUMBA_THREADING_LAYER_PRIORITY" in os.environ:
        return "priority"
    return None


def _layer_started() -> bool:
    """Whether Numba has started its threading layer (then the choice is made)."""
    from numba.np.ufunc import parallel

    return bool(parallel._is_initialized)


def _tbb_usable() -> bool:
    """Whether Numba's ``tbb`` layer can start: TBB loads and so does Numba's module for it."""
    if not load_tbb():
        return False
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (what Numba's layer loads)
    except ImportError:
        return False
    return True


def prefer_tbb() -> bool:
    """Make TBB loadable for Numba and select its ``tbb`` threading layer, unless the user
    chose a layer, or the layer has started, or TBB cannot load; True if it selected it (see
    the module's docstring). Call it before the first parallel kernel runs.

    Numba's default order tries ``tbb`` first, so once TBB loads, Numba's default picks it
    too: when Numba re-reads its ``NUMBA_*`` variables (at a compile after one changed), the
    choice stands."""
    import numba

    choice = user_choice()
    if _layer_started() or choice in ("omp", "workqueue") or not _tbb_usable():
        return False
    if choice is not None:
        return False
    numba.config.THREADING_LAYER = "tbb"
    return True


def may_use_openmp() -> bool:
    """Whether Numba's threading layer is, or may become, OpenMP: it started as ``omp``, or
    it has not started and neither a layer without OpenMP (``tbb``, ``safe``,
    ``workqueue``) is chosen nor Numba's default order picks a usable TBB first."""
    import numba

    if _layer_started():
        return numba.threading_layer() == "omp"
    layer = str(numba.config.THREADING_LAYER).lower()
    if layer in ("tbb", "safe", "workqueue"):
        return False
    if layer == "default" and numba.config.THREADING_LAYER_PRIORITY[0] == "tbb":
        return not _tbb_usable()
    return True
