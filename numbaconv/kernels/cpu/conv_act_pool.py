"""Numba CPU kernels: a stride-1 convolution, its activation and a 2x2 pool in one pass.

For the fused ``Conv2d -> Sigmoid|ReLU -> 2x2 pool`` stages of :mod:`numbaconv.layers.fusion`
whose convolution has unit stride. Unfused, the convolution copies its outputs from its
scratch block to ``z``, and the activation + pool pass then reads ``z`` back and rewrites it:
at LeNet's first layer, batch 256, that is 1.2 M values (4.8 MB) written, read and written
again, more than L2 holds. Here each parallel task pads the input rows of a block of output
rows of one sample into cache, computes the block into its scratch (the convolution's own
product, :func:`numbaconv.kernels.cpu.conv.block_sums`), writes it to ``z`` once (the backward
differentiates it), activates it there and pools it while it is in cache. Narrow images
(:func:`numbaconv.kernels.cpu.conv.use_lanes`, LeNet's second layer) take the same steps on
the interleaved-samples layout (:func:`_fused_lanes_kernel`).

A first stage's backward (no input gradient) whose weight gradient reads the gradient's rows
(LeNet's first layer) also takes one pass: :func:`conv_act_pool_weight_grad`; so does a
stage's backward on the interleaved layout (LeNet's second layer), weight and input gradient
from one interleaved copy of the gradient at z: :func:`conv_act_pool_backward_lanes`.

Results equal the unfused functions' bit for bit: the same sums in the same order, then the
same activation and pool functions (``tests/test_fusion.py``, ``tests/test_lenet_kernels.py``).
"""

import functools
import types

import numpy as np
from numba import njit, prange

from . import activation as act
from . import simd
from .conv import pad, use_column_side
from .conv.channels import use_channel_vectors
from .conv.columns import weight_grad_by_columns
from .conv.common import FAST, _grouped_weights, _sum_partials, _taps, _zero_partials
from .conv.flat import (
    TASKS,
    WEIGHT_GRAD_CHUNKS,
    _block_rows,
    block_sums,
    rows_sample_acc,
    weight_grad_from_rows,
)
from .conv.lanes import (
    LANES,
    _deinterleave,
    _interleave,
    input_grad_from_lanes,
    use_lanes,
    weight_grad_from_lanes,
)
from .conv.place import pad_rows
from .conv.tiles import _add_lane_sums, shifted_products_acc
from .jobs import INT, INTS, Job, array


@njit(inline="always")
def _rows_per_block(c_out_g, out_h, wp):
    """Output rows per block: as many as the convolution's scratch holds, an even number
    (whole pooling windows) unless one block takes them all."""
    rows = _block_rows(c_out_g, out_h, wp)
    return rows if rows >= out_h else max(2, rows - rows % 2)


def _compiled(activation, pool, kernel, kernel_suffix, job, job_suffix, fastmath=False):
    """(kernel, job) of one activation and pool pair, compiled: the parallel kernel named
    e.g. ``conv2d_sigmoid_avg_pool`` + ``kernel_suffix``, without a closure (it has no free
    variables: Numba's cache keys a function by its closure's pickled contents), and its job's
    function, ``_conv2d_sigmoid_avg_pool`` + ``job_suffix`` (with ``fastmath`` as given)."""
    name = f"conv2d_{act.ACTIVATION_NAMES[activation]}_{act.POOL_NAMES[pool]}_pool"
    job.__name__ = job.__qualname__ = f"_{name}{job_suffix}"
    kernel = types.FunctionType(kernel.__code__, globals(), f"{name}{kernel_suffix}")
    kernel.__qualname__ = kernel.__name__
    return njit(parallel=True, cache=True)(kernel), njit(cache=True, fastmath=fastmath)(job)


def _by_codes(factory):
    """(the (kernel, job function) pair ``factory`` compiles for each activation and pool
    pair, by their codes; the kernels alone, by their codes)."""
    pairs = {(activation, pool): factory(activation, pool)
             for activation in act.ACTIVATION_NAMES for pool in act.POOL_NAMES}
    return pairs, {codes: kernel for codes, (kernel, _) in pairs.items()}


def _fused_kernel(activation, pool):
    """The forward kernel of one activation and pool pair (codes as in
    :mod:`numbaconv.kernels.cpu.activation`; closure constants, so each pair compiles its own
    branches only), named e.g. ``conv2d_sigmoid_avg_pool_forward``."""
    def block(x, weights, b, chan, offset, top, left, wp, n, g, row0, n_rows, xs, out, z,
              y):
        """Rows row0:row0 + n_rows of sample n, group g: their input rows padded into ``xs``
        (1, C_in, >= their flat length), summed into ``out`` (C_out_g, rows * wp), copied to
        z, activated there and pooled into y."""
        c_out_g = weights.shape[0]
        c_in_g = chan[-1] + 1
        out_w = z.shape[3]
        # the rows the block's taps reach: its own and the kernel's extent below them
        pad_rows(x, n, g * c_in_g, c_in_g, top, left, row0, n_rows + offset[-1] // wp, wp,
                  xs)
        block_sums(xs, weights, b, chan, offset, 0, (n_rows - 1) * wp + out_w, 0, g, out)
        for m in range(c_out_g):
            co = g * c_out_g + m
            for r in range(n_rows):
                simd.copy_run(out[m], r * wp, z[n, co, row0 + r], 0, out_w)
            # activated where they lie in z, contiguous: no scratch columns, and in L1
            rows = z[n, co, row0:row0 + n_rows].reshape(n_rows * out_w)
            if activation == act.SIGMOID:
                act._sigmoid_in_place(rows)
            else:
                act._relu_in_place(rows)
            for r in range(0, n_rows - 1, 2):  # pooled while in cache
                top, bottom = z[n, co, row0 + r], z[n, co, row0 + r + 1]
                if pool == act.AVG:
                    act.avg2x2_row(top, bottom, y[n, co, (row0 + r) // 2])
                else:
                    act.max2x2_row(top, bottom, y[n, co, (row0 + r) // 2])

    def forward(x, w, b, top, left, wp, dilation_h, dilation_w, groups, out_h, out_w, job):
        n_batch, c_in = x.shape[0], x.shape[1]
        c_out, c_in_g, kh_size, kw_size = w.shape
        c_out_g = c_out // groups
        weights = _grouped_weights(w, groups)
        chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
        rows = _rows_per_block(c_out_g, out_h, wp)
        n_blocks = (out_h + rows - 1) // rows
        span = rows + offset[-1] // wp  # padded input rows of a block
        z = np.empty((n_batch, c_out, out_h, out_w), dtype=x.dtype)
        y = np.empty((n_batch, c_out, out_h // 2, out_w // 2), dtype=x.dtype)
        n_jobs = n_batch * groups * n_blocks
        n_tasks = min(n_jobs, TASKS)
        # one call of the block job per job (see numbaconv.kernels.cpu.jobs)
        for task in prange(n_tasks):  # one scratch block per task, as conv2d_forward
            xs = np.empty((1, c_in, span * wp), dtype=x.dtype)
            out = np.empty((c_out_g, rows * wp), dtype=x.dtype)
            for j in range(task * n_jobs // n_tasks, (task + 1) * n_jobs // n_tasks):
                row0 = np.int64(j % n_blocks * rows)
                g = np.int64(j // n_blocks % groups)
                job(x, weights[g], b, chan, offset, top, left, wp,
                    np.int64(j // (groups * n_blocks)), g, row0, min(rows, out_h - row0), xs,
                    out, z, y)
        return z, y

    return _compiled(activation, pool, forward, "_forward", block, "_block")


#: (activation, pool) -> (the fused convolution + activation + pool forward kernel, its block
#: job's function), and -> the kernel alone
_KERNELS, FUSED = _by_codes(_fused_kernel)


@functools.cache
def block_job(activation, pool, dtype) -> Job:
    """The block job of :data:`FUSED` ``[activation, pool]`` for arrays of ``dtype``."""
    a2, a3, a4 = array(dtype, 2), array(dtype, 3), array(dtype, 4)
    return Job(_KERNELS[activation, pool][1], (a4, a2, array(dtype, 1), INTS, INTS)
               + (INT,) * 7 + (a3, a2, a4, a4))


def _fused_lanes_kernel(activation, pool):
    """The forward kernel of one activation and pool pair on the interleaved-samples layout
    of :mod:`numbaconv.kernels.cpu.conv.lanes` (narrow images: LeNet's second layer), named
    e.g. ``conv2d_sigmoid_avg_pool_forward_lanes``, and its block job's function.

    As ``conv2d_forward_lanes``, each job sums LANES samples' outputs interleaved pixel by
    pixel; here it then activates them there and pools them, every pixel's LANES values a
    contiguous run (the pool's arithmetic along vectors), and writes z and y from there:
    unfused, the activation and pool pass reads z back, its windows across rows of 10."""
    def block(xp, weights, b, chan, offset, n0, g, z, y):
        """Samples n0:n0 + LANES, group g: z and y of them."""
        c_out_g = weights.shape[0]
        c_in_g = chan[-1] + 1
        hp, wp = xp.shape[2], xp.shape[3]
        out_h, out_w = z.shape[2], z.shape[3]
        pool_h, pool_w = out_h // 2, out_w // 2
        buf = np.zeros((c_in_g, hp * wp * LANES), dtype=xp.dtype)
        _interleave(xp, n0, g * c_in_g, c_in_g, buf)
        out = np.empty((c_out_g, out_h * out_w * LANES), dtype=xp.dtype)
        for m in range(c_out_g):  # the sums of conv2d_forward_lanes at stride 1
            out[m].fill(b[g * c_out_g + m])
        row = out_w * LANES
        for oh in range(out_h):
            shifted_products_acc(weights, buf, chan, offset, oh * wp * LANES, out, oh * row,
                                 row)
        if activation == act.SIGMOID:  # all lanes (the empty ones past the batch too)
            act._sigmoid_in_place(out.reshape(out.size))
        else:
            act._relu_in_place(out.reshape(out.size))
        pooled = np.empty((c_out_g, pool_h * pool_w * LANES), dtype=xp.dtype)
        zero = xp.dtype.type(0)
        quarter = xp.dtype.type(0.25)
        for m in range(c_out_g):
            src, dst = out[m], pooled[m]
            for oh in range(pool_h):
                for ow in range(pool_w):
                    t = (2 * oh * out_w + 2 * ow) * LANES  # the window's top left
                    d = (oh * pool_w + ow) * LANES
                    if pool == act.AVG:  # summed in the average pool's order
                        for lane in range(LANES):
                            dst[d + lane] = ((((zero + src[t + lane]) + src[t + LANES + lane])
                                              + src[t + row + lane])
                                             + src[t + row + LANES + lane]) * quarter
                    else:  # the max pool's rule: the first maximum wins, a NaN always
                        for lane in range(LANES):
                            best = src[t + lane]
                            for value in (src[t + LANES + lane], src[t + row + lane],
                                          src[t + row + LANES + lane]):
                                best = value if (value > best) | (value != value) else best
                            dst[d + lane] = best
        _deinterleave(out, n0, g * c_out_g, c_out_g, z)
        _deinterleave(pooled, n0, g * c_out_g, c_out_g, y)

    def forward(xp, w, b, dilation_h, dilation_w, groups, out_h, out_w, job):
        n_batch, c_in, hp, wp = xp.shape
        c_out, c_in_g, kh_size, kw_size = w.shape
        weights = _grouped_weights(w, groups)
        chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
        offset *= LANES
        n_blocks = (n_batch + LANES - 1) // LANES
        z = np.empty((n_batch, c_out, out_h, out_w), dtype=xp.dtype)
        y = np.empty((n_batch, c_out, out_h // 2, out_w // 2), dtype=xp.dtype)
        for job_index in prange(n_blocks * groups):  # a block of LANES samples of one group
            g = np.int64(job_index % groups)
            job(xp, weights[g], b, chan, offset, np.int64(job_index // groups * LANES), g, z,
                y)
        return z, y

    return _compiled(activation, pool, forward, "_forward_lanes", block, "_lanes_block")


#: (activation, pool) -> (the fused forward kernel on the interleaved layout, its job's
#: function), and -> the kernel alone
_LANES_KERNELS, FUSED_LANES = _by_codes(_fused_lanes_kernel)


@functools.cache
def lanes_job(activation, pool, dtype) -> Job:
    """The block job of :data:`FUSED_LANES` ``[activation, pool]`` for arrays of ``dtype``."""
    a4 = array(dtype, 4)
    return Job(_LANES_KERNELS[activation, pool][1],
               (a4, array(dtype, 2), array(dtype, 1), INTS, INTS, INT, INT, a4, a4))


def applies(x_shape, padded_shape, weight_shape, itemsize, stride, groups, out_h,
            out_w) -> bool:
    """Whether :func:`conv_act_pool_forward` serves a convolution of x (unpadded): unit
    stride, on the padded-width kernels or, where
    :func:`numbaconv.kernels.cpu.conv.use_lanes` says so, the interleaved-samples ones where
    the unfused forward takes those too (not the column or output-channel kernels, which
    serve many channels on small maps better)."""
    if tuple(stride) != (1, 1):
        return False
    if not use_lanes(padded_shape, itemsize, 1, groups, out_w):
        return True
    output_shape = (x_shape[0], weight_shape[0], out_h, out_w)
    return not (use_column_side(x_shape, weight_shape, groups, (1, 1), output_shape)
                or use_channel_vectors(weight_shape, groups, (1, 1), out_h, out_w,
                                       padded_shape[3], itemsize))


def conv_act_pool_forward(x, w, b, padding, dilation, groups, out_h, out_w, activation, pool):
    """(z, y): z (N, C_out, out_h, out_w) = activation(conv2d(x, w, b)) at stride 1, x
    zero-padded by ``padding`` ((top, bottom), (left, right)), and y (N, C_out, out_h // 2,
    out_w // 2) its 2x2 pool; all C-contiguous, where :func:`applies` says so."""
    (top, bottom), (left, right) = padding
    padded_shape = (x.shape[0], x.shape[1], top + x.shape[2] + bottom,
                    left + x.shape[3] + right)
    if use_lanes(padded_shape, x.itemsize, 1, groups, out_w):
        xp, _ = pad(x, padding)
        return FUSED_LANES[activation, pool](xp, w, b, *dilation, groups, out_h, out_w,
                                             lanes_job(activation, pool, x.dtype))
    return FUSED[activation, pool](x, w, b, top, left, padded_shape[3], *dilation, groups,
                                   out_h, out_w, block_job(activation, pool, x.dtype))


# The backward of a first stage (no input gradient), where its convolution's weight gradient
# reads the gradient's rows where they are (conv.flat.conv2d_weight_grad_rows; LeNet's first
# layer). Unfused, the activation and pool backward writes the gradient at z (at LeNet's
# first layer, batch 256: 4.8 MB) and the weight gradient reads it back: here each task
# computes one sample's gradient at z into an L1 scratch, by the unfused functions, and
# takes its weight gradient from there.

def _fused_weight_grad_kernel(activation, pool):
    """The weight-gradient kernel of one activation and pool pair (codes as in
    :mod:`numbaconv.kernels.cpu.activation`), named e.g.
    ``conv2d_sigmoid_avg_pool_weight_grad``, and its chunk job's function."""
    def chunk(grad_y, z, x, chan, offset, top, left, hp, wp, n_start, n_stop, partial,
              partial_bias):
        """partial (C_out, K) += the weight gradient of samples n_start:n_stop and
        partial_bias (C_out,) += their bias gradient, from grad_y at the pool's output; each
        sample's input x (unpadded) padded into a scratch (top rows, left columns, hp x wp)."""
        c_out, out_h, out_w = z.shape[1], z.shape[2], z.shape[3]
        c_in = x.shape[1]
        xs = np.empty((1, c_in, hp * wp), dtype=x.dtype)
        grad = np.empty((c_out, out_h, out_w), dtype=z.dtype)
        flat = grad.reshape(c_out * out_h * out_w)
        rows = grad.reshape(c_out, out_h * out_w)
        acc = np.zeros((c_out, chan.shape[0] * simd.width(flat)), dtype=z.dtype)
        for n in range(n_start, n_stop):
            if pool == act.AVG:
                act._avg2x2_backward(grad_y[n], grad)
            else:
                act._max2x2_backward(z[n], grad_y[n], grad)
            if activation == act.SIGMOID:
                act._times_sigmoid_derivative(flat, z[n].reshape(flat.size))
            else:
                act._times_relu_derivative(flat, z[n].reshape(flat.size))
            pad_rows(x, n, 0, c_in, top, left, 0, hp, wp, xs)
            rows_sample_acc(rows, xs[0], chan, offset, out_h, out_w, wp, acc, partial_bias)
        _add_lane_sums(acc, partial)

    def weight_grad(grad_y, z, x, top, left, hp, wp, kh_size, kw_size, dilation_h,
                    dilation_w, job):
        n_batch, c_in = x.shape[0], x.shape[1]
        c_out = z.shape[1]
        chan, offset = _taps(c_in, kh_size, kw_size, dilation_h, dilation_w, wp)
        n_chunks = min(n_batch, WEIGHT_GRAD_CHUNKS)
        partial, partial_bias = _zero_partials(n_chunks, 1, c_out, chan.shape[0], x)
        for part in prange(n_chunks):  # as conv.flat.conv2d_weight_grad_rows, one group
            job(grad_y, z, x, chan, offset, top, left, hp, wp, part * n_batch // n_chunks,
                (part + 1) * n_batch // n_chunks, partial[part, 0], partial_bias[part, 0, :, 0])
        return _sum_partials(partial, partial_bias, c_in, kh_size, kw_size)

    return _compiled(activation, pool, weight_grad, "_weight_grad", chunk,
                     "_weight_grad_chunk", fastmath=FAST)


#: (activation, pool) -> (the fused stage's weight-gradient kernel, its chunk job's
#: function), and -> the kernel alone
_WEIGHT_GRAD_KERNELS, FUSED_WEIGHT_GRAD = _by_codes(_fused_weight_grad_kernel)


@functools.cache
def weight_grad_job(activation, pool, dtype) -> Job:
    """The chunk job of :data:`FUSED_WEIGHT_GRAD` ``[activation, pool]`` for arrays of
    ``dtype``."""
    a4 = array(dtype, 4)
    return Job(_WEIGHT_GRAD_KERNELS[activation, pool][1],
               (a4, a4, a4, INTS, INTS) + (INT,) * 6 + (array(dtype, 2), array(dtype, 1, "A")))


def weight_grad_applies(padded_shape, weight_shape, itemsize, stride, groups, out_h,
                        out_w) -> bool:
    """Whether :func:`conv_act_pool_weight_grad` serves a stage's backward without an input
    gradient: unit stride, one group, on the padded-width kernels (as :func:`applies`), and
    where ``conv.weight_grad`` takes :func:`numbaconv.kernels.cpu.conv.conv2d_weight_grad_rows`
    (its choices before that one: not the output-channel kernels, nor the column ones)."""
    return (groups == 1 and tuple(stride) == (1, 1)
            and not use_lanes(padded_shape, itemsize, 1, groups, out_w)
            and not use_channel_vectors(weight_shape, 1, stride, out_h, out_w,
                                        padded_shape[3], itemsize)
            and not weight_grad_by_columns(weight_shape, 1, itemsize,
                                           min(padded_shape[0], WEIGHT_GRAD_CHUNKS))
            and weight_grad_from_rows(weight_shape, 1, 1))


def conv_act_pool_weight_grad(grad_y, z, x, padding, kernel, dilation, activation, pool):
    """(grad_w (C_out, C_in, KH, KW), grad_b (C_out,)) of a fused stage from grad_y (N, C_out,
    out_h // 2, out_w // 2) at its output, its activated convolution z (N, C_out, out_h,
    out_w) and finite input x, zero-padded by ``padding`` ((top, bottom), (left, right)), all
    C-contiguous, where :func:`weight_grad_applies` says so: ``conv.weight_grad`` of
    ``activation.act_pool_backward``'s gradient bit for bit, without that gradient written
    out."""
    (top, bottom), (left, right) = padding
    return FUSED_WEIGHT_GRAD[activation, pool](
        grad_y, z, x, top, left, top + x.shape[2] + bottom, left + x.shape[3] + right,
        *kernel, *dilation, weight_grad_job(activation, pool, x.dtype))


# The backward of a stage on the interleaved-samples layout (LeNet's second layer). Unfused,
# the activation and pool backward writes the gradient at z (at LeNet's second layer, batch
# 256: 1.6 MB) in a parallel pass of its own, and the weight and input gradients each read it
# back and interleave it, in a parallel pass each: here each job computes its block's
# gradient at z by the unfused functions, interleaves it once and takes both gradients from
# that copy, by the unfused kernels' own code.

@njit(inline="always")
def _act_pool_backward_planes(activated, pooled, grad, activation, pool):
    """grad (P, H, W) = the gradient at z of planes ``activated`` (P, H, W) from their pool's
    gradient ``pooled`` (P, H // 2, W // 2), as activation.act_pool_backward computes it
    (activation and pool codes as in :mod:`numbaconv.kernels.cpu.activation`; a module
    function, not a closure: Numba's cache keys a job by its closure's pickled contents, and a
    dispatcher there pickles differently in every process)."""
    if pool == act.AVG:
        act._avg2x2_backward(pooled, grad)
    else:
        act._max2x2_backward(activated, pooled, grad)
    if activation == act.SIGMOID:
        act._times_sigmoid_derivative(grad.reshape(-1), activated.reshape(-1))
    else:
        act._times_relu_derivative(grad.reshape(-1), activated.reshape(-1))


def _fused_backward_lanes_kernel(activation, pool):
    """The backward kernel of one activation and pool pair on the interleaved layout, named
    e.g. ``conv2d_sigmoid_avg_pool_backward_lanes``, and its block job's function."""
    def block(grad_y, z, xp, wt, chan, offset, stride_h, dilation_h, dilation_w, n0, g,
              need_input_grad, partial, partial_bias, grad_xp):
        """Samples n0:n0 + LANES, group g: partial (C_out_g, K) += their weight gradient,
        partial_bias (C_out_g,) = their bias gradient and, with need_input_grad, their
        gradient in grad_xp (padded), from grad_y at the pool's output."""
        c_in_g, c_out_g = wt.shape[2], wt.shape[3]
        c0 = g * c_out_g
        wp = xp.shape[3]
        out_w = z.shape[3]
        samples = min(LANES, z.shape[0] - n0)
        grad_z = np.empty((samples, c_out_g, z.shape[2], out_w), dtype=z.dtype)
        if c_out_g == z.shape[1]:  # one group: the block's planes in one call
            planes = samples * c_out_g
            _act_pool_backward_planes(
                z[n0:n0 + samples].reshape(planes, z.shape[2], out_w),
                grad_y[n0:n0 + samples].reshape(planes, grad_y.shape[2], grad_y.shape[3]),
                grad_z.reshape(planes, z.shape[2], out_w), activation, pool)
        else:
            for i in range(samples):
                _act_pool_backward_planes(z[n0 + i, c0:c0 + c_out_g],
                                          grad_y[n0 + i, c0:c0 + c_out_g], grad_z[i],
                                          activation, pool)
        grads = np.zeros((c_out_g, grad_z.shape[2] * out_w * LANES), dtype=z.dtype)
        _interleave(grad_z, 0, 0, c_out_g, grads)
        buf = np.zeros((c_in_g, xp.shape[2] * wp * LANES), dtype=xp.dtype)
        _interleave(xp, n0, g * c_in_g, c_in_g, buf)
        weight_grad_from_lanes(grads, buf, chan, offset, stride_h * wp * LANES, out_w,
                               partial, partial_bias)
        if need_input_grad:
            input_grad_from_lanes(grads, wt, stride_h, dilation_h, dilation_w, out_w, n0, g,
                                  grad_xp)

    def backward(grad_y, z, xp, wt, stride_h, dilation_h, dilation_w, need_input_grad, job):
        n_batch, c_in, hp, wp = xp.shape
        groups, kh_size, kw_size, c_in_g, c_out_g = wt.shape
        chan, offset = _taps(c_in_g, kh_size, kw_size, dilation_h, dilation_w, wp)
        offset *= LANES
        n_blocks = (n_batch + LANES - 1) // LANES
        partial, partial_bias = _zero_partials(n_blocks, groups, groups * c_out_g,
                                               chan.shape[0], xp)
        grad_xp = np.empty((n_batch if need_input_grad else 0, c_in, hp, wp), dtype=xp.dtype)
        for block in prange(n_blocks * groups):  # a block of LANES samples of one group
            blk, g = np.int64(block // groups), np.int64(block % groups)
            job(grad_y, z, xp, wt[g], chan, offset, stride_h, dilation_h, dilation_w,
                blk * LANES, g, need_input_grad, partial[blk, g],
                partial_bias[blk, 0, g * c_out_g:(g + 1) * c_out_g, 0], grad_xp)
        grad_w, grad_b = _sum_partials(partial, partial_bias, c_in_g, kh_size, kw_size)
        return grad_xp, grad_w, grad_b

    return _compiled(activation, pool, backward, "_backward_lanes", block,
                     "_backward_lanes_block", fastmath=FAST)


#: (activation, pool) -> (the fused backward kernel on the interleaved layout, its job's
#: function), and -> the kernel alone
_BACKWARD_LANES_KERNELS, FUSED_BACKWARD_LANES = _by_codes(_fused_backward_lanes_kernel)


@functools.cache
def backward_lanes_job(activation, pool, dtype) -> Job:
    """The block job of :data:`FUSED_BACKWARD_LANES` ``[activation, pool]`` for arrays of
    ``dtype``."""
    a4 = array(dtype, 4)
    return Job(_BACKWARD_LANES_KERNELS[activation, pool][1],
               (a4, a4, a4, a4, INTS, INTS) + (INT,) * 6
               + (array(dtype, 2), array(dtype, 1, "A"), a4))


def backward_lanes_applies(x_shape, padded_shape, weight_shape, itemsize, stride, groups,
                           out_h, out_w) -> bool:
    """Whether :func:`conv_act_pool_backward_lanes` serves a stage's backward: where the
    unfused backward takes the interleaved-samples kernels for the weight gradient and the
    input gradient (not the column side nor the output-channel kernels)."""
    output_shape = (x_shape[0], weight_shape[0], out_h, out_w)
    return (use_lanes(padded_shape, itemsize, stride[1], groups, out_w)
            and not use_column_side(x_shape, weight_shape, groups, stride, output_shape)
            and not use_channel_vectors(weight_shape, groups, stride, out_h, out_w,
                                        padded_shape[3], itemsize))


def conv_act_pool_backward_lanes(grad_y, z, x, w, padding, stride, dilation, groups,
                                 need_input_grad, activation, pool):
    """(grad_xp (N, C_in, Hp, Wp) of the padded input, or an empty one without
    ``need_input_grad``; grad_w; grad_b) of a fused stage from grad_y (N, C_out, out_h // 2,
    out_w // 2) at its output, its activated convolution z and finite input x (unpadded;
    ``padding`` ((top, bottom), (left, right))), all C-contiguous, where
    :func:`backward_lanes_applies` says so: bit for bit the unfused
    ``activation.act_pool_backward`` and the convolution's backward on that layout."""
    xp, _ = pad(x, padding)
    c_out, c_in_g, kh, kw = w.shape
    wt = np.ascontiguousarray(w.reshape(groups, c_out // groups, c_in_g, kh, kw)
                              .transpose(0, 3, 4, 2, 1))
    return FUSED_BACKWARD_LANES[activation, pool](
        grad_y, z, xp, wt, stride[0], *dilation, int(need_input_grad),
        backward_lanes_job(activation, pool, x.dtype))
