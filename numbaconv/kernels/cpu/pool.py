"""Numba CPU kernels for 2-D max and average pooling, forward and backward.

The public wrappers in :mod:`numbaconv.functional` check and normalise every argument; the
kernels trust their inputs. Arrays are C-contiguous NCHW; each ``(n, c)`` plane is pooled on
its own, so every parallel iteration owns one plane of the output (or of the input gradient),
and results do not depend on the number of threads.

Window arithmetic is PyTorch's CPU kernels', so sizes, ``ceil_mode`` overhangs, padding counts,
index ties and NaN propagation agree with it element for element. No ``fastmath``: max pooling
relies on -inf and NaN behaving as IEEE says.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _max_plane(src, dst, index, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
               dilation_h, dilation_w):
    """dst, index (out_h, out_w) = the maxima of src (H, W) over any windows, and their flat
    positions."""
    height, width = src.shape
    out_h, out_w = dst.shape
    for oh in range(out_h):
        h0 = oh * stride_h - pad_h
        h1 = min(h0 + (kernel_h - 1) * dilation_h + 1, height)
        while h0 < 0:
            h0 += dilation_h
        for ow in range(out_w):
            w0 = ow * stride_w - pad_w
            w1 = min(w0 + (kernel_w - 1) * dilation_w + 1, width)
            while w0 < 0:
                w0 += dilation_w
            best_index = h0 * width + w0
            best = src.dtype.type(-np.inf)
            for ih in range(h0, h1, dilation_h):
                for iw in range(w0, w1, dilation_w):
                    # strictly greater: the first maximum wins a tie; a NaN always wins (by
                    # selects, not branches: 1.1-1.2x faster on random data)
                    best, best_index = _pick(src[ih, iw], ih * width + iw, best, best_index)
            dst[oh, ow] = best
            index[oh, ow] = best_index


# 3x3 windows at stride 2 with padding 1 over rows of even width W (ResNet's stem pool): the
# generic loop's scan, reordered so that long loops vectorise, in a quarter of its time. First
# each input row's maxima over its windows' three columns: with W = 2 * out_w, window ow of
# row h starts at flat position 2 * (h * out_w + ow) - 1 of the plane, so all the plane's rows
# are one loop (the windows at ow = 0, whose first column is the padding, are redone after
# it). Then the rows of each window are combined in order. Scanning each row, then the rows, in
# order is the row-major scan's rule: the first maximum of the first row that holds the
# window's maximum wins, and the last NaN of the last row that holds one. Selects, not
# branches: the winners of random data are unpredictable.

@njit(inline="always")
def _pick(value, position, best, best_position):
    """(best, its position) after scanning value: strictly greater, or a NaN, wins."""
    take = (value > best) | (value != value)
    return (value if take else best), (position if take else best_position)


@njit(cache=True)
def _stem_max_plane(src, dst, index, pad_h, row_best, row_position):
    """dst, index (out_h, out_w) = the maxima of src (H, 2 * out_w) over 3x3 windows at
    stride 2, padding pad_h <= 1 above and 1 to the left, and their flat positions;
    row_best, row_position (H * out_w,) are scratch."""
    height, width = src.shape
    out_h, out_w = dst.shape
    flat = src.reshape(-1)
    shifted = flat[1:]  # window t >= 1 starts at flat[2 * t - 1] = shifted[2 * (t - 1)]
    for j in range(row_best.shape[0] - 1):
        c = 2 * j
        b, p = shifted[c], c
        b, p = _pick(shifted[c + 1], c + 1, b, p)
        b, p = _pick(shifted[c + 2], c + 2, b, p)
        row_best[j + 1] = b
        row_position[j + 1] = p + 1
    for h in range(height):  # ow = 0: columns 0 and 1 of row h only
        first = h * width
        b, p = _pick(flat[first + 1], first + 1, flat[first], first)
        row_best[h * out_w] = b
        row_position[h * out_w] = p
    for oh in range(out_h):
        h0 = max(2 * oh - pad_h, 0)
        rows = row_best[h0 * out_w:]
        positions = row_position[h0 * out_w:]
        best = dst[oh]
        position = index[oh]
        for ow in range(out_w):
            best[ow] = rows[ow]
            position[ow] = positions[ow]
        for r in range(1, min(2 * oh - pad_h + 3, height) - h0):
            for ow in range(out_w):
                best[ow], position[ow] = _pick(rows[r * out_w + ow], positions[r * out_w + ow],
                                               best[ow], position[ow])


@njit(parallel=True, cache=True)
def max_pool2d_forward(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, y, indices):
    """Writes y and the int64 indices, both (N, C, out_h, out_w); indices are flat
    ``h * W + w``."""
    n_batch, channels, height, width = x.shape
    out_w = y.shape[3]
    stem = (kernel_h == 3 and kernel_w == 3 and stride_h == 2 and stride_w == 2
            and dilation_h == 1 and dilation_w == 1 and pad_h <= 1 and pad_w == 1
            and width == 2 * out_w)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        if stem:
            _stem_max_plane(x[n, c], y[n, c], indices[n, c], pad_h,
                            np.empty(height * out_w, dtype=x.dtype),
                            np.empty(height * out_w, dtype=np.int64))
        else:
            _max_plane(x[n, c], y[n, c], indices[n, c], kernel_h, kernel_w, stride_h,
                       stride_w, pad_h, pad_w, dilation_h, dilation_w)


@njit(parallel=True, cache=True)
def max_pool2d_backward(grad_y, indices, grad_x):
    """Writes grad_x (N, C, H * W): each output gradient routed to the input position that
    won its window. Indices outside the plane (windows wholly in the padding) pass
    nothing."""
    n_batch, channels, plane_size = grad_x.shape
    zero = grad_y.dtype.type(0)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        g = grad_y[n, c]
        idx = indices[n, c]
        out = grad_x[n, c]
        for i in range(plane_size):  # zeroed here, in parallel and just before the scatter
            out[i] = zero
        for oh in range(g.shape[0]):
            for ow in range(g.shape[1]):
                i = idx[oh, ow]
                if 0 <= i < plane_size:
                    out[i] += g[oh, ow]


@njit(cache=True)
def _avg_windows(out_size, kernel, stride, pad, size):
    """Per output index along one axis: the window's (start, stop) clipped to the input, and
    its length counting the explicit padding but not the ceil_mode overhang (PyTorch's)."""
    start = np.empty(out_size, dtype=np.int64)
    stop = np.empty(out_size, dtype=np.int64)
    padded = np.empty(out_size, dtype=np.int64)
    for o in range(out_size):
        first = o * stride - pad
        last = min(first + kernel, size + pad)
        padded[o] = last - first
        start[o] = max(first, 0)
        stop[o] = min(last, size)
    return start, stop, padded


@njit(inline="always")
def _avg_count(h0, h1, w0, w1, padded_h, padded_w, count_include_pad, divisor):
    if divisor != 0:
        return divisor
    if count_include_pad:
        return padded_h * padded_w
    return (h1 - h0) * (w1 - w0)


@njit(inline="always")
def _tiled(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w, height, width):
    """Whether the windows tile the input: no padding, no overlap, none past the edge (e.g.
    2x2 stride 2). Then every window is full, and each input takes part in one window at
    most, so the passes can run row by row over whole rows instead of window by window."""
    return (pad_h == 0 and pad_w == 0 and stride_h == kernel_h and stride_w == kernel_w
            and out_h * kernel_h <= height and out_w * kernel_w <= width)


# One function per plane, called from the parallel loop: compiled outside the loop's body,
# plane loops got about 2x faster code (LeNet's pools, 1 thread).

@njit(cache=True)
def _avg_tiled_forward_plane(src, dst, kernel_h, kernel_w, count):
    """dst (out_h, out_w) = window means of src: the generic loop's sums in its order (over
    rows, then columns), a whole output row at a time."""
    zero = src.dtype.type(0)
    out_h, out_w = dst.shape
    for oh in range(out_h):
        acc = dst[oh]
        acc[:] = zero
        for kh in range(kernel_h):
            row = src[oh * kernel_h + kh]
            for ow in range(out_w):
                for kw in range(kernel_w):
                    acc[ow] += row[ow * kernel_w + kw]
        for ow in range(out_w):
            acc[ow] = acc[ow] / count


@njit(cache=True)
def _avg_tiled_backward_plane(g, out, kernel_h, kernel_w, count):
    """Each window of ``out`` (zeros) gets its share of g: one store per input, no
    read-modify-write (windows do not overlap)."""
    out_h, out_w = g.shape
    for oh in range(out_h):
        grad_row = g[oh]
        for kh in range(kernel_h):
            row = out[oh * kernel_h + kh]
            for ow in range(out_w):
                share = grad_row[ow] / count
                for kw in range(kernel_w):
                    row[ow * kernel_w + kw] = share


@njit(cache=True)
def _avg_forward_plane(src, dst, h_start, h_stop, h_padded, w_start, w_stop, w_padded,
                       count_include_pad, divisor):
    """dst (out_h, out_w) = window means of src, any windows."""
    zero = src.dtype.type(0)  # sum in the input's precision, as PyTorch does
    out_h, out_w = dst.shape
    for oh in range(out_h):
        h0, h1 = h_start[oh], h_stop[oh]
        for ow in range(out_w):
            w0, w1 = w_start[ow], w_stop[ow]
            total = zero
            for ih in range(h0, h1):
                row = src[ih]
                for iw in range(w0, w1):
                    total += row[iw]
            count = _avg_count(h0, h1, w0, w1, h_padded[oh], w_padded[ow],
                               count_include_pad, divisor)
            # count >= 1: a window starts before the input's end (ceil_mode drops the
            # others) and padding is at most half a window, so none is empty.
            dst[oh, ow] = total / count


@njit(cache=True)
def _avg_backward_plane(g, out, h_start, h_stop, h_padded, w_start, w_stop, w_padded,
                        count_include_pad, divisor):
    """Adds each output gradient's share to its window of ``out``, any windows."""
    out_h, out_w = g.shape
    for oh in range(out_h):
        h0, h1 = h_start[oh], h_stop[oh]
        for ow in range(out_w):
            w0, w1 = w_start[ow], w_stop[ow]
            count = _avg_count(h0, h1, w0, w1, h_padded[oh], w_padded[ow],
                               count_include_pad, divisor)
            share = g[oh, ow] / count
            for ih in range(h0, h1):
                row = out[ih]
                for iw in range(w0, w1):
                    row[iw] += share


@njit(parallel=True, cache=True)
def avg_pool2d_forward(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       count_include_pad, divisor, y):
    """Writes y (N, C, out_h, out_w); a non-zero ``divisor`` overrides the window count."""
    n_batch, channels, height, width = x.shape
    out_h, out_w = y.shape[2], y.shape[3]
    h_start, h_stop, h_padded = _avg_windows(out_h, kernel_h, stride_h, pad_h, height)
    w_start, w_stop, w_padded = _avg_windows(out_w, kernel_w, stride_w, pad_w, width)
    tiled = _tiled(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w,
                   height, width)
    full = divisor if divisor != 0 else kernel_h * kernel_w
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        if tiled:
            _avg_tiled_forward_plane(x[n, c], y[n, c], kernel_h, kernel_w, full)
        else:
            _avg_forward_plane(x[n, c], y[n, c], h_start, h_stop, h_padded, w_start, w_stop,
                               w_padded, count_include_pad, divisor)


@njit(parallel=True, cache=True)
def avg_pool2d_backward(grad_y, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                        count_include_pad, divisor, grad_x):
    """Writes grad_x (N, C, H, W): each output gradient spread evenly over its window."""
    n_batch, channels, out_h, out_w = grad_y.shape
    height, width = grad_x.shape[2], grad_x.shape[3]
    h_start, h_stop, h_padded = _avg_windows(out_h, kernel_h, stride_h, pad_h, height)
    w_start, w_stop, w_padded = _avg_windows(out_w, kernel_w, stride_w, pad_w, width)
    tiled = _tiled(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w,
                   height, width)
    full = divisor if divisor != 0 else kernel_h * kernel_w
    zero = grad_y.dtype.type(0)
    flat = grad_x.reshape(n_batch * channels, height * width)
    for plane in prange(n_batch * channels):
        n = plane // channels
        c = plane % channels
        for i in range(height * width):  # zeroed here, in parallel and just before use
            flat[plane, i] = zero
        if tiled:
            _avg_tiled_backward_plane(grad_y[n, c], grad_x[n, c], kernel_h, kernel_w, full)
        else:
            _avg_backward_plane(grad_y[n, c], grad_x[n, c], h_start, h_stop, h_padded,
                                w_start, w_stop, w_padded, count_include_pad, divisor)
