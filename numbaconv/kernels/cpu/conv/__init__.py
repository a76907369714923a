"""Numba CPU kernels for 2-D convolution (cross-correlation), forward and backward, and the
functions that choose among them.

The public wrappers in :mod:`numbaconv.functional` check and normalise every argument; the
kernels trust their inputs. Inputs arrive already padded and C-contiguous:

    xp : (N, C_in, Hp, Wp)            the zero-padded input
    w  : (C_out, C_in // groups, KH, KW)
    y  : (N, C_out, OH, OW)

By concern:

* :mod:`.tiles`: the register-tiled products (forward type and weight-gradient type), inlined
  into every kernel below;
* :mod:`.common`: taps, grouped weights and partial sums shared by the two layouts;
* :mod:`.flat`: the padded-width kernels, outputs on the flat stride-1 grid;
* :mod:`.lanes`: the interleaved-samples kernels for narrow images (:func:`use_lanes`);
* :mod:`.columns`: matrix products over im2col columns, for many channels on small maps
  (:func:`use_columns`);
* :mod:`.direct`: the exact loops for inputs holding inf or NaN;
* :mod:`.place`: the parallel padding and stride spread for large arrays;
* this module: the Python functions that pad, choose a kernel and call it.

The gradient of the input is itself a convolution, of the gradient with the flipped,
transposed kernel, and runs through :func:`forward` (or, on the lanes layout, scatters gy).
"""

import numpy as np

from .columns import (
    columns_job,
    conv2d_forward_columns,
    conv2d_input_grad_columns,
    conv2d_weight_grad_columns,
    forward_columns_job,
    input_grad_columns_job,
    use_columns,
    weight_grad_columns_job,
)
from .direct import conv2d_backward_direct
from .flat import (
    TASKS,
    block_sums,
    conv2d_forward,
    conv2d_weight_grad,
    conv2d_weight_grad_rows,
    forward_job,
    weight_grad_from_rows,
    weight_grad_job,
    weight_grad_rows_job,
)
from .lanes import (
    LANES,
    conv2d_forward_lanes,
    conv2d_input_grad_lanes,
    conv2d_weight_grad_lanes,
    forward_lanes_job,
    input_grad_lanes_job,
    use_lanes,
    weight_grad_lanes_job,
)
from .place import _place_planes

__all__ = [
    "conv2d_forward", "conv2d_weight_grad", "conv2d_weight_grad_rows", "conv2d_forward_lanes",
    "conv2d_weight_grad_lanes", "conv2d_input_grad_lanes", "conv2d_backward_direct",
    "block_sums", "use_lanes", "weight_grad_from_rows", "forward", "weight_grad",
    "conv2d_input_grad", "transposed_weights", "place", "pad", "LANES", "TASKS",
    "PLACE_IN_PARALLEL", "use_columns", "forward_columns", "backward_columns",
]

PLACE_IN_PARALLEL = 1 << 20  # output values from which place() runs _place_planes; below, NumPy


def place(src, out_h, out_w, rows, cols, check_finite=False):
    """An (N, C, out_h, out_w) array of zeros with ``src[:, :, rows[1], cols[1]]`` at
    ``[:, :, rows[0], cols[0]]`` (destination and source slices as :func:`_placement` gives
    them; the padded input, or grad_y spread onto a stride grid), and, with ``check_finite``,
    whether those values are all finite (else None).

    Large arrays take one parallel pass (a serial zero-fill and copy of the 64-channel
    layer's 27 MB input cost about 6 ms); small ones NumPy's."""
    (dst_rows, src_rows), (dst_cols, src_cols) = rows, cols
    n_rows = max(0, src_rows.stop - src_rows.start)
    n_cols = max(0, src_cols.stop - src_cols.start)
    if src.shape[0] * src.shape[1] * out_h * out_w >= PLACE_IN_PARALLEL:
        out, finite = _place_planes(np.ascontiguousarray(src), out_h, out_w, src_rows.start,
                                    n_rows, dst_rows.start, dst_rows.step or 1,
                                    src_cols.start, n_cols, dst_cols.start,
                                    dst_cols.step or 1)
        return out, finite if check_finite else None
    out = np.zeros(src.shape[:2] + (out_h, out_w), dtype=src.dtype)
    values = src[:, :, src_rows, src_cols]
    out[:, :, dst_rows, dst_cols] = values
    return out, bool(np.isfinite(values).all()) if check_finite else None


def pad(x, padding, check_finite=False):
    """(xp, finite): ``x`` zero-padded by ``((top, bottom), (left, right))``, C-contiguous,
    and with ``check_finite`` whether x is all finite (else None)."""
    (top, bottom), (left, right) = padding
    if top == bottom == left == right == 0:
        xp = np.ascontiguousarray(x)
        return xp, bool(np.isfinite(xp).all()) if check_finite else None
    height, width = x.shape[2], x.shape[3]
    return place(x, height + top + bottom, width + left + right,
                 (slice(top, top + height, 1), slice(0, height)),
                 (slice(left, left + width, 1), slice(0, width)), check_finite)


def forward(xp, w, b, stride, dilation, groups, out_h, out_w):
    """:func:`conv2d_forward` or, where :func:`use_lanes` says so, :func:`conv2d_forward_lanes`."""
    if use_lanes(xp.shape, xp.itemsize, stride[1], groups, out_w):
        return conv2d_forward_lanes(xp, w, b, stride[0], *dilation, groups, out_h, out_w,
                                    forward_lanes_job(xp.dtype))
    return conv2d_forward(xp, w, b, *stride, *dilation, groups, out_h, out_w,
                          forward_job(xp.dtype))


def _live_taps(size, out_size, kernel, stride, dilation, pad):
    """The kernel taps [lo, hi) along one axis that read the input for some output; the others
    read only padding (a 3x3 kernel on a 1x1 map: the middle one alone)."""
    live = [t for t in range(kernel)
            if any(0 <= o * stride + t * dilation - pad < size for o in range(out_size))]
    return (live[0], live[-1] + 1) if live else (0, 0)


def _live_kernel(x_shape, w_shape, padding, stride, dilation, out_h, out_w):
    """(kernel rows, kernel columns, top, left): the taps that read x (slices of the
    kernel) and the padding that places them. Taps that read only zeros add nothing to any
    output, nor their weights' gradients anything but zeros: they are left out."""
    (top, _), (left, _) = padding
    kh_lo, kh_hi = _live_taps(x_shape[2], out_h, w_shape[2], stride[0], dilation[0], top)
    kw_lo, kw_hi = _live_taps(x_shape[3], out_w, w_shape[3], stride[1], dilation[1], left)
    return (slice(kh_lo, kh_hi), slice(kw_lo, kw_hi), top - kh_lo * dilation[0],
            left - kw_lo * dilation[1])


def forward_columns(x, w, b, padding, stride, dilation, out_h, out_w):
    """:func:`conv2d_forward_columns` of the unpadded x; padding ((top, bottom), (left, right))."""
    rows, cols, top, left = _live_kernel(x.shape, w.shape, padding, stride, dilation, out_h,
                                         out_w)
    if rows.stop == rows.start or cols.stop == cols.start:  # every tap reads padding: the bias
        return np.broadcast_to(b[:, None, None], (x.shape[0], w.shape[0], out_h, out_w)).copy()
    live_w = np.ascontiguousarray(w[:, :, rows, cols])
    return conv2d_forward_columns(np.ascontiguousarray(x), live_w, b, *stride, *dilation, top,
                                  left, out_h, out_w, columns_job(x.dtype),
                                  forward_columns_job(x.dtype))


def backward_columns(gy, x, w, padding, stride, dilation, need_input_grad):
    """``(grad_x or None, grad_w, grad_b)`` by the column kernels, x unpadded."""
    x = np.ascontiguousarray(x)
    rows, cols, top, left = _live_kernel(x.shape, w.shape, padding, stride, dilation,
                                         gy.shape[2], gy.shape[3])
    grad_w = np.zeros_like(w)
    if rows.stop == rows.start or cols.stop == cols.start:
        return (np.zeros_like(x) if need_input_grad else None), grad_w, \
            gy.sum(axis=(0, 2, 3), dtype=np.float64).astype(gy.dtype)
    live_w = np.ascontiguousarray(w[:, :, rows, cols])
    grad_w[:, :, rows, cols], grad_b = conv2d_weight_grad_columns(
        gy, x, live_w.shape[2], live_w.shape[3], *stride, *dilation, top, left,
        weight_grad_columns_job(x.dtype))
    grad_x = None
    if need_input_grad:
        grad_x = conv2d_input_grad_columns(gy, live_w, x.shape[2], x.shape[3], *stride,
                                           *dilation, top, left, input_grad_columns_job(x.dtype))
    return grad_x, grad_w, grad_b


def weight_grad(gy, xp, kernel, stride, dilation, groups):
    """``(grad_w, grad_b)`` by :func:`conv2d_weight_grad_lanes` where :func:`use_lanes` says
    so, else by :func:`conv2d_weight_grad_rows` where :func:`weight_grad_from_rows` does, else
    by :func:`conv2d_weight_grad`."""
    if use_lanes(xp.shape, xp.itemsize, stride[1], groups, gy.shape[3]):
        return conv2d_weight_grad_lanes(gy, xp, *kernel, stride[0], *dilation, groups,
                                        weight_grad_lanes_job(xp.dtype))
    weight_shape = (gy.shape[1], xp.shape[1] // groups) + tuple(kernel)
    if weight_grad_from_rows(weight_shape, stride[1], groups):
        return conv2d_weight_grad_rows(gy, xp, *kernel, stride[0], *dilation, groups,
                                       weight_grad_rows_job(xp.dtype))
    return conv2d_weight_grad(gy, xp, *kernel, *stride, *dilation, groups,
                              weight_grad_job(xp.dtype))


def transposed_weights(w, groups):
    """The kernel that maps an output gradient back to the input: per group, w with its two
    channel axes swapped and flipped in both spatial axes. Shape (C_in, C_out // groups, KH, KW).
    """
    c_out, c_in_g, kh, kw = w.shape
    c_out_g = c_out // groups
    wt = w.reshape(groups, c_out_g, c_in_g, kh, kw).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(wt[..., ::-1, ::-1].reshape(groups * c_in_g, c_out_g, kh, kw))


def _placement(offset, stride, count, length):
    """Where ``count`` values go when value ``o`` goes to ``offset + o * stride`` and only
    positions in ``[0, length)`` are kept: (destination slice, source slice)."""
    first = max(0, -(offset // stride))  # the first o with offset + o * stride >= 0
    last = min(count, (length - 1 - offset) // stride + 1) if length > offset else 0
    if last <= first:
        return slice(0, 0), slice(0, 0)
    return slice(offset + first * stride, offset + (last - 1) * stride + 1, stride), \
        slice(first, last)


def conv2d_input_grad(gy, w, input_shape, padding, stride, dilation, groups):
    """Gradient of the (unpadded) input, shape ``input_shape`` (N, C_in, H, W); padding
    ``((top, bottom), (left, right))``.

    By :func:`conv2d_input_grad_lanes` where :func:`use_lanes` says so (on the padded grid,
    then cropped); else as a stride-1 convolution of gy with :func:`transposed_weights`: gy
    spread onto the stride grid (zeros between) inside a frame of the dilated kernel's
    reach, shifted by the padding and cut to the H + reach rows (W + reach columns) whose
    windows cover the input, so that the convolution computes the input's rows and columns
    only (none of the padding's).
    """
    n_batch, c_out, out_h, out_w = gy.shape
    c_in, height, width = input_shape[1], input_shape[2], input_shape[3]
    kh, kw = w.shape[2], w.shape[3]
    (top, bottom), (left, right) = padding
    hp, wp = height + top + bottom, width + left + right
    if use_lanes((n_batch, c_in, hp, wp), gy.itemsize, stride[1], groups, out_w):
        c_out_g, c_in_g = c_out // groups, w.shape[1]
        wt = w.reshape(groups, c_out_g, c_in_g, kh, kw).transpose(0, 3, 4, 2, 1)
        grad_xp = conv2d_input_grad_lanes(gy, np.ascontiguousarray(wt), hp, wp, stride[0],
                                          *dilation, input_grad_lanes_job(gy.dtype))
        return np.ascontiguousarray(grad_xp[:, :, top:top + height, left:left + width])
    reach_h, reach_w = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
    dst_rows, src_rows = _placement(reach_h - top, stride[0], out_h, height + reach_h)
    dst_cols, src_cols = _placement(reach_w - left, stride[1], out_w, width + reach_w)
    spread, _ = place(gy, height + reach_h, width + reach_w, (dst_rows, src_rows),
                      (dst_cols, src_cols))
    return forward(spread, transposed_weights(w, groups), np.zeros(c_in, gy.dtype), (1, 1),
                   dilation, groups, height, width)
