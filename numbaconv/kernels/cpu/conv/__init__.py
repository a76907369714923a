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
* :mod:`.channels`: the output channels along the vectors, for stride-1 layers with many
  output channels (:func:`use_channel_vectors`);
* :mod:`.winograd`: Winograd's F(2x2, 3x3) on the output-channel kernels' products, for 3x3
  layers at stride 1 with many output channels on maps of 12x12 and more
  (:func:`use_winograd`; the weight gradient from 4 x TILE_PIXELS tiles a band of rows:
  :func:`use_winograd_weight_grad`);
* :mod:`.columns`: matrix products over im2col columns, for many channels on small maps
  (:func:`use_columns`);
* :mod:`.unrolled`: sums of products over the pairs of pixels a tap joins, the samples along
  the vectors, for small maps (:func:`use_unrolled`; taken by :func:`forward_columns` and
  :func:`backward_columns`, where :func:`use_column_side` sends such layers);
* :mod:`.pointwise`: 1x1 kernels without padding as a matrix product per sample
  (:func:`use_pointwise`);
* :mod:`.direct`: the exact loops for inputs holding inf or NaN;
* :mod:`.place`: the parallel padding and stride spread for large arrays;
* this module: the Python functions that pad, choose a kernel and call it.

The gradient of the input is itself a convolution, of the gradient with the flipped,
transposed kernel, and runs through :func:`forward` (or, on the lanes layout, scatters gy).
"""

import numpy as np

from .. import buffers
from ..layout import nchw
from . import pointwise
from .channels import (
    forward_channels,
    use_channel_vectors,
    use_strided_channel_vectors,
    weight_grad_channels,
)
from .columns import (
    columns_job,
    conv2d_forward_columns,
    conv2d_input_grad_columns,
    conv2d_weight_grad_columns,
    forward_columns_job,
    input_grad_columns_job,
    use_columns,
    weight_grad_by_columns,
    weight_grad_columns_job,
)
from .direct import conv2d_backward_direct
from .flat import (
    TASKS,
    WEIGHT_GRAD_CHUNKS,
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
from .pointwise import forward_pointwise, use_pointwise
from .unrolled import backward_unrolled, forward_unrolled, geometry, use_unrolled
from .winograd import (
    forward_winograd,
    use_winograd,
    use_winograd_weight_grad,
    weight_grad_winograd,
)

__all__ = [
    "conv2d_forward", "conv2d_weight_grad", "conv2d_weight_grad_rows", "conv2d_forward_lanes",
    "conv2d_weight_grad_lanes", "conv2d_input_grad_lanes", "conv2d_backward_direct",
    "block_sums", "use_lanes", "weight_grad_from_rows", "forward", "weight_grad",
    "conv2d_input_grad", "transposed_weights", "place", "pad", "LANES", "TASKS",
    "PLACE_IN_PARALLEL", "use_columns", "forward_columns", "backward_columns",
    "use_channel_vectors", "use_column_side", "use_pointwise", "forward_pointwise",
    "backward_pointwise", "use_winograd", "use_winograd_weight_grad",
]

PLACE_IN_PARALLEL = 1 << 20  # output values from which place() runs _place_planes; below, NumPy


def place(src, out_h, out_w, rows, cols, check_finite=False):
    """An (N, C, out_h, out_w) array of zeros with ``src[:, :, rows[1], cols[1]]`` at
    ``[:, :, rows[0], cols[0]]`` (destination and source slices as :func:`_placement` gives
    them; the padded input, or grad_y spread onto a stride grid), and, with ``check_finite``,
    whether those values are all finite (else None).

    Large arrays take one parallel pass (a serial zero-fill and copy of the 64-channel
    layer's 27 MB input cost about 6 ms) into :func:`.buffers.empty`; small ones NumPy's."""
    (dst_rows, src_rows), (dst_cols, src_cols) = rows, cols
    n_rows = max(0, src_rows.stop - src_rows.start)
    n_cols = max(0, src_cols.stop - src_cols.start)
    if src.shape[0] * src.shape[1] * out_h * out_w >= PLACE_IN_PARALLEL:
        out = buffers.empty(src.shape[:2] + (out_h, out_w), src.dtype)
        finite = _place_planes(np.ascontiguousarray(src), out, src_rows.start, n_rows,
                               dst_rows.start, dst_rows.step or 1, src_cols.start, n_cols,
                               dst_cols.start, dst_cols.step or 1)
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


def backward_pointwise(gy, x, w, stride, need_input_grad, need_bias_grad, grad_weight=None):
    """``(grad_x or None, grad_w, grad_b or None)`` by :func:`.pointwise.backward_pointwise`,
    at a stride its input gradient placed at the pixels the kernel read, zeros between
    (:func:`place`)."""
    grad_x, grad_w, grad_b = pointwise.backward_pointwise(gy, x, w, stride, need_input_grad,
                                                          need_bias_grad, grad_weight)
    if grad_x is not None and stride != 1:
        height, width = x.shape[2], x.shape[3]
        grad_x, _ = place(grad_x, height, width, (slice(0, height, stride), slice(0, gy.shape[2])),
                          (slice(0, width, stride), slice(0, gy.shape[3])))
    return grad_x, grad_w, grad_b


def forward(x, w, b, padding, stride, dilation, groups, out_h, out_w):
    """The convolution of x (N, C_in, H, W) zero-padded by ``padding`` ((top, bottom),
    (left, right), none negative): by :func:`forward_winograd` where :func:`use_winograd`
    says so, else by :func:`forward_channels`, which pads each sample itself, where
    :func:`use_channel_vectors` says so; else of x padded first, by
    :func:`conv2d_forward_lanes` where :func:`use_lanes` says so, else by
    :func:`conv2d_forward`."""
    if use_winograd(w.shape, groups, stride, dilation, out_h, out_w, x.itemsize):
        return forward_winograd(x, w, b, padding, out_h, out_w)
    (top, bottom), (left, right) = padding
    padded_w = left + x.shape[3] + right
    if use_channel_vectors(w.shape, groups, stride, out_h, out_w, padded_w, x.itemsize):
        return forward_channels(x, w, b, padding, stride, dilation, out_h, out_w)
    xp, _ = pad(x, padding)
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


#: The most padded columns per output column for which the column kernels compute on the
#: padded width (wide) rather than gather exactly: 8 / 6 (ResNet's 6x6 maps) and below.
WIDE_WASTE = 1.34


class _ColumnsPlan:
    """How the column kernels compute a convolution of x (N, C, H, W) with w: the kernel's
    taps that read x (``rows``, ``cols``: slices; the others read only padding, so they add
    nothing to any output and their weights get zero gradients), the part of x they read
    (``x_rows``, ``x_cols``), the padding that then places them, and the layout: ``wide`` at
    stride 1 where the padded width wastes little (:data:`WIDE_WASTE`), from the input
    padded by ``padding`` (see :mod:`.columns`)."""

    def __init__(self, x_shape, w_shape, padding, stride, dilation, out_h, out_w):
        (top, _), (left, _) = padding
        kh_lo, kh_hi = _live_taps(x_shape[2], out_h, w_shape[2], stride[0], dilation[0], top)
        kw_lo, kw_hi = _live_taps(x_shape[3], out_w, w_shape[3], stride[1], dilation[1], left)
        self.empty = kh_lo == kh_hi or kw_lo == kw_hi  # every tap reads padding
        self.rows, self.cols = slice(kh_lo, kh_hi), slice(kw_lo, kw_hi)
        top, left = top - kh_lo * dilation[0], left - kw_lo * dilation[1]
        # rows and columns above a negative padding are never read: x starts below them
        self.x_rows, self.x_cols = slice(max(0, -top), None), slice(max(0, -left), None)
        self.top, self.left = max(0, top), max(0, left)
        height = x_shape[2] - self.x_rows.start
        width = x_shape[3] - self.x_cols.start
        need_h = out_h + (kh_hi - kh_lo - 1) * dilation[0]
        need_w = out_w + (kw_hi - kw_lo - 1) * dilation[1]
        self.padding = ((self.top, max(0, need_h - height - self.top)),
                        (self.left, max(0, need_w - width - self.left)))
        padded_width = width + self.left + self.padding[1][1]
        self.wide = tuple(stride) == (1, 1) and padded_width <= WIDE_WASTE * out_w
        self.stride, self.dilation = tuple(stride), tuple(dilation)

    def input(self, x, check_finite=False):
        """The x the kernels read: the part read, padded where wide. With ``check_finite``,
        where x holds inf or NaN the layout turns exact: the wide layout's scratch columns
        would multiply them by gy's zeros into the weight gradient (in the backward only:
        the forward drops the scratch outputs)."""
        x = x[:, :, self.x_rows, self.x_cols]
        if self.wide:
            xp, finite = pad(x, self.padding, check_finite)
            if finite is not False:
                return xp
            self.wide = False
        return np.ascontiguousarray(x)

    def geometry(self):
        """The kernels' stride, dilation, top, left and wide arguments."""
        top, left = (0, 0) if self.wide else (self.top, self.left)
        return (*self.stride, *self.dilation, top, left, int(self.wide))

    def input_grad(self, grad, x_shape):
        """The gradient of x from the kernels' gradient of :meth:`input`."""
        if self.wide:
            height = x_shape[2] - self.x_rows.start
            width = x_shape[3] - self.x_cols.start
            grad = grad[:, :, self.top:self.top + height, self.left:self.left + width]
        if self.x_rows.start or self.x_cols.start:
            full = np.zeros(x_shape, dtype=grad.dtype)
            full[:, :, self.x_rows, self.x_cols] = grad
            return full
        return np.ascontiguousarray(grad)


def use_column_side(x_shape, weight_shape, groups, stride, out_shape):
    """Whether a convolution of x (unpadded) takes :func:`forward_columns` and
    :func:`backward_columns`: where :func:`use_unrolled` or :func:`use_columns` says so."""
    return (use_unrolled(x_shape, weight_shape, groups, out_shape)
            or use_columns(weight_shape, groups, stride, out_shape[3]))


def forward_columns(x, w, b, padding, stride, dilation, out_h, out_w):
    """:func:`conv2d_forward_columns` of x (unpadded, in either layout of :mod:`..layout`;
    padding ((top, bottom), (left, right))),
    or at stride 2 or 4 where :func:`use_strided_channel_vectors` says so
    :func:`forward_channels` (also where the unrolled kernels serve the backward: ResNet's
    64 -> 128 onto 12x12, batch 64, 14.1 -> 9.7 ms on 1 thread, 6.2 -> 4.5 on 2), or on
    small maps :func:`forward_unrolled` (whose output is pixel-major)."""
    if use_strided_channel_vectors(w.shape, 1, stride, out_w, x.itemsize):
        return forward_channels(nchw(x), w, b, padding, stride, dilation, out_h, out_w)
    if use_unrolled(x.shape, w.shape, 1, (x.shape[0], w.shape[0], out_h, out_w)):
        return forward_unrolled(x, w, b, geometry(stride, dilation, padding), out_h, out_w)
    x = nchw(x)
    plan = _ColumnsPlan(x.shape, w.shape, padding, stride, dilation, out_h, out_w)
    if plan.empty:  # the bias alone
        return np.broadcast_to(b[:, None, None], (x.shape[0], w.shape[0], out_h, out_w)).copy()
    live_w = np.ascontiguousarray(w[:, :, plan.rows, plan.cols])
    return conv2d_forward_columns(plan.input(x), live_w, b, *plan.geometry()[:6], out_h, out_w,
                                  plan.geometry()[6], columns_job(x.dtype),
                                  forward_columns_job(x.dtype))


def backward_columns(gy, x, w, padding, stride, dilation, need_input_grad, need_bias_grad,
                     grad_weight=None):
    """``(grad_x or None, grad_w, grad_b or None)`` by the column kernels (x unpadded; gy and
    x in either layout of :mod:`..layout`), the
    weight gradient at stride 2 or 4 by :func:`weight_grad_channels` where
    :func:`use_strided_channel_vectors` says so, or on small maps by
    :func:`backward_unrolled`, which writes grad_w into ``grad_weight`` where given (a
    layer's gradient: no copy) and returns grad_x in x's layout."""
    if use_unrolled(x.shape, w.shape, 1, gy.shape):
        return backward_unrolled(gy, x, w, geometry(stride, dilation, padding),
                                 need_input_grad, need_bias_grad, grad_weight)
    gy, x = nchw(gy), nchw(x)
    plan = _ColumnsPlan(x.shape, w.shape, padding, stride, dilation, gy.shape[2], gy.shape[3])
    grad_w = np.zeros_like(w)
    if plan.empty:
        grad_b = gy.sum(axis=(0, 2, 3), dtype=np.float64).astype(gy.dtype)
        return (np.zeros_like(x) if need_input_grad else None), grad_w, \
            grad_b if need_bias_grad else None
    live_w = np.ascontiguousarray(w[:, :, plan.rows, plan.cols])
    if not np.isfinite(live_w.sum()):  # scratch columns would carry 0 * inf into grad_x
        plan.wide = False
    if use_strided_channel_vectors(w.shape, 1, stride, gy.shape[3], x.itemsize):
        # by rows of outputs: every product is one of the sums' own (inf and NaN as there)
        grad_w, grad_b = weight_grad_channels(gy, pad(x, padding)[0], w.shape[2:], stride,
                                              dilation)
        xk = plan.input(x)
    else:
        xk = plan.input(x, check_finite=True)
        grad_w[:, :, plan.rows, plan.cols], grad_b = conv2d_weight_grad_columns(
            gy, xk, live_w.shape[2], live_w.shape[3], *plan.geometry(),
            weight_grad_columns_job(x.dtype))
    grad_x = None
    if need_input_grad:
        grad = conv2d_input_grad_columns(gy, live_w, xk.shape[2], xk.shape[3],
                                         *plan.geometry(), input_grad_columns_job(x.dtype))
        grad_x = plan.input_grad(grad, x.shape)
    return grad_x, grad_w, grad_b if need_bias_grad else None


def weight_grad(gy, xp, kernel, stride, dilation, groups):
    """``(grad_w, grad_b)`` of the padded, finite xp by :func:`weight_grad_winograd` where
    :func:`use_winograd_weight_grad` says so, else by :func:`weight_grad_channels`
    where :func:`use_channel_vectors` says so, else by :func:`conv2d_weight_grad_lanes`
    where :func:`use_lanes` does, else by :func:`conv2d_weight_grad_columns` where
    :func:`weight_grad_by_columns` does, else by :func:`conv2d_weight_grad_rows` where
    :func:`weight_grad_from_rows` does, else by :func:`conv2d_weight_grad`."""
    weight_shape = (gy.shape[1], xp.shape[1] // groups) + tuple(kernel)
    if use_winograd_weight_grad(weight_shape, groups, stride, dilation, gy.shape[2],
                                gy.shape[3], xp.itemsize):
        return weight_grad_winograd(gy, xp)
    if use_channel_vectors(weight_shape, groups, stride, gy.shape[2], gy.shape[3], xp.shape[3],
                           xp.itemsize):
        return weight_grad_channels(gy, xp, kernel, stride, dilation)
    if use_lanes(xp.shape, xp.itemsize, stride[1], groups, gy.shape[3]):
        return conv2d_weight_grad_lanes(gy, xp, *kernel, stride[0], *dilation, groups,
                                        weight_grad_lanes_job(xp.dtype))
    if weight_grad_by_columns(weight_shape, groups, xp.itemsize,
                              min(gy.shape[0], WEIGHT_GRAD_CHUNKS)):
        wide = int(tuple(stride) == (1, 1))  # xp is finite: its scratch columns add zeros
        return conv2d_weight_grad_columns(gy, xp, *kernel, *stride, *dilation, 0, 0, wide,
                                          weight_grad_columns_job(xp.dtype))
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
    wt, zeros = transposed_weights(w, groups), np.zeros(c_in, gy.dtype)
    frame = input_grad_frame(padding, stride, (reach_h, reach_w))
    if frame is not None:  # gy padded: no spread to make
        return forward(gy, wt, zeros, frame, (1, 1), dilation, groups, height, width)
    dst_rows, src_rows = _placement(reach_h - top, stride[0], out_h, height + reach_h)
    dst_cols, src_cols = _placement(reach_w - left, stride[1], out_w, width + reach_w)
    spread, _ = place(gy, height + reach_h, width + reach_w, (dst_rows, src_rows),
                      (dst_cols, src_cols))
    return forward(spread, wt, zeros, ((0, 0), (0, 0)), (1, 1), dilation, groups, height,
                   width)


def input_grad_frame(padding, stride, reach):
    """The padding of gy that makes the spread of :func:`conv2d_input_grad` at stride 1,
    ((reach_h - top, reach_h - bottom), (reach_w - left, reach_w - right)), where none is
    negative; else (a stride, or padding beyond the kernel's reach) None."""
    (top, bottom), (left, right) = padding
    frame = ((reach[0] - top, reach[0] - bottom), (reach[1] - left, reach[1] - right))
    if tuple(stride) != (1, 1) or min(frame[0] + frame[1]) < 0:
        return None
    return frame
