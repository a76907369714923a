"""The pointwise kernels: a 1x1 convolution without padding (NiN's and GoogLeNet's 1x1
layers, DenseNet's transitions; at a stride, ResNet's shortcuts, on the input's sampled
pixels) is a matrix product per sample in the NCHW layout itself, its P = OH * OW pixels
along the vectors:

    forward:        y[n]  (C_out, P)    = w (C_out, C_in) @ x[n] (C_in, P) + b
    input grad:     gx[n] (C_in, P)     = w.T (C_in, C_out) @ gy[n] (C_out, P)
    weight grad:    gw    (C_out, C_in) = sum over the samples n of gy[n] @ x[n].T

The forward and the input gradient rearrange no input and spread no output (the unrolled
kernels swap the batch into pixel-major order and back; the output-channel kernels spread
their tiles to y's planes: NiN's 256 -> 256 on 7x7 maps, batch 128, 1 thread, forward 10.7
ms by the unrolled kernels, here 9.3); the weight gradient reads x transposed per sample
(:func:`transpose_samples`). At a stride, each task samples its own sample's pixels (no
pass of its own over the batch: ResNet's 64 -> 128 shortcut onto 12x12, batch 64, forward
1.64 -> 1.24 ms on 2 threads).
The products are :func:`.tiles._gemm_acc`'s register tiles, whose vectors run along the
pixels: :func:`use_pointwise` takes maps that fill them well. A forward (and input
gradient) task owns a sample; the weight gradient sums fixed chunks of samples, then the
chunks in order; so results do not depend on the number of threads. Every
product is one of the convolution's own (no padding), so inf and NaN propagate as in its
sums.
"""

import numpy as np
from numba import njit, prange

from .. import buffers, simd
from ..layout import _move_square
from .columns import K_BLOCK
from .common import channel_sums
from .tiles import _gemm_acc

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


@njit(inline="always")
def _pixels(x, n, stride, p_size):
    """(C, P): x[n] (N, C, H, W) at every ``stride``-th row and column, P of them: at stride
    1 a view of x, else sampled into a scratch of the task's own."""
    channels, out_w = x.shape[1], -(-x.shape[3] // stride)
    if stride == 1:
        return x[n].reshape(channels, p_size)
    pixels = np.empty((channels, p_size), dtype=x.dtype)
    for c in range(channels):
        for oh in range(p_size // out_w):
            row = x[n, c, oh * stride]
            for ow in range(out_w):
                pixels[c, oh * out_w + ow] = row[ow * stride]
    return pixels


@njit(parallel=True, cache=True)
def conv2d_forward_pointwise(x, w, b, stride, y):
    """Writes y (N, C_out, P) = w (C_out, C_in) @ x[n] + b, x (N, C_in, H, W) at every
    ``stride``-th row and column (P pixels), a task a sample, which samples them itself."""
    n_batch, c_out, p_size = y.shape
    for n in prange(n_batch):
        c = y[n]
        for m in range(c_out):
            c[m, :] = b[m]
        _gemm_acc(w, _pixels(x, n, stride, p_size), c, p_size, K_BLOCK)


@njit(parallel=True, cache=True)
def transpose_samples(x, stride, out):
    """Writes out (N, P, C) = x (N, C, H, W) at every ``stride``-th row and column (P
    pixels), transposed per sample, a task a sample (its C x P values in L2): W x W squares
    (W channels x W pixels) transposed in registers (:func:`..layout._move_square`)."""
    n_batch, channels, p_size = x.shape[0], x.shape[1], out.shape[1]
    w = simd.width(out[0, 0])
    for n in prange(n_batch):
        src = _pixels(x, n, stride, p_size).reshape(channels * p_size)
        dst = out[n].reshape(p_size * channels)
        square = np.empty(w * w, dtype=x.dtype)
        for c0 in range(0, channels, w):
            for p0 in range(0, p_size, w):
                _move_square(src, c0 * p_size + p0, p_size, min(w, channels - c0),
                             min(w, p_size - p0), dst, p0 * channels + c0, channels, square)


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
            _gemm_acc(gy[n], xt[n], c, c_in, K_BLOCK)
    for m in prange(c_out):
        row = grad_w[m]
        row[:] = partial[0, m]
        for chunk in range(1, partial.shape[0]):
            row += partial[chunk, m]


def forward_pointwise(x, w, b, stride):
    """y (N, C_out, OH, OW) of x (N, C_in, H, W) and w (C_out, C_in, 1, 1) at ``stride``."""
    out_h, out_w = -(-x.shape[2] // stride), -(-x.shape[3] // stride)
    y = buffers.empty((x.shape[0], w.shape[0], out_h * out_w), x.dtype)
    conv2d_forward_pointwise(np.ascontiguousarray(x),
                             np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1])), b, stride,
                             y)
    return y.reshape(x.shape[0], w.shape[0], out_h, out_w)


def backward_pointwise(gy, x, w, stride, need_input_grad, need_bias_grad, grad_weight=None):
    """``(grad_xs or None, grad_w, grad_b or None)`` of :func:`forward_pointwise` at gy
    (N, C_out, OH, OW): grad_xs the gradient of x's sampled pixels (N, C_in, OH, OW; at
    stride 1, of x), which :func:`numbaconv.kernels.cpu.conv.backward_pointwise` places on
    x's grid; grad_w written into ``grad_weight`` (C-contiguous, w's shape) where given."""
    c_out, c_in = w.shape[0], w.shape[1]
    n_batch = gy.shape[0]
    gy = np.ascontiguousarray(gy)
    gy_flat = gy.reshape(n_batch, c_out, -1)
    grad_w = grad_weight
    if grad_w is None or not grad_w.flags.c_contiguous:
        grad_w = np.empty_like(w)
    xt = buffers.empty((n_batch, gy_flat.shape[2], c_in), x.dtype)
    transpose_samples(np.ascontiguousarray(x), stride, xt)
    per_chunk = -(-n_batch // WEIGHT_GRAD_CHUNKS)
    partial = buffers.empty((-(-n_batch // per_chunk), c_out, c_in), gy.dtype)
    conv2d_weight_grad_pointwise(gy_flat, xt, per_chunk, partial, grad_w.reshape(c_out, c_in))
    grad_b = channel_sums(gy_flat).astype(gy.dtype) if need_bias_grad else None
    grad = None
    if need_input_grad:
        grad = buffers.empty((n_batch, c_in, gy_flat.shape[2]), gy.dtype)
        conv2d_forward_pointwise(gy, np.ascontiguousarray(w.reshape(c_out, c_in).T),
                                 np.zeros(c_in, dtype=gy.dtype), 1, grad)
        grad = grad.reshape(n_batch, c_in, gy.shape[2], gy.shape[3])
    return grad, grad_w, grad_b
