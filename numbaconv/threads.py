"""Threads for ``numbaconv run`` and ``evaluate``: Numba's kernels on every core (or
``--threads``), and, where Numba's threading layer is OpenMP, OpenMP threads that sleep
between parallel regions when other processes keep the cores busy. (``import numbaconv``
selects TBB, whose threads sleep when out of work by themselves: see
:mod:`numbaconv.threading_layer`.)
(``numbaconv bench`` leaves the wait policy alone: PyTorch's OpenMP reads it too, and its
side of the comparison keeps its defaults.)"""

from __future__ import annotations

import os
import time


def _cpu_jiffies() -> tuple[int, int]:
    """(all, idle) CPU time since boot from /proc/stat, in clock ticks; idle counts iowait."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    return sum(values), values[3] + values[4]


def load_leaves_too_few(threads: int) -> bool:
    """Whether the 1-minute load average leaves fewer idle CPUs than ``threads`` (False
    where the system has no load average)."""
    if not hasattr(os, "getloadavg"):
        return False
    return os.getloadavg()[0] > (os.cpu_count() or 1) - threads + 0.5


def busy(threads: int, interval: float = 0.1) -> bool:
    """Whether other processes keep the cores busy: in ``interval`` seconds during which
    this process sleeps, fewer CPUs than ``threads`` were idle (a VM's stolen time counts as
    busy). Where /proc/stat is missing, :func:`load_leaves_too_few` decides. (The load
    average alone would count this user's last command for a minute.)"""
    try:
        total_before, idle_before = _cpu_jiffies()
        time.sleep(interval)
        total_after, idle_after = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return load_leaves_too_few(threads)
    total = total_after - total_before
    if total <= 0:
        return False
    idle_cpus = (os.cpu_count() or 1) * (idle_after - idle_before) / total
    return idle_cpus < threads - 0.5


def choose_wait_policy(threads: int) -> str | None:
    """Ask OpenMP to put idle threads to sleep at once (``OMP_WAIT_POLICY=PASSIVE``) when
    Numba's threading layer may be OpenMP (the user chose it, or Numba's default stands where
    TBB cannot load: :func:`numbaconv.threading_layer.may_use_openmp`) and the machine is
    :func:`busy`, unless the user chose a policy; returns the policy set (None: OpenMP's
    default, spin a little, then sleep, or a layer without OpenMP). OpenMP reads the variable
    when its library loads: call this before the first parallel kernel,
    ``numba.set_num_threads`` and ``import torch``.

    On a busy machine spinning threads make every parallel region wait a scheduler slice
    when another process holds a core (a kernel measured 5-20x slower). On a quiet one,
    sleeping threads make every region wait for a wake-up: a LeNet epoch of ``numbaconv run``
    on 2 threads took 1.7-2.4 s with PASSIVE and 1.1-1.6 s with the default.

    Numba's ``workqueue`` layer, which the command used before, hands every region to worker
    threads while the calling thread waits: on one thread LeNet's epoch took 1.3-1.6x as long
    as on OpenMP, whose calling thread does the work itself.
    """
    from .threading_layer import may_use_openmp

    if "OMP_WAIT_POLICY" in os.environ or threads < 2 or not may_use_openmp() \
            or not busy(threads):  # 0.1 s
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"


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
