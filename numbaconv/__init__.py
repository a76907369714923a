"""numbaconv: a convolutional-network engine whose compute is Numba."""

__version__ = "0.1.0"
