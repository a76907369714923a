"""The unrolled kernels: on small maps (ResNet-18's maps of 6x6 and below at 96x96 and the
backward of its stride-2 layer onto 12x12, whose forward the output-channel kernels take; of
7x7 and below at 28x28), a convolution is a sum of matrix products,
one per pair of an output pixel and an input pixel that a kernel tap joins, with the batch's
samples along the vectors:

    y[:, o, :] (C_out, N) = sum over the pairs (o, i, tap t) of  w[:, :, t] (C_out, C_in) @
                            x[:, i, :] (C_in, N)

Only the pairs whose tap reads the input are summed (on a 3x3 map with a 3x3 kernel and
padding 1, 49 of the 81 products the column kernels compute, 32 of them with zeros of the
padding), no input is copied into columns, and every product is a whole one: N samples fill
the register tiles of :func:`.tiles._gemm_acc` (four vectors: 64 float32 lanes with AVX-512,
32 with AVX2), C_in is its sum. The
gradients are sums of products over the same pairs, grouped by what they write:

    forward:       y[o]      = sum over the pairs of o:  w[t]   @ x[i]      (by output pixel)
    weight grad:   grad_w[t] = sum over the pairs of t:  gy[o]  @ x[i].T    (by tap)
    input grad:    grad_x[i] = sum over the pairs of i:  w[t].T @ gy[o]     (by input pixel)

with the arrays laid out pixel-major (``x[i]`` is one pixel's (C_in, N) matrix, ...: see
:mod:`..layout`). The kernels take x and gy in either layout and return y pixel-major (and
grad_x in x's layout), which the layers between two of them keep (batch norm, ReLU, the
residual sum): in a chain of small-map layers only its first input is swapped from NCHW (at
28x28, ResNet-18's 64 -> 64 layer on 7x7 maps took 1.32 ms forward from a pixel-major input,
1.56 from NCHW, 1.6-1.7 when it also swapped y back). One parallel kernel,
:func:`_pair_products`, computes all three; each task owns a block of rows of one group's
result and sums its pairs in a fixed order, so results do not depend on the number of
threads. The rearrangements around the products (an NCHW input, x's pixel rows for the
weight gradient, the live taps' weights) are parallel Numba loops too; where the live taps
serve only a few pairs each (:func:`_weights_in_place`: a 3x3 kernel's outputs of 2x2 and
less), the forward's products read the weights in w itself instead, a tap's matrix at a
stride of the kernel's size, for a rearrangement of w is a pass over all of it at every
call.
:func:`use_unrolled` says where they serve.
"""

import functools

import numpy as np
from numba import njit, prange

from .. import buffers
from ..layout import from_pixel_matrix, is_pixel_major, pixel_rows, swapped, to_pixel_matrix
from .columns import K_BLOCK, many_channels
from .common import channel_sums
from .tiles import UINT, _gemm_acc

MAX_OUT_MAP = 49  # output pixels per channel at most (7x7 maps) ...
MAX_STRIDED_OUT_MAP = 144  # ... or 12x12 at a stride of 2 (ResNet's 64 -> 128 at 96x96) ...
MIN_STRIDED_C_IN = 64  # ... from this many input channels
MIN_BATCH = 32  # samples from which the products' vectors are full enough (half a tile)
ROW_BLOCK = 96  # rows of a group's result per parallel task: 16 six-row tiles (with 64 rows, ten
# tiles and two pairs, ResNet-18's products took 0.92-1.04x this time on 1 thread, 0.88-1.11x
# on 2)
IN_PLACE_PAIRS = 4  # pairs per live tap, on average, up to which the products read w in place


def use_unrolled(x_shape, weight_shape, groups, out_shape):
    """Whether a convolution takes the unrolled kernels: groups of 1 and
    :func:`.columns.many_channels`, batches of :data:`MIN_BATCH` samples or more (the
    samples are the products' vectors), outputs of at most :data:`MAX_OUT_MAP` pixels per
    channel (:data:`MAX_STRIDED_OUT_MAP` where the input has 4 times as many and
    :data:`MIN_STRIDED_C_IN` channels: the column kernels' input gradient at a stride took
    longer), and no more input pixels than outputs times taps (each input pixel rearranged
    is read about once or more: not a 1x1 kernel at stride 2, whose columns copy only the
    pixels it reads)."""
    out_pixels, in_pixels = out_shape[2] * out_shape[3], x_shape[2] * x_shape[3]
    strided = in_pixels >= 4 * out_pixels and x_shape[1] >= MIN_STRIDED_C_IN
    return (groups == 1 and many_channels(weight_shape) and x_shape[0] >= MIN_BATCH
            and out_pixels <= (MAX_STRIDED_OUT_MAP if strided else MAX_OUT_MAP)
            and in_pixels <= out_pixels * weight_shape[2] * weight_shape[3])


def geometry(stride, dilation, padding):
    """The kernels' ``geometry`` argument, (stride_h, stride_w, dilation_h, dilation_w, top,
    left), of a convolution's stride, dilation and padding ((top, bottom), (left, right))."""
    (top, _), (left, _) = padding
    return (*stride, *dilation, top, left)


def _pairs(height, width, out_h, out_w, kh_size, kw_size, geometry):
    """(o, i, t): the output pixels, input pixels and taps (flat indexes) of every pair a
    tap joins, in (o, t) order. ``geometry`` = (stride_h, stride_w, dilation_h, dilation_w,
    top, left)."""
    stride_h, stride_w, dilation_h, dilation_w, top, left = geometry
    pairs = [(oh * out_w + ow, ih * width + iw, kh * kw_size + kw)
             for oh in range(out_h) for ow in range(out_w)
             for kh in range(kh_size) for kw in range(kw_size)
             for ih in (oh * stride_h + kh * dilation_h - top,)
             for iw in (ow * stride_w + kw * dilation_w - left,)
             if 0 <= ih < height and 0 <= iw < width]
    return np.array(pairs, dtype=np.int64).reshape(-1, 3).T


def _grouped(groups, a_index, b_index, n_groups):
    """The pairs sorted by group (stable: their order within a group kept): (starts
    (n_groups + 1,), a_index, b_index) for :func:`_pair_products`."""
    order = np.argsort(groups, kind="stable")
    starts = np.searchsorted(groups[order], np.arange(n_groups + 1)).astype(np.int64)
    return starts, np.ascontiguousarray(a_index[order]), np.ascontiguousarray(b_index[order])


@njit(parallel=True, cache=True)
def _pair_products(a, b, starts, a_index, b_index, bias, c):
    """c (G, R, P), C-contiguous: c[g] = the sum over pairs j in starts[g]:starts[g + 1] of
    a[a_index[j]] (R, K) @ b[b_index[j]] (K, P), in that order, then bias[r] added to row r
    where ``bias`` (R,) is not empty; by blocks of ROW_BLOCK rows of each group in parallel.
    ``a`` may be a strided view (the weights in place, :func:`_weights_in_place`); b is
    C-contiguous."""
    n_groups, rows, p_size = starts.size - 1, a.shape[1], b.shape[2]
    n_blocks = -(-rows // ROW_BLOCK)
    for task in prange(n_groups * n_blocks):
        g, r0 = task // n_blocks, task % n_blocks * ROW_BLOCK
        r1 = min(rows, r0 + ROW_BLOCK)
        c[g, r0:r1] = 0  # by the task, in parallel
        for j in range(starts[g], starts[g + 1]):
            _gemm_acc(a[a_index[j], r0:r1], b[b_index[j]], c[g, r0:r1], p_size, K_BLOCK)
        if bias.size:
            for r in range(r0, r1):
                c[g, r] += bias[r]


def _products(a, b, groups, bias=None):
    """:func:`_pair_products` of ``groups`` (starts, a_index, b_index: :func:`_grouped`) into
    memory from :func:`.buffers.empty` (a fresh array's pages are faulted in and zeroed on
    every call: the 96x96 64 -> 128 layer's backward took 54 ms instead of 43 on an AMD
    EPYC, one thread), ``bias`` added where given."""
    starts = groups[0]
    c = buffers.empty((starts.size - 1, a.shape[1], b.shape[2]), b.dtype)
    _pair_products(a, b, *groups, np.empty(0, dtype=b.dtype) if bias is None else bias, c)
    return c


@functools.lru_cache(maxsize=256)
def _plan(height, width, out_h, out_w, kh_size, kw_size, geometry):
    """(live, forward, weight_grad, input_grad) of a convolution's geometry (one per layer
    and input size: computed once): the taps that join any pair (flat indexes; only their
    weights are rearranged and their gradients computed: a 1x1 map's 3x3 kernel has its
    middle tap alone), and the pairs grouped for each product (:func:`_grouped`), taps
    numbered among the live ones."""
    o, i, taps = _pairs(height, width, out_h, out_w, kh_size, kw_size, geometry)
    live, t = np.unique(taps, return_inverse=True)
    t = t.astype(np.int64)
    return (live, _grouped(o, t, i, out_h * out_w), _grouped(t, o, i, live.size),
            _grouped(i, t, o, height * width))


def _plan_of(x_shape, w_shape, out_h, out_w, geometry):
    """:func:`_plan` for arrays of these shapes."""
    return _plan(int(x_shape[2]), int(x_shape[3]), int(out_h), int(out_w), int(w_shape[2]),
                 int(w_shape[3]), tuple(int(g) for g in geometry))


# The weights' rearrangements, in parallel (NumPy's copies run on one thread: at 512
# channels the live taps' weights took 3.5 ms, here 0.8 on one thread); each iteration
# writes its own rows.

@njit(parallel=True, cache=True)
def _live_weights(w, live, out):
    """out (len(live), C_out, C_in) = the live taps' weights of w (C_out, C_in, T)."""
    c_out, c_in, n_taps = w.shape
    src, dst = w.reshape(w.size), out.reshape(out.size)  # flat, as layout.swap_outer's
    rows, inputs, taps = UINT(c_out), UINT(c_in), UINT(n_taps)
    for m in prange(c_out):
        row = UINT(m)
        for j in range(UINT(live.size)):
            d, s = (j * rows + row) * inputs, row * inputs * taps + UINT(live[j])
            for c in range(inputs):
                dst[d + c] = src[s + c * taps]


TRANSPOSE_BLOCK = 16  # channels x channels of w rearranged at once by the transposed copy


@njit(parallel=True, cache=True)
def _live_weights_transposed(w, live, out):
    """out (len(live), C_in, C_out) = the live taps' weights of w (C_out, C_in, T),
    transposed.

    By squares of TRANSPOSE_BLOCK x TRANSPOSE_BLOCK channels, whose reads and writes stay in
    L1 (row by row, each write to another line: 512 x 512 x 9 weights took 17 ms, now 1.7)."""
    c_out, c_in = w.shape[0], w.shape[1]
    for block in prange(-(-c_in // TRANSPOSE_BLOCK)):
        c0 = block * TRANSPOSE_BLOCK
        c1 = min(c_in, c0 + TRANSPOSE_BLOCK)
        for m0 in range(0, c_out, TRANSPOSE_BLOCK):
            m1 = min(c_out, m0 + TRANSPOSE_BLOCK)
            for j in range(UINT(live.size)):
                tap = live[j]
                for c in range(UINT(c0), UINT(c1)):
                    row = out[j, c]
                    for m in range(UINT(m0), UINT(m1)):
                        row[m] = w[m, c, tap]


def _live(w, live, transposed=False):
    """The live taps' weights of w (C_out, C_in, KH, KW), (len(live), C_out, C_in) or
    transposed (len(live), C_in, C_out), in memory from :func:`.buffers.empty` (512 x 512
    channels' are 9.4 MB)."""
    c_out, c_in = w.shape[:2]
    if transposed:
        out = buffers.empty((live.size, c_in, c_out), w.dtype)
        _live_weights_transposed(_flat(w), live, out)
    else:
        out = buffers.empty((live.size, c_out, c_in), w.dtype)
        _live_weights(_flat(w), live, out)
    return out


@njit(parallel=True, cache=True)
def _taps_gradient(grad_live, live, grad_w):
    """grad_w (C_out, C_in, T) = the weight gradient from the live taps' (len(live), C_out,
    C_in): zeros at the taps that join no pair."""
    c_out, c_in, n_taps = grad_w.shape
    src, dst = grad_live.reshape(grad_live.size), grad_w.reshape(grad_w.size)
    rows, inputs, taps = UINT(c_out), UINT(c_in), UINT(n_taps)
    zero = grad_w.dtype.type(0)
    for m in prange(c_out):
        row = UINT(m)
        for i in range(row * inputs * taps, (row + UINT(1)) * inputs * taps):
            dst[i] = zero
        for j in range(UINT(live.size)):
            d, s = row * inputs * taps + UINT(live[j]), (j * rows + row) * inputs
            for c in range(inputs):
                dst[d + c * taps] = src[s + c]


def _weights_in_place(groups, live):
    """Whether the forward's products (``groups``: its grouping from :func:`_plan`) read the
    live taps' weights in w itself (:func:`_tap_major`) rather than rearranged into contiguous
    matrices: where the live taps serve :data:`IN_PLACE_PAIRS` pairs or fewer each on
    average (a 3x3 kernel: outputs of 2x2 and less), the rearrangement (a pass over all
    of w at every call) costs more than the products' strided reads (ResNet-18 at 28x28,
    1 thread: 256 -> 512 onto a 1x1 map, forward 1.01 -> 0.65 ms; 128 -> 256 onto 2x2 0.98
    -> 0.81; on 6x6 maps, 256 pairs of 9 live taps, the strided reads were 4% slower)."""
    return groups[0][-1] <= IN_PLACE_PAIRS * live.size


def _tap_major(w):
    """w (C_out, C_in, T) seen as (T, C_out, C_in): a view, each tap's matrix at a stride of
    T values. (The input gradient's w.T per tap would be the view (2, 1, 0), Fortran-ordered:
    a third compiled variant of the products, so it stays rearranged.)"""
    return np.transpose(w, (2, 0, 1))


def _flat(a):
    """a (N, C, H, W) as (N, C, H * W), C-contiguous."""
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1)


def forward_unrolled(x, w, b, geometry, out_h, out_w):
    """y (N, C_out, out_h, out_w), pixel-major (:mod:`..layout`), of x (N, C_in, H, W) in
    either layout; ``geometry`` = (stride_h, stride_w, dilation_h, dilation_w, top, left)."""
    live, by_output, _, _ = _plan_of(x.shape, w.shape, out_h, out_w, geometry)
    starts, taps, pixels = by_output
    if _weights_in_place(by_output, live):
        weights, taps = _tap_major(_flat(w)), live[taps]
    else:
        weights = _live(w, live)
    y_pixels = _products(weights, to_pixel_matrix(x), (starts, taps, pixels),
                         b.astype(x.dtype, copy=False))
    return from_pixel_matrix(y_pixels, out_h, out_w)


def backward_unrolled(gy, x, w, geometry, need_input_grad, need_bias_grad, grad_weight=None):
    """``(grad_x or None, grad_w, grad_b or None)`` of :func:`forward_unrolled` at gy (gy and
    x in either layout; grad_x in x's: the layer that changed the layout in the forward
    changes it back); grad_w written into ``grad_weight`` (C-contiguous, w's shape) where
    given."""
    live, _, by_tap, by_input = _plan_of(x.shape, w.shape, gy.shape[2], gy.shape[3], geometry)
    gy_pixels = to_pixel_matrix(gy)  # (OH * OW, C_out, N)
    grad_live = _products(gy_pixels, pixel_rows(x), by_tap)
    grad_w = np.empty_like(w) if grad_weight is None else grad_weight
    _taps_gradient(grad_live, live, grad_w.reshape(w.shape[0], w.shape[1], -1))
    grad_b = channel_sums(gy_pixels).astype(gy.dtype) if need_bias_grad else None
    grad_x = None
    if need_input_grad:
        grad_pixels = _products(_live(w, live, transposed=True), gy_pixels, by_input)
        grad_x = (from_pixel_matrix(grad_pixels, x.shape[2], x.shape[3]) if is_pixel_major(x)
                  else swapped(grad_pixels).reshape(x.shape))
    return grad_x, grad_w, grad_b
