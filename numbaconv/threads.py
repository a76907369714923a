"""Threads for ``numbaconv run`` and ``evaluate``: Numba's kernels on every core (or
``--threads``) and OpenMP threads that sleep between parallel regions.
(``numbaconv bench`` leaves the wait policy alone: PyTorch's OpenMP reads it too, and its
side of the comparison keeps its defaults.)"""

from __future__ import annotations

import os


def prefer_sleeping_openmp() -> None:
    """Ask OpenMP (Numba's default threading layer here) to put idle threads to sleep at once
    (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy. Spinning threads make every
    parallel region wait a scheduler slice when another process holds a core (a kernel
    measured 5-20x slower). OpenMP reads the variable when its library loads: call this
    before the first parallel kernel, ``numba.set_num_threads`` and ``import torch``.

    Numba's ``workqueue`` layer, which the command used before, hands every region to worker
    threads while the calling thread waits: on one thread LeNet's epoch took 1.3-1.6x as long
    as on OpenMP, whose calling thread does the work itself.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` threads in Numba (``None``: all of ``NUMBA_NUM_THREADS``, the cores by
    default); returns the count."""
    import numba

    maximum = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        threads = maximum
    if not 1 <= threads <= maximum:
        raise ValueError(f"--threads must be between 1 and {maximum} (NUMBA_NUM_THREADS), "
                         f"got {threads}")
    numba.set_num_threads(threads)
    return threads
