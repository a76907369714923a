"""Numba CPU kernels for an activation followed by a pooling whose windows tile its input,
fused into one pass over the activation's input (a convolution's output, in ``Sequential``).

Unfused, LeNet's ``Sigmoid`` then ``AvgPool2d(2)`` read and write its first feature map (1.2 M
values at batch 256, more than L2 holds) in four passes forward and four backward. Here each
``(n, c)`` plane is activated into a scratch plane that stays in L1 and pooled from there: the
forward reads ``z`` and writes only the pooled output; the backward reads ``z`` again (it
recomputes the activation instead of storing it) and the pooled gradient, and writes the
gradient at ``z``.

The arithmetic is the unfused layers' own, in their order (the average pool's plane functions
from :mod:`.pool`, the activations' formulas), so fused and unfused results agree bit for bit.
The windows must tile (kernel == stride, no padding, dilation 1, floor mode), the common
``pool(2)`` case; callers check that (``numbaconv.fusion``).
"""

import numpy as np
from numba import njit, prange

from .elementwise import VECTOR_LOOP, sigmoid_value
from .pool import _avg_tiled_backward_plane, _avg_tiled_forward_plane

SIGMOID, RELU = 0, 1  # activation codes
AVG, MAX = 0, 1  # pool codes
PLANES = 8  # planes per parallel task, which share one scratch plane (allocating one per plane
            # cost LeNet's first stage a third of its time)


@njit(cache=True, **VECTOR_LOOP)
def _activate(z, y, activation):
    """y = activation(z) for flat arrays. ReLU is NumPy's ``maximum(z, 0)``: NaN stays NaN,
    -0.0 gives +0.0."""
    if activation == SIGMOID:
        for i in range(z.size):
            y[i] = sigmoid_value(z[i])
    else:
        zero = np.zeros(1, dtype=z.dtype)[0]
        for i in range(z.size):
            v = z[i]
            y[i] = v if (v > zero or v != v) else zero


@njit(cache=True, error_model="numpy")
def _times_derivative(grad, y, activation):
    """grad *= activation'(y) for flat arrays, as the activation layers' backward computes it
    (the sigmoid's ``grad * ((1 - y) * y)``; ReLU's ``grad * (not y <= 0)``)."""
    zero = np.zeros(1, dtype=y.dtype)[0]
    one = np.ones(1, dtype=y.dtype)[0]
    if activation == SIGMOID:
        for i in range(y.size):
            grad[i] = grad[i] * ((one - y[i]) * y[i])
    else:
        for i in range(y.size):
            grad[i] = grad[i] * (zero if y[i] <= zero else one)


@njit(inline="always")
def _max_winner(a, h0, w0, kernel_h, kernel_w):
    """The maximum of window ``a[h0:h0+kernel_h, w0:w0+kernel_w]`` and its position, by the
    max pool's rule: the first maximum in row-major order wins a tie, a NaN always wins."""
    best = -np.inf
    best_h, best_w = h0, w0
    for ih in range(h0, h0 + kernel_h):
        for iw in range(w0, w0 + kernel_w):
            value = a[ih, iw]
            if value > best or np.isnan(value):
                best = value
                best_h, best_w = ih, iw
    return best, best_h, best_w


# 2x2 windows, the common case, have their own plane functions: with the window's size known
# the compiler unrolls the windows (about 2x faster than the loops over kernel_h, kernel_w).
# Dividing by 4 and multiplying by 0.25 both round the same exact quotient: equal results.

@njit(cache=True)
def _avg2x2_forward_plane(a, y):
    """y = means of the 2x2 windows of a, summed in the generic function's order."""
    zero = np.zeros(1, dtype=a.dtype)[0]
    quarter = np.full(1, 0.25, dtype=a.dtype)[0]
    for oh in range(y.shape[0]):
        top, bottom, out = a[2 * oh], a[2 * oh + 1], y[oh]
        for ow in range(y.shape[1]):
            w = 2 * ow
            out[ow] = ((((zero + top[w]) + top[w + 1]) + bottom[w]) + bottom[w + 1]) * quarter


@njit(cache=True)
def _avg2x2_backward_plane(g, grad):
    """Each 2x2 window of grad gets a quarter of its output's gradient."""
    quarter = np.full(1, 0.25, dtype=grad.dtype)[0]
    for oh in range(g.shape[0]):
        top, bottom, grad_row = grad[2 * oh], grad[2 * oh + 1], g[oh]
        for ow in range(g.shape[1]):
            share = grad_row[ow] * quarter
            w = 2 * ow
            top[w] = share
            top[w + 1] = share
            bottom[w] = share
            bottom[w + 1] = share


@njit(inline="always")
def _max2x2_winner(top, bottom, w):
    """The maximum of the window at columns w, w + 1 of two rows and its (row 0/1, column):
    :func:`_max_winner`'s rule."""
    best, row, col = top[w], 0, w
    for candidate_row, candidate_col, value in ((0, w + 1, top[w + 1]), (1, w, bottom[w]),
                                                (1, w + 1, bottom[w + 1])):
        if value > best or np.isnan(value):
            best, row, col = value, candidate_row, candidate_col
    return best, row, col


@njit(cache=True)
def _max2x2_forward_plane(a, y):
    """y = maxima of the 2x2 windows of a."""
    for oh in range(y.shape[0]):
        top, bottom, out = a[2 * oh], a[2 * oh + 1], y[oh]
        for ow in range(y.shape[1]):
            out[ow] = _max2x2_winner(top, bottom, 2 * ow)[0]


@njit(cache=True)
def _max2x2_backward_plane(a, g, grad):
    """Adds each g to the winner of its 2x2 window of a, in grad (zeros)."""
    for oh in range(g.shape[0]):
        top, bottom = a[2 * oh], a[2 * oh + 1]
        for ow in range(g.shape[1]):
            _, row, col = _max2x2_winner(top, bottom, 2 * ow)
            grad[2 * oh + row, col] += g[oh, ow]


@njit(cache=True)
def _forward_plane(z, y, scratch, activation, pool, kernel_h, kernel_w):
    """y (out_h, out_w) = pool(activation(z)) for one plane z (H, W); scratch is (H, W)."""
    _activate(z.reshape(-1), scratch.reshape(-1), activation)
    square2 = kernel_h == 2 and kernel_w == 2
    if pool == AVG and square2:
        _avg2x2_forward_plane(scratch, y)
    elif pool == AVG:
        _avg_tiled_forward_plane(scratch, y, kernel_h, kernel_w, kernel_h * kernel_w)
    elif square2:
        _max2x2_forward_plane(scratch, y)
    else:
        for oh in range(y.shape[0]):
            for ow in range(y.shape[1]):
                best, _, _ = _max_winner(scratch, oh * kernel_h, ow * kernel_w, kernel_h,
                                         kernel_w)
                y[oh, ow] = best


@njit(cache=True)
def _backward_plane(g, z, grad_z, scratch, activation, pool, kernel_h, kernel_w):
    """grad_z (H, W) from the pooled gradient g (out_h, out_w) of one plane: the pool's
    backward (zeros where no window reaches), then times the activation's derivative."""
    _activate(z.reshape(-1), scratch.reshape(-1), activation)
    grad_z[:] = 0
    square2 = kernel_h == 2 and kernel_w == 2
    if pool == AVG and square2:
        _avg2x2_backward_plane(g, grad_z)
    elif pool == AVG:
        _avg_tiled_backward_plane(g, grad_z, kernel_h, kernel_w, kernel_h * kernel_w)
    elif square2:
        _max2x2_backward_plane(scratch, g, grad_z)
    else:
        for oh in range(g.shape[0]):
            for ow in range(g.shape[1]):
                _, best_h, best_w = _max_winner(scratch, oh * kernel_h, ow * kernel_w,
                                                kernel_h, kernel_w)
                grad_z[best_h, best_w] += g[oh, ow]
    _times_derivative(grad_z.reshape(-1), scratch.reshape(-1), activation)


@njit(parallel=True, cache=True)
def act_pool_forward(z, activation, pool, kernel_h, kernel_w):
    """y (N, C, H // kernel_h, W // kernel_w) = pool(activation(z)) for z (N, C, H, W)."""
    n_batch, channels, height, width = z.shape
    y = np.empty((n_batch, channels, height // kernel_h, width // kernel_w), dtype=z.dtype)
    planes = n_batch * channels
    for task in prange((planes + PLANES - 1) // PLANES):
        scratch = np.empty((height, width), dtype=z.dtype)
        for plane in range(task * PLANES, min(planes, (task + 1) * PLANES)):
            n = plane // channels
            c = plane % channels
            _forward_plane(z[n, c], y[n, c], scratch, activation, pool, kernel_h, kernel_w)
    return y


@njit(parallel=True, cache=True)
def act_pool_backward(grad_y, z, activation, pool, kernel_h, kernel_w):
    """The gradient at z (N, C, H, W) from grad_y (N, C, H // kernel_h, W // kernel_w)."""
    n_batch, channels, height, width = z.shape
    grad_z = np.empty_like(z)
    planes = n_batch * channels
    for task in prange((planes + PLANES - 1) // PLANES):
        scratch = np.empty((height, width), dtype=z.dtype)
        for plane in range(task * PLANES, min(planes, (task + 1) * PLANES)):
            n = plane // channels
            c = plane % channels
            _backward_plane(grad_y[n, c], z[n, c], grad_z[n, c], scratch, activation, pool,
                            kernel_h, kernel_w)
    return grad_z
