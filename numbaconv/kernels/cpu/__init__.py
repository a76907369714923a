"""Numba CPU kernels. Private: call them through :mod:`numbaconv.functional`."""
