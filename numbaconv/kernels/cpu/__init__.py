"""Numba CPU kernels. Private: call them through :mod:`numbaconv.functional`."""

from .cache import install_locator

install_locator()  # before any kernel is defined: their cache is stamped with all their sources
