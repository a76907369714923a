"""The machine a run is on: the thread counts both sides get, its description for a table's
header, and a warning when its load leaves too few idle cores."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

__all__ = ["set_threads", "machine_info", "busy_warning"]


def set_threads(threads: int | None, torch: Any = None) -> int:
    """Give numbaconv's kernels (Numba) and PyTorch the same thread count.

    ``None`` means all of Numba's threads (``NUMBA_NUM_THREADS``, the cores by default).
    Returns the count used.
    """
    from ..threads import set_threads as set_numbaconv_threads

    threads = set_numbaconv_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def machine_info(torch: Any = None) -> dict[str, str]:
    """CPU model, core counts and library versions, for the table's header."""
    import numba

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": model,
        "cpus": str(os.cpu_count()),
        "numba threads": str(numba.get_num_threads()),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch threads"] = str(torch.get_num_threads())
    if hasattr(os, "getloadavg"):
        info["load"] = f"{os.getloadavg()[0]:.2f}"
    return info


def busy_warning(threads: int) -> str | None:
    """A warning when other processes already keep the cores busy (the 1-minute load
    average leaves fewer idle CPUs than ``threads``), else ``None``.

    Multi-threaded code loses far more than its share on an oversubscribed machine: a
    parallel region waits for its slowest thread, and PyTorch runs many small regions per
    step. The ratios of such a run mostly measure the neighbours.
    """
    from ..threads import load_leaves_too_few

    if not load_leaves_too_few(threads):
        return None
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    return (f"warning: load average {load:.2f} on {cpus} CPUs before the run leaves fewer "
            f"than {threads} idle; timings with {threads} thread(s) will be noisy "
            "(PyTorch's especially). Use a quiet machine, or fewer --threads.")
