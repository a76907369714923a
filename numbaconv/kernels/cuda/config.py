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


def _env_ints(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = os.environ.get("NUMBACONV_CUDA_" + name)
    if value is None:
        return default
    try:
        numbers = tuple(int(part) for part in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != len(default) or min(numbers) < 1:
        raise ValueError(f"NUMBACONV_CUDA_{name} must be {len(default)} positive ints "
                         f"separated by commas, got {value!r}")
    return numbers


# Threads per block of the one-dimensional (elementwise, gather) kernels.
THREADS_PER_BLOCK = _env_int("THREADS_PER_BLOCK", 16 if SIMULATOR else 256)
# Cap on the blocks of a one-dimensional launch; the grid-stride loop covers the rest.
MAX_BLOCKS = _env_int("MAX_BLOCKS", 2 if SIMULATOR else 8192)
# Side of the square shared-memory tiles of the matrix product; its blocks are TILE x TILE.
TILE = _env_int("TILE", 4 if SIMULATOR else 16)
# Convolutions (implicit matrix products, conv.py): blocks of CONV_SIDE x CONV_SIDE threads.
# For each pass, the tile shape "TM,TN,BK" of wide products: each thread computes TM x TN
# outputs from BK-deep operand slices (narrow products get smaller TM/TN and BK = CONV_SIDE,
# see conv.pick_tiles). Defaults from `python bench/gpu_check.py --sweep` on an H100 (the
# 64->64 3x3 convolution on 32x64x56x56; docs/performance.md).
CONV_SIDE = _env_int("CONV_SIDE", 4 if SIMULATOR else 16)
CONV_FORWARD_TILES = _env_ints("CONV_FORWARD_TILES", (2, 4, 4) if SIMULATOR else (4, 8, 8))
CONV_GRAD_INPUT_TILES = _env_ints("CONV_GRAD_INPUT_TILES",
                                  (2, 4, 4) if SIMULATOR else (4, 8, 8))
CONV_GRAD_WEIGHT_TILES = _env_ints("CONV_GRAD_WEIGHT_TILES",
                                   (2, 4, 4) if SIMULATOR else (4, 4, 8))
# The weight gradient splits its reduction so that about this many blocks run.
CONV_BLOCKS = _env_int("CONV_BLOCKS", 2 if SIMULATOR else 1024)
# Two-pass reductions (bias gradients, the loss; the conv weight gradient uses CONV_BLOCKS
# and MAX_CHUNKS): the first pass splits the reduced axis into chunks so that about this
# many partial sums are computed in parallel...
REDUCE_PARALLELISM = _env_int("REDUCE_PARALLELISM", 64 if SIMULATOR else 1 << 18)
# ...but never more than this many chunks per output (the second pass sums them in order).
MAX_CHUNKS = _env_int("MAX_CHUNKS", 8 if SIMULATOR else 512)

# Launch through prepared launches (launch.py: the overload found and the arguments marshalled
# once, not at every call); "0" sends every launch through numba-cuda's dispatcher instead,
# to compare the two or to rule the prepared path out. Read at each prepare().
PREPARED_LAUNCHES = os.environ.get("NUMBACONV_CUDA_PREPARED_LAUNCHES", "1") != "0"


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
