"""How much memory something would take, checked before it is allocated: a network too big
for the machine is a one-line ``ValueError`` saying how much it needs, not a ``MemoryError``
traceback (or the machine swapping) half-way through building it."""

from __future__ import annotations

import math
import os

__all__ = ["physical_memory", "format_bytes", "check_fits", "array_bytes"]


def physical_memory() -> int:
    """This machine's memory in bytes (``$NUMBACONV_MEMORY_LIMIT`` overrides it)."""
    override = os.environ.get("NUMBACONV_MEMORY_LIMIT")
    if override:
        return int(override)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit known
        return 2 ** 63 - 1


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(nbytes: int, what: str) -> None:
    """``ValueError`` when ``nbytes`` is more than this machine's memory."""
    available = physical_memory()
    if nbytes > available:
        raise ValueError(f"{what} would take {format_bytes(nbytes)}, more than this machine's "
                         f"{format_bytes(available)} of memory")


def array_bytes(shape, itemsize: int) -> int:
    """Bytes of an array of ``shape`` (Python ints: no overflow)."""
    return math.prod(int(s) for s in shape) * int(itemsize)
