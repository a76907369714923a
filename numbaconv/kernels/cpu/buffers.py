"""Large output and scratch arrays for the CPU kernels, allocated by NumPy in Python.

An array a Numba kernel makes comes from its runtime's ``malloc``: from a few MiB up that is a
fresh mapping of 4 KiB pages, each faulted in (and zeroed) on first touch, one at a time
while the kernel's threads wait, and read afterwards through as many TLB entries. NumPy asks
the kernel for transparent huge pages for arrays of :data:`HUGE_PAGE_BYTES` and more
(``madvise``), so the same array maps in 2 MiB at a time. The kernels that read such arrays
across channel planes (the padded input of a convolution: taps a plane apart) gain most:
the 64-channel layer's backward at 56x56, batch 32, took 165 ms of user time and 9,000 page
faults on 4 KiB pages, 132 ms and 39 faults on huge ones (Intel Xeon, one thread). So the
kernels that make such arrays take them from :func:`empty`.
"""

import numpy as np

LINE = 64  # bytes in a cache line, and in an AVX-512 vector
HUGE_PAGE_BYTES = 4 << 20  # NumPy's arrays from this size ask for transparent huge pages


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array. From :data:`HUGE_PAGE_BYTES` it is NumPy's (on
    huge pages where the kernel gives them) and its data starts on a cache line (NumPy's
    start 16 bytes in, where every 64-byte vector store straddles two lines); below, a plain
    ``np.empty``."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    if size * dtype.itemsize < HUGE_PAGE_BYTES:
        return np.empty(shape, dtype=dtype)
    raw = np.empty(size + LINE // dtype.itemsize, dtype=dtype)
    start = (LINE - raw.ctypes.data % LINE) % LINE // dtype.itemsize
    return raw[start:start + size].reshape(shape)
