"""CUDA kernels for everything a training step needs besides convolution and pooling.

Host functions take numba CUDA device arrays (C-contiguous, float32 or float64) and return
new device arrays of the input dtype, except the optimizer steps, which update in place.
Activations are named ``None``/``'identity'``, ``'relu'``, ``'sigmoid'``, ``'tanh'``; their
backward passes read the activation's *output* ``y`` (as PyTorch's do), so a layer only keeps
its output. Reductions are two-pass and atomic-free (a fixed order), hence deterministic.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

from . import config
from .launch import prepare

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
# Device functions shared by the kernels here, in conv.py and in numbaconv.device_train
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
def _softmax_xent_rows_kernel(z, labels, grad, row_loss, inv_n):
    """Row-wise softmax cross-entropy; one thread owns one row of z (N, K).

    row_loss[i] = logsumexp(z[i]) - z[i, labels[i]];
    grad[i, j] = (softmax(z[i])[j] - [j == labels[i]]) * inv_n (mean reduction's gradient).
    """
    for i in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        row_loss[i] = _softmax_xent_row(z, i, labels[i], grad, inv_n, False)


@cuda.jit
def _argmax_match_kernel(z, labels, hits):
    """hits[i, 0] = 1 where the first maximum of z[i] (NaN counts as largest) is labels[i]."""
    for i in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        hits[i, 0] = 1 if _first_argmax(z, i) == labels[i] else 0


@cuda.jit
def _sgd_kernel(p, g, buf, lr, momentum, weight_decay, has_momentum, nesterov):
    """In-place SGD as ``torch.optim.SGD`` (dampening 0); all arrays flat (size,)."""
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        d = g[i]
        if weight_decay != 0:
            d = d + weight_decay * p[i]
        if has_momentum:
            b = buf[i] * momentum + d
            buf[i] = b
            if nesterov:
                d = d + momentum * b
            else:
                d = b
        p[i] = p[i] + (-lr) * d


@cuda.jit
def _adam_kernel(p, g, m, v, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
                 decay, step_size, bias_correction2_sqrt, decoupled):
    """In-place Adam/AdamW as ``torch.optim.Adam``'s single-tensor path; arrays flat (size,)."""
    half = p.dtype.type(0.5)
    one = p.dtype.type(1)
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

def _launch(kernel, total, *args):
    """Launch a one-dimensional grid-stride kernel over ``total`` items."""
    kernel[config.blocks_for(total), config.THREADS_PER_BLOCK](*args)


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


def sum_over_batch_and_space(g3):
    """``(C,)`` device array: sum of ``g3`` (N, C, L) over N and L, in a fixed order."""
    n_batch, n_chan, length = g3.shape
    reduced = n_batch * length
    chunks, chunk = config.chunking(n_chan, reduced)
    partial = cuda.device_array((chunks, n_chan), dtype=g3.dtype)
    _launch(_channel_partial_kernel, chunks * n_chan, g3, partial, chunk)
    out = cuda.device_array(n_chan, dtype=g3.dtype)
    _launch(_sum_chunks_kernel, n_chan, partial, out, g3.dtype.type(1))
    return out


def activation_backward_into(grad_y, y, activation):
    """``grad_y * act'(.)`` as a new device array; ``grad_y`` itself for the identity."""
    act = activation_code(activation)
    if act == 0:
        return grad_y
    if y is None:
        raise ValueError(f"the backward of activation {activation!r} needs its output y")
    out = cuda.device_array(grad_y.shape, dtype=grad_y.dtype)
    _launch(_act_backward_kernel, grad_y.size, _flat(grad_y), _flat(y), _flat(out), act)
    return out


# ---------------------------------------------------------------------------------------------
# Public host API
# ---------------------------------------------------------------------------------------------

def bias_act_forward(x, bias=None, activation=None):
    """``act(x + bias)`` with ``bias`` (C,) broadcast along axis 1 of ``x`` (N, C, ...)."""
    x3 = x.reshape(x.shape[0], x.shape[1], x.size // max(1, x.shape[0] * x.shape[1]))
    y = cuda.device_array(x.shape, dtype=x.dtype)
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
        grad_x = cuda.device_array(grad_y.shape, dtype=grad_y.dtype)
        grad_x.copy_to_device(grad_y)
    grad_bias = None
    if with_bias:
        g3 = grad_x.reshape(grad_x.shape[0], grad_x.shape[1],
                            grad_x.size // max(1, grad_x.shape[0] * grad_x.shape[1]))
        grad_bias = sum_over_batch_and_space(g3)
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


def matmul(a, b, trans_a=False, trans_b=False, bias=None, activation=None):
    """``act(op(a) @ op(b) + bias)`` through the tiled shared-memory kernel.

    op(a) is (M, D) (``a`` is (D, M) when ``trans_a``), op(b) (D, N), bias (N,) or None;
    returns a new (M, N) device array.
    """
    rows = a.shape[1] if trans_a else a.shape[0]
    depth = a.shape[0] if trans_a else a.shape[1]
    depth_b = b.shape[1] if trans_b else b.shape[0]
    cols = b.shape[0] if trans_b else b.shape[1]
    if depth != depth_b:
        raise ValueError(f"matmul: inner sizes differ ({depth} and {depth_b})")
    c = cuda.device_array((rows, cols), dtype=a.dtype)
    has_bias = bias is not None
    _gemm_kernel(np.dtype(a.dtype).name)[_gemm_grid(rows, cols)](
        a, b, bias if has_bias else _placeholder(a.dtype), c, bool(trans_a), bool(trans_b),
        has_bias, activation_code(activation))
    return c


def linear_forward(x, weight, bias=None, activation=None):
    """``y = act(x @ weight.T + bias)``: x (N, F_in), weight (F_out, F_in), bias (F_out,)
    or None; y (N, F_out). Bias and activation are fused into the product's epilogue."""
    return matmul(x, weight, trans_b=True, bias=bias, activation=activation)


def linear_backward(grad_y, x, weight, y=None, activation=None, with_bias=True):
    """``(grad_x, grad_weight, grad_bias)`` of :func:`linear_forward`.

    grad_y (N, F_out) is the gradient at the layer's output (after the activation, whose
    backward then needs that output ``y``); grad_x (N, F_in), grad_weight (F_out, F_in),
    grad_bias (F_out,) or None when ``with_bias`` is false.
    """
    g = activation_backward_into(grad_y, y, activation)
    grad_x = matmul(g, weight)
    grad_weight = matmul(g, x, trans_a=True)
    grad_bias = None
    if with_bias:
        grad_bias = sum_over_batch_and_space(g.reshape(g.shape[0], g.shape[1], 1))
    return grad_x, grad_weight, grad_bias


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy of ``logits`` (N, K) against int ``labels`` (N,).

    Returns ``(loss, grad)``: loss a (1,) device array (logsumexp - logit of the label,
    shifted by the row maximum for stability, averaged over N), grad (N, K) its gradient
    with respect to the logits, ``(softmax - one_hot) / N``.
    """
    n_rows = logits.shape[0]
    dtype = np.dtype(logits.dtype)
    grad = cuda.device_array(logits.shape, dtype=dtype)
    row_loss = cuda.device_array((n_rows, 1, 1), dtype=dtype)
    inv_n = dtype.type(1.0 / max(1, n_rows))
    _launch(_softmax_xent_rows_kernel, n_rows, logits, labels, grad,
            row_loss.reshape(n_rows), inv_n)
    loss = _sum_scaled(row_loss, inv_n)
    return loss, grad


def accuracy_count(logits, labels):
    """(1,) int64 device array: rows of ``logits`` (N, K) whose argmax is the label."""
    n_rows = logits.shape[0]
    hits = cuda.device_array((n_rows, 1), dtype=np.int64)
    _launch(_argmax_match_kernel, n_rows, logits, labels, hits)
    return _sum_scaled(hits.reshape(n_rows, 1, 1), np.int64(1))


def _sum_scaled(column, scale):
    """(1,) device array: ``scale`` times the sum of a (N, 1, 1) device array."""
    n_rows = column.shape[0]
    chunks, chunk = config.chunking(1, n_rows)
    partial = cuda.device_array((chunks, 1), dtype=column.dtype)
    _launch(_channel_partial_kernel, chunks, column, partial, chunk)
    out = cuda.device_array(1, dtype=column.dtype)
    _launch(_sum_chunks_kernel, 1, partial, out, scale)
    return out


def sgd_step(param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One in-place ``torch.optim.SGD`` step (dampening 0) on a device parameter.

    ``velocity`` (the momentum buffer, same shape, zero before the first step) is updated in
    place; it may be None when ``momentum`` is 0.
    """
    _launch(_sgd_kernel, param.size,
            *_sgd_arguments(param, grad, velocity, lr, momentum, weight_decay, nesterov))


def sgd_launch(param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """:func:`sgd_step` as a prepared launch (device arrays only), for a loop that repeats it
    on the same arrays."""
    return prepare(_sgd_kernel, config.blocks_for(param.size), config.THREADS_PER_BLOCK,
                   *_sgd_arguments(param, grad, velocity, lr, momentum, weight_decay, nesterov))


def _sgd_arguments(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    dt = np.dtype(param.dtype).type
    has_momentum = momentum != 0
    if has_momentum and velocity is None:
        raise ValueError("sgd_step with momentum needs a velocity buffer")
    buf = _flat(velocity) if has_momentum else _placeholder(param.dtype)
    return (_flat(param), _flat(grad), buf, dt(lr), dt(momentum), dt(weight_decay),
            has_momentum, bool(nesterov))


def adam_step(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, decoupled_weight_decay=False):
    """One in-place ``torch.optim.Adam`` step (AdamW with ``decoupled_weight_decay``).

    ``m`` and ``v`` (same shape as ``param``, zero before the first step) are updated in
    place; ``step`` is the 1-based number of this step. The bias corrections are computed
    on the host in double precision, as PyTorch does.
    """
    if step < 1:
        raise ValueError(f"adam_step: step counts from 1, got {step}")
    dt = np.dtype(param.dtype).type
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    _launch(_adam_kernel, param.size, _flat(param), _flat(grad), _flat(m), _flat(v),
            dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps), dt(weight_decay),
            dt(1 - lr * weight_decay), dt(lr / bias_correction1),
            dt(math.sqrt(bias_correction2)), bool(decoupled_weight_decay))
