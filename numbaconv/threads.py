"""One thread count for Numba's kernels and NumPy's BLAS (the Linear layers)."""

from __future__ import annotations


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` threads in Numba and in NumPy's BLAS; ``None`` means all of Numba's
    (``NUMBA_NUM_THREADS``, the cores by default). Returns the count used."""
    import numba
    from threadpoolctl import threadpool_limits

    maximum = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        threads = maximum
    if not 1 <= threads <= maximum:
        raise ValueError(f"--threads must be between 1 and {maximum} (NUMBA_NUM_THREADS), "
                         f"got {threads}")
    numba.set_num_threads(threads)
    threadpool_limits(threads)
    return threads
