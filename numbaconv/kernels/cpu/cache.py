"""Numba's on-disk cache for the CPU kernels, stamped with all of their source files.

``cache=True`` stamps a function's cached machine code with a hash of its own source file
only. Most kernels here inline helpers from other modules (the register tiles of
``conv/tiles.py``, the intrinsics of ``simd.py``), so after an edit there Numba would load the
stale code. :func:`install_locator` makes Numba find the cache of every function defined under
this package through :class:`KernelSourcesLocator`: the folder Numba's own locators choose
(``NUMBA_CACHE_DIR``, or ``__pycache__`` beside the module, or the user-wide cache), stamped
with a hash of every ``*.py`` file under this package instead. An edit to any of them changes
the stamp of every kernel; Numba then ignores the old index and overwrites its entries in place
(what it does for an edited module), so nothing needs clearing by hand and no old folder is
left behind. The kernels call nothing outside this package, which is what makes its files
the whole of their source.

Numba's ``NUMBA_CACHE_LOCATOR_CLASSES``, where set, replaces the locators and so this one.
"""

from __future__ import annotations

import functools
import hashlib
import os

from numba.core import caching

__all__ = ["KernelSourcesLocator", "install_locator", "sources_hash"]

KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def sources_hash(directory: str = KERNELS_DIR) -> str:
    """SHA-256 over the relative paths and contents of the ``*.py`` files under
    ``directory``, in a fixed order (read once per process)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            with open(path, "rb") as source:
                contents = source.read()
            digest.update(os.path.relpath(path, directory).encode() + b"\0")
            digest.update(hashlib.sha256(contents).digest())
    return digest.hexdigest()


def _cache_impl():
    """Numba's class that holds the list of locators (renamed from ``_CacheImpl`` in 0.62)."""
    return getattr(caching, "CacheImpl", None) or caching._CacheImpl


class KernelSourcesLocator(caching._CacheLocator):
    """The cache folder of Numba's own locator for a kernel, with :func:`sources_hash` as its
    source stamp."""

    def __init__(self, located):
        self._located = located

    def ensure_cache_path(self):
        self._located.ensure_cache_path()

    def get_cache_path(self):
        return self._located.get_cache_path()

    def get_disambiguator(self):
        return self._located.get_disambiguator()

    def get_source_stamp(self):
        return sources_hash()

    @classmethod
    def from_function(cls, py_func, py_file):
        """This locator for functions defined under this package, else None (Numba then
        asks its own locators)."""
        if not os.path.abspath(py_file).startswith(KERNELS_DIR + os.sep):
            return None
        for locator in _cache_impl()._locator_classes:
            if locator is not cls:
                located = locator.from_function(py_func, py_file)
                if located is not None:
                    return cls(located)
        return None


def install_locator() -> None:
    """Put :class:`KernelSourcesLocator` first among Numba's locators (once per process), so
    that every kernel defined afterwards is cached through it."""
    locators = _cache_impl()._locator_classes
    if KernelSourcesLocator not in locators:
        locators.insert(0, KernelSourcesLocator)
