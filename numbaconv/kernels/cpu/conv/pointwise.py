"""The pointwise kernels: a 1x1 convolution without padding (NiN's and GoogLeNet's 1x1
layers, DenseNet's transitions; at a stride, ResNet's shortcuts, on the input's sampled
pixels) is a matrix product per sample in the NCHW layout itself, its P = OH * OW pixels
along the vectors:

    forward:        y[n]  (C_out, P)    = w (C_out, C_in) @ x[n] (C_in, P) + b
    input grad:     gx[n] (C_in, P)     = w.T (C_in, C_out) @ gy[n] (C_out, P)
    weight grad:    gw    (C_out, C_in) = sum over the samples n of gy[n] @ x[n].T

No input is rearranged and no output spread (the unrolled kernels swap the batch into
pixel-major order and back; the output-channel kernels spread their tiles to y's planes:
NiN's 256 -> 256 on 7x7 maps, batch 128, 1 thread, forward 10.7 ms by the unrolled
kernels, here 9.3).
The products are :func:`.tiles._gemm6_acc`'s register tiles, whose vectors run along the
pixels: :func:`use_pointwise` takes maps that fill them well. A forward (and input
gradient) task owns a sample; the weight gradient sums fixed chunks of samples, then the
chunks in order; so results do not depend on the number of threads. Every
product is one of the convolution's own (no padding), so inf and NaN propagate as in its
sums.
"""

import numpy as np
from numba import njit, prange

from .. import buffers, simd
from .columns import K_BLOCK
from .tiles import _gemm6_acc
from .unrolled import _channel_sums

MIN_FILL = 0.75  # the share of the tiles' vector lanes the pixels must fill: 49 of 64 (7x7
# maps, AVX-512) and more; DenseNet's 4x4 and ResNet's 6x6 shortcuts fill 16 and 36 of 64
MIN_CHANNELS = 16  # input and output channels at least, for products worth a tile
WEIGHT_GRAD_CHUNKS = 8  # the weight gradient's chunks of samples: its tasks (each reads its
# samples once; a task per block of output channels read every sample's x from memory)


def use_pointwise(x_shape, weight_shape, groups, stride, padding, itemsize):
    """Whether a convolution takes these kernels: a 1x1 kernel, groups of 1, no padding,
    one stride on both axes, :data:`MIN_CHANNELS` input and output channels, and outputs
    whose pixels fill :data:`MIN_FILL` of the tiles' lanes (four vectors)."""
    c_out, c_in, kh, kw = weight_shape
    if ((kh, kw) != (1, 1) or groups != 1 or stride[0] != stride[1]
            or any(side for pair in padding for side in pair)
            or min(c_in, c_out) < MIN_CHANNELS):
        return False
    pixels = (-(-x_shape[2] // stride[0])) * (-(-x_shape[3] // stride[1]))
    lanes = 4 * simd.VECTOR_BYTES // itemsize
    return pixels / (-(-pixels // lanes) * lanes) >= MIN_FILL


@njit(parallel=True, cache=True)
def conv2d_forward_pointwise(x, w, b, y):
    """Writes y (N, C_out, P) = w (C_out, C_in) @ x[n] (N, C_in, P) + b, a task a sample."""
    n_batch, c_out, p_size = y.shape
    for n in prange(n_batch):
        c = y[n]
        for m in range(c_out):
            c[m, :] = b[m]
        _gemm6_acc(w, x[n], c, p_size, K_BLOCK)


@njit(parallel=True, cache=True)
def transpose_samples(x, out):
    """Writes out (N, P, C) = x (N, C, P) transposed per sample, a task a sample (its C x P
    values in L2)."""
    n_batch, channels, p_size = x.shape
    for n in prange(n_batch):
        for c in range(channels):
            for p in range(p_size):
                out[n, p, c] = x[n, c, p]


@njit(parallel=True, cache=True)
def conv2d_weight_grad_pointwise(gy, xt, per_chunk, partial, grad_w):
    """Writes grad_w (C_out, C_in) = the sum over the samples n of gy[n] (C_out, P) @ xt[n]
    (P, C_in) (xt: x transposed per sample, :func:`transpose_samples`): a task per chunk of
    ``per_chunk`` samples sums its own into partial[chunk] (C_out, C_in), reading each
    sample once, then the chunks' sums are added in order, a task per row."""
    n_batch, c_out, c_in = gy.shape[0], gy.shape[1], xt.shape[2]
    for chunk in prange(partial.shape[0]):
        c = partial[chunk]
        c[:, :] = 0
        for n in range(chunk * per_chunk, min(n_batch, (chunk + 1) * per_chunk)):
            _gemm6_acc(gy[n], xt[n], c, c_in, K_BLOCK)
    for m in prange(c_out):
        row = grad_w[m]
        row[:] = partial[0, m]
        for chunk in range(1, partial.shape[0]):
            row += partial[chunk, m]


def _sampled(a, stride):
    """a (N, C, H, W) at every ``stride``-th row and column, as (N, C, OH * OW),
    C-contiguous."""
    if stride != 1:
        a = a[:, :, ::stride, ::stride]
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


def forward_pointwise(x, w, b, stride):
    """y (N, C_out, OH, OW) of x (N, C_in, H, W) and w (C_out, C_in, 1, 1) at ``stride``."""
    xs = _sampled(x, stride)
    out_h, out_w = -(-x.shape[2] // stride), -(-x.shape[3] // stride)
    y = buffers.empty((x.shape[0], w.shape[0], out_h * out_w), x.dtype)
    conv2d_forward_pointwise(xs, np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1])), b, y)
    return y.reshape(x.shape[0], w.shape[0], out_h, out_w)


def backward_pointwise(gy, x, w, stride, need_input_grad, need_bias_grad, grad_weight=None):
    """``(grad_xs or None, grad_w, grad_b or None)`` of :func:`forward_pointwise` at gy
    (N, C_out, OH, OW): grad_xs the gradient of x's sampled pixels (N, C_in, OH, OW; at
    stride 1, of x), which :func:`numbaconv.kernels.cpu.conv.backward_pointwise` places on
    x's grid; grad_w written into ``grad_weight`` (C-contiguous, w's shape) where given."""
    c_out, c_in = w.shape[0], w.shape[1]
    n_batch = gy.shape[0]
    gy_flat = np.ascontiguousarray(gy).reshape(n_batch, c_out, -1)
    grad_w = grad_weight
    if grad_w is None or not grad_w.flags.c_contiguous:
        grad_w = np.empty_like(w)
    xs = _sampled(x, stride)
    xt = buffers.empty((n_batch, xs.shape[2], c_in), x.dtype)
    transpose_samples(xs, xt)
    per_chunk = -(-n_batch // WEIGHT_GRAD_CHUNKS)
    partial = np.empty((-(-n_batch // per_chunk), c_out, c_in), dtype=gy.dtype)
    conv2d_weight_grad_pointwise(gy_flat, xt, per_chunk, partial, grad_w.reshape(c_out, c_in))
    grad_b = _channel_sums(gy_flat).astype(gy.dtype) if need_bias_grad else None
    grad = None
    if need_input_grad:
        grad = buffers.empty((n_batch, c_in, gy_flat.shape[2]), gy.dtype)
        conv2d_forward_pointwise(gy_flat, np.ascontiguousarray(w.reshape(c_out, c_in).T),
                                 np.zeros(c_in, dtype=gy.dtype), grad)
        grad = grad.reshape(n_batch, c_in, gy.shape[2], gy.shape[3])
    return grad, grad_w, grad_b
