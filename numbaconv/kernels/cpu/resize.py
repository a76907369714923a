"""Numba CPU kernel for bilinear resizing (``torch.nn.functional.interpolate(...,
mode="bilinear", align_corners=False)``): the ``--resize`` of D2L's recipes, applied to each
batch. The public wrapper, :func:`numbaconv.functional.resize_bilinear`, checks arguments."""

import numpy as np
from numba import njit, prange


@njit(cache=True)
def source_positions(size_in, size_out):
    """For each output position along one axis: the first source index, the step to the
    second (0 at the last row) and the second's weight, PyTorch's way: the source position
    ``(o + 0.5) * size_in / size_out - 0.5``, clamped at 0."""
    first = np.empty(size_out, np.int64)
    step = np.empty(size_out, np.int64)
    weight = np.empty(size_out, np.float64)
    scale = size_in / size_out
    for o in range(size_out):
        position = max((o + 0.5) * scale - 0.5, 0.0)
        index = int(position)
        first[o] = index
        step[o] = 1 if index < size_in - 1 else 0
        weight[o] = position - index
    return first, step, weight


@njit(parallel=True, cache=True)
def resize_bilinear(x, out_h, out_w):
    """x (P, H, W) -> (P, out_h, out_w), each plane on its own (one parallel task each)."""
    planes, height, width = x.shape
    out = np.empty((planes, out_h, out_w), dtype=x.dtype)
    rows, row_step, row_weight = source_positions(height, out_h)
    cols, col_step, col_weight = source_positions(width, out_w)
    for p in prange(planes):
        src = x[p]
        for oy in range(out_h):
            y0, y1 = rows[oy], rows[oy] + row_step[oy]
            wy = row_weight[oy]
            for ox in range(out_w):
                x0, x1 = cols[ox], cols[ox] + col_step[ox]
                wx = col_weight[ox]
                top = (1.0 - wx) * src[y0, x0] + wx * src[y0, x1]
                bottom = (1.0 - wx) * src[y1, x0] + wx * src[y1, x1]
                out[p, oy, ox] = (1.0 - wy) * top + wy * bottom
    return out
