"""What several layouts' kernels share: each kernel tap's channel and flat offset, the
weights grouped per convolution group, the parallel tasks' partial weight and bias
gradients, summed in a fixed order (so that results do not depend on the number of
threads), and gy's sums per channel (:func:`channel_sums`)."""

import numpy as np
from numba import njit, prange

FAST = {"reassoc", "contract"}  # reorder sums so they vectorise; NaN and inf still propagate


@njit(cache=True)
def _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp):
    """Per kernel tap k = (c_in, kh, kw), in weight order: its channel and flat offset."""
    k_size = c_in_g * kh_size * kw_size
    chan = np.empty(k_size, dtype=np.int64)
    offset = np.empty(k_size, dtype=np.int64)
    k = 0
    for ci in range(c_in_g):
        for kh in range(kh_size):
            for kw in range(kw_size):
                chan[k] = ci
                offset[k] = kh * dilation_h * wp + kw * dilation_w
                k += 1
    return chan, offset


@njit(cache=True)
def _grouped_weights(w, groups):
    """w (C_out, C_in_g, KH, KW) as (groups, C_out_g, K)."""
    c_out = w.shape[0]
    c_out_g = c_out // groups
    k_size = w.shape[1] * w.shape[2] * w.shape[3]
    return w.reshape(groups, c_out_g, k_size).copy()


@njit(cache=True)
def _zero_partials(n_parts, groups, c_out, k_size, like):
    """Zeroed partial sums, in ``like``'s dtype, of n_parts weight gradients (parts, groups,
    C_out_g, K) and bias gradients (parts, 1, C_out, 1)."""
    return (np.zeros((n_parts, groups, c_out // groups, k_size), dtype=like.dtype),
            np.zeros((n_parts, 1, c_out, 1), dtype=like.dtype))


@njit(cache=True)
def _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size):
    """``(grad_w, grad_b)`` from the partial sums of :func:`_zero_partials`."""
    c_out = partial_bias.shape[2]
    return (_sum_chunks(partial, c_out).reshape(c_out, c_in_g, kh_size, kw_size),
            _sum_chunks(partial_bias, c_out).reshape(c_out))


@njit(cache=True)
def _sum_chunks(partial, c_out):
    """(C_out, K): the chunks' weight gradients (chunks, groups, C_out_g, K) summed in a
    fixed order (explicit loops compile faster than array expressions); bias gradients come
    as (chunks, 1, C_out, 1)."""
    n_chunks, groups, k_size = partial.shape[0], partial.shape[1], partial.shape[3]
    c_out_g = c_out // groups
    grad_w = np.empty((c_out, k_size), dtype=partial.dtype)
    for co in range(c_out):
        g, m = co // c_out_g, co % c_out_g
        for k in range(k_size):
            total = partial[0, g, m, k]
            for chunk in range(1, n_chunks):
                total += partial[chunk, g, m, k]
            grad_w[co, k] = total
    return grad_w


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def channel_sums(a):
    """The float64 sums of a (A, C, B) over all but C, each channel by a task of its own
    (gy's, (N, C, P) or pixel-major (P, C, N): the bias gradient of the pointwise and
    unrolled kernels; reassociated so that the sum vectorises)."""
    n_batch, channels, length = a.shape
    sums = np.empty(channels)
    for c in prange(channels):
        total = 0.0
        for n in range(n_batch):
            for p in range(length):
                total += a[n, c, p]
        sums[c] = total
    return sums
