"""Launch tunables of the CUDA backend, all in one place.

Every kernel walks its work with a grid-stride loop, so none of these numbers changes a result,
only the speed. Each can be overridden by an environment variable read at import time
(``NUMBACONV_CUDA_<NAME>``). Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) every
simulated thread is a Python thread, so the defaults there are tiny; the grid-stride loops
still run several iterations per thread, which is what the simulated tests exercise.
"""

from __future__ import annotations

import os

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get("NUMBACONV_CUDA_" + name)
    if value is None:
        return default
    number = int(value)
    if number < 1:
        raise ValueError(f"NUMBACONV_CUDA_{name} must be a positive int, got {value!r}")
    return number


# Threads per block of the one-dimensional (elementwise, gather) kernels.
THREADS_PER_BLOCK = _env_int("THREADS_PER_BLOCK", 16 if SIMULATOR else 256)
# Cap on the blocks of a one-dimensional launch; the grid-stride loop covers the rest.
MAX_BLOCKS = _env_int("MAX_BLOCKS", 2 if SIMULATOR else 8192)
# Side of the square shared-memory tiles of the matrix product; its blocks are TILE x TILE.
TILE = _env_int("TILE", 4 if SIMULATOR else 16)
# Convolutions (implicit matrix products, conv.py): blocks of CONV_SIDE x CONV_SIDE threads,
# each computing CONV_TM x CONV_TN outputs of a wide tile from CONV_BK-deep operand slices
# (narrow products get smaller TM/TN, see conv.pick_tiles)...
CONV_SIDE = _env_int("CONV_SIDE", 4 if SIMULATOR else 16)
CONV_TM = _env_int("CONV_TM", 4)
CONV_TN = _env_int("CONV_TN", 4)
CONV_BK = _env_int("CONV_BK", 4 if SIMULATOR else 16)
# ...and the weight gradient splits its reduction so that about this many blocks run.
CONV_BLOCKS = _env_int("CONV_BLOCKS", 2 if SIMULATOR else 1024)
# Two-pass reductions (weight and bias gradients, loss): the first pass splits the reduced
# axis into chunks so that about this many partial sums are computed in parallel...
REDUCE_PARALLELISM = _env_int("REDUCE_PARALLELISM", 64 if SIMULATOR else 1 << 18)
# ...but never more than this many chunks per output (the second pass sums them in order).
MAX_CHUNKS = _env_int("MAX_CHUNKS", 8 if SIMULATOR else 512)


def blocks_for(total: int, threads: int = THREADS_PER_BLOCK) -> int:
    """Blocks of a one-dimensional grid-stride launch over ``total`` work items (at least 1)."""
    return max(1, min(MAX_BLOCKS, -(-total // threads)))


def chunks_for(outputs: int, reduced: int) -> int:
    """Chunks to split a reduction of ``reduced`` terms into, for each of ``outputs`` sums."""
    want = -(-REDUCE_PARALLELISM // max(1, outputs))
    return max(1, min(MAX_CHUNKS, reduced, want))


def chunking(outputs: int, reduced: int) -> tuple[int, int]:
    """``(chunks, chunk)``: :func:`chunks_for`'s chunk count, and the terms per chunk (at
    least 1) that cover all ``reduced`` terms."""
    chunks = chunks_for(outputs, reduced)
    return chunks, (-(-reduced // chunks) if reduced else 1)
