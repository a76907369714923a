"""Zero-padding, and spreading gy onto a stride grid, in one parallel pass for large arrays;
and the padding of a sample's rows into a task's scratch, inside kernels (:func:`pad_rows`)."""

import numpy as np
from numba import njit, prange

from .. import simd


@njit(parallel=True, cache=True)
def _place_planes(src, out, src_r0, n_rows, dst_r0, row_step, src_c0, n_cols, dst_c0,
                  col_step):
    """out (N, C, out_h, out_w) for :func:`place`, one plane per parallel task, zeroed and
    filled while it is in cache; returns whether the placed values are all finite."""
    n_batch, channels = src.shape[0], src.shape[1]
    out_h, out_w = out.shape[2], out.shape[3]
    flat = out.reshape(n_batch * channels, out_h * out_w)
    bad = np.zeros(n_batch * channels, dtype=np.bool_)
    zero = src.dtype.type(0)
    for plane in prange(n_batch * channels):
        n, c = plane // channels, plane % channels
        dst = flat[plane]
        for p in range(out_h * out_w):
            dst[p] = zero
        not_finite = False
        for i in range(n_rows):
            row = src[n, c, src_r0 + i, src_c0:src_c0 + n_cols]
            base = (dst_r0 + i * row_step) * out_w + dst_c0
            if col_step == 1:  # a contiguous copy, vectorised
                dst_row = dst[base:base + n_cols]
                for j in range(n_cols):
                    value = row[j]
                    dst_row[j] = value
                    not_finite |= (value - value) != (value - value)  # inf and NaN: NaN
            else:
                for j in range(n_cols):
                    value = row[j]
                    dst[base + j * col_step] = value
                    not_finite |= (value - value) != (value - value)
        bad[plane] = not_finite
    return not bad.any()


@njit(inline="always")
def pad_rows(x, n, c0, n_chan, top, left, row0, n_rows, wp, xs):
    """xs[0, c, :n_rows * wp] = rows row0:row0 + n_rows of channel c of sample n of x
    (unpadded) zero-padded by ``top`` rows and ``left`` columns to ``wp`` columns, for
    c0 <= c < c0 + n_chan: the padded input a kernel's task reads, padded in cache rather
    than in a pass of its own over the whole batch (the fused stages' blocks, the
    output-channel forward's samples)."""
    height, width = x.shape[2], x.shape[3]
    zero = xs.dtype.type(0)
    for c in range(c0, c0 + n_chan):
        dst = xs[0, c]
        for i in range(n_rows * wp):
            dst[i] = zero
        for r in range(n_rows):
            h = row0 + r - top
            if 0 <= h < height:
                simd.copy_run(x[n, c, h], 0, dst, r * wp + left, width)
