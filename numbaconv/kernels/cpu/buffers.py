"""Large output and scratch arrays for the CPU kernels: allocated by NumPy in Python, and
reused.

An array a Numba kernel makes comes from its runtime's ``malloc``: from a few MiB up that is a
fresh mapping of 4 KiB pages, each faulted in (and zeroed) on first touch, one at a time
while the kernel's threads wait, and read afterwards through as many TLB entries. NumPy asks
the kernel for transparent huge pages for arrays of :data:`HUGE_PAGE_BYTES` and more
(``madvise``), so the same array maps in 2 MiB at a time. The kernels that read such arrays
across channel planes (the padded input of a convolution: taps a plane apart) gain most:
the 64-channel layer's backward at 56x56, batch 32, took 165 ms of user time and 9,000 page
faults on 4 KiB pages, 132 ms and 39 faults on huge ones (Intel Xeon, one thread).

Even on huge pages a fresh mapping is zeroed by the kernel before use, on the thread that
touches it first, and ``free`` hands large blocks straight back to the kernel. So the
memory of an array from :func:`empty` returns here when the array and all its views are
gone, and the next request of about the same size (the same layer in the next batch) takes
it: up to :data:`MAX_HELD_BYTES` are kept (0 keeps none; :func:`release` gives them back),
the most recently freed first. The kept memory is resident: a training step's peak is then
at most that much above its live arrays' (ResNet-18 at 96x96, batch 64: 749 MiB against 674
MiB without, PyTorch's 848).
"""

import os
import threading

import numpy as np

from ...memory import physical_memory

LINE = 64  # bytes in a cache line, and in an AVX-512 vector
HUGE_PAGE_BYTES = 4 << 20  # NumPy's arrays from this size ask for transparent huge pages
SIZE_CLASS = 2 << 20  # requests are rounded up to this to share blocks (untouched pages of a
# block are never made resident)
#: the most memory kept for reuse: 256 MiB, or a sixteenth of a smaller machine's
MAX_HELD_BYTES = min(256 << 20, physical_memory() // 16)


class _Pool:
    """Freed blocks by size, most recently freed last, and their total (under a lock: any
    thread may free an array)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.free: dict[int, list[np.ndarray]] = {}
        self.held = 0

    def take(self, size: int) -> np.ndarray | None:
        with self.lock:
            blocks = self.free.get(size)
            if not blocks:
                return None
            self.held -= size
            return blocks.pop()

    def give(self, raw: np.ndarray) -> None:
        with self.lock:
            if self.held + raw.nbytes <= (MAX_HELD_BYTES or 0):  # None at interpreter exit
                self.free.setdefault(raw.nbytes, []).append(raw)
                self.held += raw.nbytes

    def clear(self) -> None:
        with self.lock:
            self.free.clear()
            self.held = 0

    def after_fork(self) -> None:
        """In a child process: a new lock (another thread may have held the parent's)."""
        self.lock = threading.Lock()


_POOL = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.after_fork)


class _Lease:
    """The owner of an array from :func:`empty` (its ``base``): gives the raw block back to
    the pool when the array and its views are gone."""

    def __init__(self, raw: np.ndarray, shape, dtype: np.dtype):
        self.raw, self.pool = raw, _POOL
        start = raw.ctypes.data + (LINE - raw.ctypes.data % LINE) % LINE
        self.__array_interface__ = {"data": (start, False), "shape": tuple(shape),
                                    "typestr": dtype.str, "version": 3}

    def __del__(self):
        self.pool.give(self.raw)


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array. From :data:`HUGE_PAGE_BYTES` on a block of NumPy's
    (on huge pages where the kernel gives them), reused once freed (see the module), its
    data starting on a cache line (NumPy's start 16 bytes in, where every 64-byte vector
    store straddles two lines); below, a plain ``np.empty``."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < HUGE_PAGE_BYTES:
        return np.empty(shape, dtype=dtype)
    size = -(-(nbytes + LINE) // SIZE_CLASS) * SIZE_CLASS
    raw = _POOL.take(size)
    if raw is None:
        raw = np.empty(size, dtype=np.uint8)
    return np.asarray(_Lease(raw, shape, dtype))


def held_bytes() -> int:
    """The bytes of freed blocks kept for reuse."""
    return _POOL.held


def release() -> None:
    """Give every kept block back to the system."""
    _POOL.clear()
