"""CUDA kernels for everything a training step needs besides convolution and pooling.

Host functions take numba CUDA device arrays (C-contiguous, float32 or float64, validated by
:mod:`numbaconv.functional`) and return device arrays of the input dtype, allocated and
launched through :mod:`~numbaconv.kernels.cuda.steps` (a step's buffers and prepared launches),
except the optimizer steps and the accumulators, which update in place. Activations are named
``None``/``'identity'``, ``'relu'``, ``'sigmoid'``, ``'tanh'``; their backward passes read the
activation's *output* ``y`` (as PyTorch's do), so a layer only keeps its output. Reductions
are atomic-free (a fixed order), hence deterministic.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

from . import config, steps

if config.SIMULATOR:
    from .simulator import share_arrays_atomically

    share_arrays_atomically()

ACTIVATIONS = {None: 0, "identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}


def activation_code(activation) -> int:
    """Integer code the kernels use for an activation name."""
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{sorted(k for k in ACTIVATIONS if k)} or None") from None


# ---------------------------------------------------------------------------------------------
# Device functions shared by the kernels here and in conv.py
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _activate(v, act, one):
    """``act(v)`` for an activation code; ``one`` is 1 in ``v``'s dtype. NaN propagates."""
    if act == 1:
        zero = one - one
        if v < zero:
            return zero
        return v
    if act == 2:
        return one / (one + math.exp(-v))
    if act == 3:
        return math.tanh(v)
    return v


@cuda.jit(device=True)
def _activate_grad(g, y, act, one):
    """Gradient at the activation's input from ``g`` (at its output) and its output ``y``.

    Same formulas and operation order as PyTorch's ``threshold_backward`` (ReLU),
    ``sigmoid_backward`` ``g*(1-y)*y`` and ``tanh_backward`` ``g*(1-y*y)``.
    """
    if act == 1:
        zero = one - one
        if y <= zero:
            return zero
        return g
    if act == 2:
        return g * (one - y) * y
    if act == 3:
        return g * (one - y * y)
    return g


@cuda.jit(device=True)
def _softmax_xent_row(z, i, label, grad, scale, divide):
    """Softmax cross-entropy of row i of z (N, K) against ``label``; returns the row's loss
    logsumexp(z[i]) - z[i, label] (shifted by the row maximum for stability) and writes its
    gradient grad[i, j] = softmax(z[i])[j] - [j == label], divided by ``scale`` when
    ``divide``, else multiplied by it (``scale`` in grad's dtype)."""
    n_cls = z.shape[1]
    one = grad.dtype.type(1)
    peak = z[i, 0]
    for j in range(1, n_cls):
        if z[i, j] > peak:
            peak = z[i, j]
    total = one - one
    for j in range(n_cls):
        total += math.exp(z[i, j] - peak)
    loss = peak + math.log(total) - z[i, label]
    for j in range(n_cls):
        p = math.exp(z[i, j] - peak) / total
        if j == label:
            p -= one
        if divide:
            grad[i, j] = p / scale
        else:
            grad[i, j] = p * scale
    return loss


@cuda.jit(device=True)
def _xent_row_loss(z, i, label):
    """logsumexp(z[i]) - z[i, label] of z (N, K), shifted by the row maximum, in z's dtype."""
    n_cls = z.shape[1]
    peak = z[i, 0]
    for j in range(1, n_cls):
        if z[i, j] > peak:
            peak = z[i, j]
    total = peak - peak
    for j in range(n_cls):
        total += math.exp(z[i, j] - peak)
    return peak + math.log(total) - z[i, label]


@cuda.jit(device=True)
def _first_argmax(z, i):
    """numpy's argmax of row i of z (N, K): the first maximum, a NaN counting as the largest."""
    best = 0
    for j in range(1, z.shape[1]):
        if math.isnan(z[i, best]):
            break
        if z[i, j] > z[i, best] or math.isnan(z[i, j]):
            best = j
    return best


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@cuda.jit
def _bias_act_forward_kernel(x, bias, y, has_bias, act):
    """y[n, c, l] = act(x[n, c, l] + bias[c]); x, y (N, C, L), bias (C,)."""
    _, n_chan, length = x.shape
    one = y.dtype.type(1)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        pos = i % length
        t = i // length
        c = t % n_chan
        n = t // n_chan
        v = x[n, c, pos]
        if has_bias:
            v += bias[c]
        y[n, c, pos] = _activate(v, act, one)


@cuda.jit
def _act_backward_kernel(g, y, out, act):
    """out[i] = g[i] * act'(.) read from the output y[i]; all flat (size,)."""
    one = out.dtype.type(1)
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        out[i] = _activate_grad(g[i], y[i], act, one)


@cuda.jit
def _channel_partial_kernel(g, partial, chunk):
    """partial[k, c] = sum of g[n, c, l] over the k-th chunk of the flat (n, l) range.

    g (N, C, L), partial (K, C); ``chunk`` terms per chunk, in increasing (n, l) order.
    """
    n_batch, n_chan, length = g.shape
    reduced = n_batch * length
    chunks = partial.shape[0]
    for i in range(cuda.grid(1), chunks * n_chan, cuda.gridsize(1)):
        c = i % n_chan
        k = i // n_chan
        acc = partial.dtype.type(0)
        for r in range(k * chunk, min(reduced, (k + 1) * chunk)):
            acc += g[r // length, c, r % length]
        partial[k, c] = acc


@cuda.jit
def _sum_chunks_kernel(partial, out, scale):
    """out[m] = scale * sum over k of partial[k, m], k in increasing order; partial (K, M)."""
    chunks, width = partial.shape
    for m in range(cuda.grid(1), width, cuda.gridsize(1)):
        acc = partial.dtype.type(0)
        for k in range(chunks):
            acc += partial[k, m]
        out[m] = acc * scale


@cuda.jit
def _xent_grad_kernel(z, labels, grad, n_rows):
    """The mean softmax cross-entropy's gradient, one thread per row of z (N, K):
    grad[i, j] = (softmax(z[i])[j] - [j == labels[i]]) / n_rows; a NaN row for a label
    outside [0, K)."""
    for i in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        label = labels[i]
        if label < 0 or label >= z.shape[1]:
            for j in range(z.shape[1]):
                grad[i, j] = math.nan
        else:
            _softmax_xent_row(z, i, label, grad, n_rows, True)


@functools.cache
def _row_sums_kernels():
    """Kernels of one block that reduce over the rows of z (N, K) in a fixed order (each
    thread a strided subset in float64, then thread 0 the threads' sums in order): exact
    enough and deterministic for a batch's logits, in one launch."""
    threads = config.THREADS_PER_BLOCK  # a closure constant: shared array shapes are literal

    @cuda.jit(device=True)
    def total(shared, t, value):
        shared[t] = value
        cuda.syncthreads()
        if t == 0:
            for j in range(1, threads):
                value += shared[j]
        return value

    @cuda.jit
    def cross_entropy_mean(z, labels, out):
        """out[()] = mean over rows of logsumexp(z[i]) - z[i, labels[i]] (float64; the rows'
        losses in z's dtype); NaN for a label outside [0, K)."""
        shared = cuda.shared.array(threads, numba.float64)
        t = cuda.threadIdx.x
        n_rows, n_cls = z.shape
        loss = 0.0
        for i in range(t, n_rows, threads):
            label = labels[i]
            if label < 0 or label >= n_cls:
                loss += math.nan
            else:
                loss += float(_xent_row_loss(z, i, label))
        loss = total(shared, t, loss)
        if t == 0:
            out[()] = loss / n_rows

    @cuda.jit
    def correct_count(z, labels, out):
        """out[()] = rows of z whose first maximum (NaN counts as largest) is the label."""
        shared = cuda.shared.array(threads, numba.float64)
        t = cuda.threadIdx.x
        hits = 0.0
        for i in range(t, z.shape[0], threads):
            if _first_argmax(z, i) == labels[i]:
                hits += 1.0
        hits = total(shared, t, hits)
        if t == 0:
            out[()] = numba.int64(hits)

    @cuda.jit
    def nonfinite_count(flat, out):
        """out[()] = elements of flat (n,) that are NaN or infinite."""
        shared = cuda.shared.array(threads, numba.float64)
        t = cuda.threadIdx.x
        bad = 0.0
        for i in range(t, flat.shape[0], threads):
            v = flat[i]
            if not v - v == 0:  # inf - inf and NaN - NaN are NaN
                bad += 1.0
        bad = total(shared, t, bad)
        if t == 0:
            out[()] = numba.int64(bad)

    return cross_entropy_mean, correct_count, nonfinite_count


@cuda.jit
def _accumulate_kernel(totals, index, value, scale):
    """totals[index] += float64(value[()]) * scale: one thread."""
    if cuda.grid(1) == 0:
        totals[index] += float(value[()]) * scale


@cuda.jit
def _gather_rows_kernel(src_x, src_y, order, dst_x, dst_y, start):
    """dst_x[r, f] = src_x[order[start + r], f] and dst_y[r] = src_y[order[start + r]]:
    a batch's rows through an epoch's order. src_x (N, F), dst_x (B, F)."""
    rows, feats = dst_x.shape
    for i in range(cuda.grid(1), rows * feats, cuda.gridsize(1)):
        f = i % feats
        r = i // feats
        j = order[start + r]
        dst_x[r, f] = src_x[j, f]
        if f == 0:
            dst_y[r] = src_y[j]


@cuda.jit
def _dropout_kernel(x, keep, scale, y, mask):
    """mask[i] = scale where keep[i] else 0, y[i] = x[i] * mask[i]; all flat (size,)."""
    zero = y.dtype.type(0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        m = scale if keep[i] else zero
        mask[i] = m
        y[i] = x[i] * m


@cuda.jit
def _binary_kernel(a, b, out, multiply):
    """out[i] = a[i] * b[i] when ``multiply``, else a[i] + b[i]; all flat (size,)."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] * b[i] if multiply else a[i] + b[i]


@cuda.jit
def _channels_kernel(part, whole, offset, into_whole):
    """Between part (N, C_part, L) and channels offset.. of whole (N, C, L): whole from part
    when ``into_whole`` (concatenation), else part from whole (its inverse)."""
    _, c_part, length = part.shape
    for i in range(cuda.grid(1), part.size, cuda.gridsize(1)):
        pos = i % length
        t = i // length
        c = t % c_part
        n = t // c_part
        if into_whole:
            whole[n, offset + c, pos] = part[n, c, pos]
        else:
            part[n, c, pos] = whole[n, offset + c, pos]


@cuda.jit
def _act_pool2x2_backward_kernel(g, z, grad_z, act, is_max):
    """The gradient at a fused stage's convolution output from g (P, H // 2, W // 2) at its
    2x2 pool's output and z (P, H, W), the activated convolution output: the pool's share
    (a quarter of the window's gradient, or all of it for the window's maximum: the first
    one, a NaN always winning), times the activation's derivative read from z. A last odd
    row or column belongs to no window: share 0."""
    _, height, width = z.shape
    _, out_h, out_w = g.shape
    zero = grad_z.dtype.type(0)
    one = grad_z.dtype.type(1)
    quarter = grad_z.dtype.type(0.25)
    for i in range(cuda.grid(1), z.size, cuda.gridsize(1)):
        w = i % width
        t = i // width
        h = t % height
        p = t // height
        oh = h // 2
        ow = w // 2
        share = zero
        if oh < out_h and ow < out_w:
            if is_max:
                h0 = 2 * oh
                w0 = 2 * ow
                best = z[p, h0, w0]
                pos = 0
                for k in range(1, 4):
                    value = z[p, h0 + k // 2, w0 + k % 2]
                    if value > best or value != value:
                        best = value
                        pos = k
                if pos == (h - h0) * 2 + (w - w0):
                    share = zero + g[p, oh, ow]
            else:
                share = g[p, oh, ow] * quarter
        grad_z[p, h, w] = _activate_grad(share, z[p, h, w], act, one)


@cuda.jit
def _sgd_kernel(p, g, buf, lr, momentum, one_minus_dampening, weight_decay, has_momentum,
                first, damped, nesterov):
    """In-place SGD as ``torch.optim.SGD`` (and :class:`numbaconv.optim.SGD`); all arrays flat
    (size,). The momentum buffer starts as the first step's gradient (``first``)."""
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        d = g[i]
        if weight_decay != 0:
            d = d + weight_decay * p[i]
        if has_momentum:
            if first:
                b = d
            elif damped:
                b = buf[i] * momentum + d * one_minus_dampening
            else:
                b = buf[i] * momentum + d
            buf[i] = b
            if nesterov:
                d = d + momentum * b
            else:
                d = b
        p[i] = p[i] + (-lr) * d


@cuda.jit
def _adam_kernel(p, g, m, v, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
                 decay, lr, beta1_64, beta2_64, decoupled, step):
    """In-place Adam/AdamW as ``torch.optim.Adam``'s single-tensor path; arrays flat (size,).
    ``step`` (1-based) is the launch's last argument, so that one prepared launch serves every
    step: the bias corrections are computed here in float64 (``lr``, ``beta1_64`` and
    ``beta2_64`` are float64), then rounded to the parameters' dtype as on the host."""
    half = p.dtype.type(0.5)
    one = p.dtype.type(1)
    bias_correction1 = 1.0 - math.pow(beta1_64, float(step))
    step_size = p.dtype.type(lr / bias_correction1)
    bias_correction2_sqrt = p.dtype.type(math.sqrt(1.0 - math.pow(beta2_64, float(step))))
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i]
        if decoupled:
            p[i] = p[i] * decay
        elif weight_decay != 0:
            gi = gi + weight_decay * p[i]
        mi = m[i]
        if one_minus_beta1 < half:  # torch.lerp's two branches
            mi = mi + one_minus_beta1 * (gi - mi)
        else:
            mi = gi - (gi - mi) * (one - one_minus_beta1)
        m[i] = mi
        vi = v[i] * beta2 + one_minus_beta2 * gi * gi
        v[i] = vi
        denom = math.sqrt(vi) / bias_correction2_sqrt + eps
        p[i] = p[i] + (-step_size) * (mi / denom)


@functools.cache
def _gemm_kernel(dtype_name: str):
    """The tiled shared-memory matrix-product kernel for one dtype (shared arrays need one)."""
    elem = numba.from_dtype(np.dtype(dtype_name))
    tile = config.TILE
    padded = tile + 1  # a closure constant: shared array shapes must be literal

    @cuda.jit
    def gemm(a, b, bias, c, trans_a, trans_b, has_bias, act):
        """c = act(op(a) @ op(b) + bias[None, :]); op(a) (M, D), op(b) (D, N), c (M, N).

        op(a) = a.T when trans_a (a is then (D, M)); likewise b. Each block computes
        TILE x TILE tiles of c, grid-stride over tiles, staging TILE x TILE slices of op(a)
        and op(b) in shared memory; transposed operands are read along their rows so that
        global loads stay coalesced (the +1 column keeps the transposed stores conflict-free).
        """
        sa = cuda.shared.array((tile, padded), elem)
        sb = cuda.shared.array((tile, padded), elem)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        rows, cols = c.shape
        depth = a.shape[0] if trans_a else a.shape[1]
        zero = c.dtype.type(0)
        one = c.dtype.type(1)
        tiles_c = (cols + tile - 1) // tile
        n_tiles = ((rows + tile - 1) // tile) * tiles_c
        for t in range(cuda.blockIdx.x, n_tiles, cuda.gridDim.x):
            row0 = (t // tiles_c) * tile
            col0 = (t % tiles_c) * tile
            acc = zero
            for k0 in range(0, depth, tile):
                # sa[r, k] = op(a)[row0 + r, k0 + k]
                if trans_a:
                    r = row0 + tx
                    k = k0 + ty
                    sa[tx, ty] = a[k, r] if r < rows and k < depth else zero
                else:
                    r = row0 + ty
                    k = k0 + tx
                    sa[ty, tx] = a[r, k] if r < rows and k < depth else zero
                # sb[k, j] = op(b)[k0 + k, col0 + j]
                if trans_b:
                    j = col0 + ty
                    k = k0 + tx
                    sb[tx, ty] = b[j, k] if j < cols and k < depth else zero
                else:
                    j = col0 + tx
                    k = k0 + ty
                    sb[ty, tx] = b[k, j] if j < cols and k < depth else zero
                cuda.syncthreads()
                for kk in range(tile):
                    acc += sa[ty, kk] * sb[kk, tx]
                cuda.syncthreads()
            r = row0 + ty
            j = col0 + tx
            if r < rows and j < cols:
                if has_bias:
                    acc += bias[j]
                c[r, j] = _activate(acc, act, one)

    return gemm


# ---------------------------------------------------------------------------------------------
# Host helpers used here and by conv.py / pool.py
# ---------------------------------------------------------------------------------------------

def _launch(kernel, total, *args, start=None):
    """Launch a one-dimensional grid-stride kernel over ``total`` items (through the step)."""
    steps.launch(kernel, config.blocks_for(total), config.THREADS_PER_BLOCK, *args, start=start)


@functools.cache
def _placeholder_cached(dtype_name: str):
    return cuda.to_device(np.zeros(1, dtype=dtype_name))


def _placeholder(dtype):
    """A one-element device array standing in for an absent optional argument (bias)."""
    return _placeholder_cached(np.dtype(dtype).name)


def _gemm_grid(rows: int, cols: int) -> tuple[int, tuple[int, int]]:
    """``(blocks, (TILE, TILE))`` of a :func:`_gemm_kernel` launch for a (rows, cols) product:
    a block per TILE x TILE tile of it, at most MAX_BLOCKS (the kernel grid-strides)."""
    tile = config.TILE
    n_tiles = -(-rows // tile) * -(-cols // tile)
    return max(1, min(config.MAX_BLOCKS, n_tiles)), (tile, tile)


def _flat(array):
    return array.reshape(array.size)


def _channels_view(array):
    """A (N, C, ...) device array as (N, C, L): one row of L values per (n, c), a view."""
    n_batch, chans = array.shape[:2]
    return array.reshape(n_batch, chans, array.size // max(1, n_batch * chans))


def sum_over_batch_and_space(g3, out=None):
    """``(C,)`` device array (``out`` when given): sum of ``g3`` (N, C, L) over N and L, in a
    fixed order."""
    n_batch, n_chan, length = g3.shape
    reduced = n_batch * length
    chunks, chunk = config.chunking(n_chan, reduced)
    partial = steps.empty((chunks, n_chan), g3.dtype)
    _launch(_channel_partial_kernel, chunks * n_chan, g3, partial, chunk)
    if out is None:
        out = steps.empty(n_chan, g3.dtype)
    _launch(_sum_chunks_kernel, n_chan, partial, out, g3.dtype.type(1))
    return out


def activation_backward_into(grad_y, y, activation):
    """``grad_y * act'(.)`` as a new device array; ``grad_y`` itself for the identity."""
    act = activation_code(activation)
    if act == 0:
        return grad_y
    if y is None:
        raise ValueError(f"the backward of activation {activation!r} needs its output y")
    out = steps.empty(grad_y.shape, grad_y.dtype)
    _launch(_act_backward_kernel, grad_y.size, _flat(grad_y), _flat(y), _flat(out), act)
    return out


# ---------------------------------------------------------------------------------------------
# Public host API
# ---------------------------------------------------------------------------------------------

def bias_act_forward(x, bias=None, activation=None):
    """``act(x + bias)`` with ``bias`` (C,) broadcast along axis 1 of ``x`` (N, C, ...)."""
    x3 = _channels_view(x)
    y = steps.empty(x.shape, x.dtype)
    has_bias = bias is not None
    _launch(_bias_act_forward_kernel, x.size, x3, bias if has_bias else _placeholder(x.dtype),
            y.reshape(x3.shape), has_bias, activation_code(activation))
    return y


def bias_act_backward(grad_y, y, activation=None, with_bias=True):
    """``(grad_x, grad_bias)`` of :func:`bias_act_forward` from its output ``y``.

    grad_x has ``grad_y``'s shape (N, C, ...); grad_bias (C,) sums it over all axes but 1
    (``None`` when ``with_bias`` is false).
    """
    grad_x = activation_backward_into(grad_y, y, activation)
    if grad_x is grad_y:
        grad_x = steps.empty(grad_y.shape, grad_y.dtype)
        grad_x.copy_to_device(grad_y)
    grad_bias = sum_over_batch_and_space(_channels_view(grad_x)) if with_bias else None
    return grad_x, grad_bias


def activation_forward(x, activation):
    """``act(x)`` elementwise, any shape."""
    flat = x.reshape(1, 1, x.size)
    return bias_act_forward(flat, None, activation).reshape(x.shape)


def activation_backward(grad_y, y, activation):
    """Gradient at the activation's input, from ``grad_y`` and the forward's output ``y``."""
    grad_x, _ = bias_act_backward(grad_y, y, activation, with_bias=False)
    return grad_x


def relu_forward(x):
    return activation_forward(x, "relu")


def relu_backward(grad_y, y):
    return activation_backward(grad_y, y, "relu")


def sigmoid_forward(x):
    return activation_forward(x, "sigmoid")


def sigmoid_backward(grad_y, y):
    return activation_backward(grad_y, y, "sigmoid")


def tanh_forward(x):
    return activation_forward(x, "tanh")


def tanh_backward(grad_y, y):
    return activation_backward(grad_y, y, "tanh")


def matmul(a, b, trans_a=False, trans_b=False, bias=None, activation=None, out=None):
    """``act(op(a) @ op(b) + bias)`` through the tiled shared-memory kernel.

    op(a) is (M, D) (``a`` is (D, M) when ``trans_a``), op(b) (D, N), bias (N,) or None;
    returns a new (M, N) device array, or writes ``out`` and returns it.
    """
    rows = a.shape[1] if trans_a else a.shape[0]
    depth = a.shape[0] if trans_a else a.shape[1]
    depth_b = b.shape[1] if trans_b else b.shape[0]
    cols = b.shape[0] if trans_b else b.shape[1]
    if depth != depth_b:
        raise ValueError(f"matmul: inner sizes differ ({depth} and {depth_b})")
    c = steps.empty((rows, cols), a.dtype) if out is None else out
    has_bias = bias is not None
    blocks, threads = _gemm_grid(rows, cols)
    steps.launch(_gemm_kernel(np.dtype(a.dtype).name), blocks, threads, a, b,
                 bias if has_bias else _placeholder(a.dtype), c, bool(trans_a), bool(trans_b),
                 has_bias, activation_code(activation))
    return c


def linear_forward(x, weight, bias=None, activation=None):
    """``y = act(x @ weight.T + bias)``: x (N, F_in), weight (F_out, F_in), bias (F_out,)
    or None; y (N, F_out). Bias and activation are fused into the product's epilogue."""
    return matmul(x, weight, trans_b=True, bias=bias, activation=activation)


def linear_backward(grad_y, x, weight, y=None, activation=None, with_bias=True,
                    need_input_grad=True, grad_weight=None, grad_bias=None):
    """``(grad_x, grad_weight, grad_bias)`` of :func:`linear_forward`.

    grad_y (N, F_out) is the gradient at the layer's output (after the activation, whose
    backward then needs that output ``y``); grad_x (N, F_in) or None without
    ``need_input_grad``, grad_weight (F_out, F_in) (into ``grad_weight`` when given),
    grad_bias (F_out,) (into ``grad_bias``) or None when ``with_bias`` is false.
    """
    g = activation_backward_into(grad_y, y, activation)
    grad_x = matmul(g, weight) if need_input_grad else None
    grad_weight = matmul(g, x, trans_a=True, out=grad_weight)
    grad_bias = sum_over_batch_and_space(g.reshape(g.shape[0], g.shape[1], 1), grad_bias) \
        if with_bias else None
    return grad_x, grad_weight, grad_bias


def cross_entropy(logits, labels):
    """0-d float64 device array: the mean softmax cross-entropy of ``logits`` (N, K) against
    int ``labels`` (N,) (logsumexp - logit of the label per row, shifted by the row maximum);
    NaN where a label is outside [0, K). One launch of one block."""
    out = steps.empty((), np.float64)
    steps.launch(_row_sums_kernels()[0], 1, config.THREADS_PER_BLOCK, logits, labels, out)
    return out


def cross_entropy_backward(logits, labels):
    """(N, K) device array: the gradient of :func:`cross_entropy`,
    ``(softmax - one_hot) / N``; NaN rows for labels outside [0, K)."""
    grad = steps.empty(logits.shape, logits.dtype)
    _launch(_xent_grad_kernel, logits.shape[0], logits, labels, grad,
            logits.dtype.type(logits.shape[0]))
    return grad


def correct(logits, labels):
    """0-d int64 device array: rows of ``logits`` (N, K) whose first maximum (NumPy's argmax;
    a NaN counts as the largest) is the label. One launch of one block."""
    out = steps.empty((), np.int64)
    steps.launch(_row_sums_kernels()[1], 1, config.THREADS_PER_BLOCK, logits, labels, out)
    return out


def count_nonfinite(array):
    """0-d int64 device array: how many elements of ``array`` are NaN or infinite. One
    launch of one block (an epoch's divergence check, not a hot path)."""
    out = steps.empty((), np.int64)
    steps.launch(_row_sums_kernels()[2], 1, config.THREADS_PER_BLOCK, _flat(array), out)
    return out


def accumulate(totals, index, value, scale=1.0):
    """``totals[index] += float64(value) * scale`` on the device: totals a float64 (n,)
    device array, value a 0-d device array (a loss, a count)."""
    steps.launch(_accumulate_kernel, 1, 1, totals, int(index), value, float(scale))


def take_rows(images, labels, order, start, stop):
    """``(images[order[start:stop]], labels[order[start:stop]])`` gathered on the device in
    one launch: images (N, ...), labels (N,), order an int64 device array."""
    rows = stop - start
    x = steps.empty((rows,) + tuple(images.shape[1:]), images.dtype)
    y = steps.empty(rows, labels.dtype)
    feats = images.size // max(1, images.shape[0])
    _launch(_gather_rows_kernel, rows * feats, images.reshape(images.shape[0], feats), labels,
            order, x.reshape(rows, feats), y, start=start)
    return x, y


def dropout_forward(x, keep, scale):
    """``(y, mask)``: mask = scale where the host bool array ``keep`` (x's shape) is True,
    else 0 (x's dtype), y = x * mask. ``keep`` is uploaded (one host-to-device copy)."""
    keep_device = steps.empty(x.size, np.uint8)
    keep_device.copy_to_device(np.ascontiguousarray(keep).reshape(-1).view(np.uint8))
    y = steps.empty(x.shape, x.dtype)
    mask = steps.empty(x.shape, x.dtype)
    _launch(_dropout_kernel, x.size, _flat(x), keep_device, x.dtype.type(scale), _flat(y),
            _flat(mask))
    return y, mask


def _binary(a, b, multiply: bool):
    out = steps.empty(a.shape, a.dtype)
    _launch(_binary_kernel, out.size, _flat(a), _flat(b), _flat(out), multiply)
    return out


def add(a, b):
    """``a + b`` of two device arrays of one shape and dtype."""
    return _binary(a, b, False)


def multiply(a, b):
    """``a * b`` of two device arrays of one shape and dtype."""
    return _binary(a, b, True)


def concat_channels(arrays):
    """The device arrays (N, C_i, ...) joined along axis 1 (one launch each)."""
    first = arrays[0]
    channels = sum(int(a.shape[1]) for a in arrays)
    whole = steps.empty((first.shape[0], channels) + tuple(first.shape[2:]), first.dtype)
    offset = 0
    for part in arrays:
        _launch(_channels_kernel, part.size, _channels_view(part), _channels_view(whole), offset,
                True)
        offset += int(part.shape[1])
    return whole


def split_channels(array, sizes):
    """:func:`concat_channels`' inverse: ``array`` (N, sum(sizes), ...) cut along axis 1
    into new contiguous device arrays of ``sizes[i]`` channels."""
    parts, offset = [], 0
    for size in sizes:
        part = steps.empty((array.shape[0], size) + tuple(array.shape[2:]), array.dtype)
        _launch(_channels_kernel, part.size, _channels_view(part), _channels_view(array), offset,
                False)
        parts.append(part)
        offset += size
    return parts


def pool2x2_forward(z, pool):
    """The 2x2 pool (stride 2, floor mode; ``pool`` 'avg' or 'max') of z (N, C, H, W)."""
    from .pool import avg_pool2d_forward, max_pool2d_forward

    out_hw = (z.shape[2] // 2, z.shape[3] // 2)
    if pool == "max":
        return max_pool2d_forward(z, (2, 2), (2, 2), (0, 0), (1, 1), out_hw)[0]
    return avg_pool2d_forward(z, (2, 2), (2, 2), (0, 0), out_hw)


def act_pool2x2_backward(grad_y, z, activation, pool):
    """The gradient at a fused stage's convolution output, from grad_y (N, C, H // 2, W // 2)
    at its 2x2 pool's output and z (N, C, H, W) = activation(convolution output): the pool's
    and the activation's backward in one launch."""
    grad_z = steps.empty(z.shape, z.dtype)
    n_planes = z.shape[0] * z.shape[1]
    _launch(_act_pool2x2_backward_kernel, z.size,
            grad_y.reshape(n_planes, grad_y.shape[2], grad_y.shape[3]),
            z.reshape(n_planes, z.shape[2], z.shape[3]), grad_z.reshape(n_planes, *z.shape[2:]),
            activation_code(activation), pool == "max")
    return grad_z


def sgd_step(param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
             dampening=0.0, first=False):
    """One in-place ``torch.optim.SGD`` step on a device parameter.

    ``velocity`` (the momentum buffer, same shape) is updated in place; ``first`` says this is
    its first step (the buffer then becomes the gradient). It may be None when ``momentum``
    is 0.
    """
    dt = np.dtype(param.dtype).type
    has_momentum = momentum != 0
    if has_momentum and velocity is None:
        raise ValueError("sgd_step with momentum needs a velocity buffer")
    buf = _flat(velocity) if has_momentum else _placeholder(param.dtype)
    _launch(_sgd_kernel, param.size, _flat(param), _flat(grad), buf, dt(lr), dt(momentum),
            dt(1.0 - dampening), dt(weight_decay), has_momentum, bool(first),
            dampening != 0, bool(nesterov))


def adam_step(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, decoupled_weight_decay=False):
    """One in-place ``torch.optim.Adam`` step (AdamW with ``decoupled_weight_decay``).

    ``m`` and ``v`` (same shape as ``param``, zero before the first step) are updated in
    place; ``step`` is the 1-based number of this step, the launch's last argument (so that
    a step's prepared launch serves every step).
    """
    if step < 1:
        raise ValueError(f"adam_step: step counts from 1, got {step}")
    dt = np.dtype(param.dtype).type
    _launch(_adam_kernel, param.size, _flat(param), _flat(grad), _flat(m), _flat(v),
            dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps), dt(weight_decay),
            dt(1 - lr * weight_decay), float(lr), float(beta1), float(beta2),
            bool(decoupled_weight_decay), start=int(step))
