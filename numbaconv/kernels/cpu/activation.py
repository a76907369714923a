"""Numba CPU kernels for activations: the sigmoid, and an activation followed by a 2x2 pool
fused into one pass.

**The sigmoid** and its gradient take one pass each where NumPy needs three or four (and
temporaries). Numba has no vector ``exp`` (without Intel's SVML it calls the scalar libm one
per element), so the float32 sigmoid computes its own ``exp`` from arithmetic the compiler can
vectorise; float64 calls libm's. The arrays are flat, C-contiguous vectors (callers pass
``reshape(-1)`` views, so each kernel compiles once for every shape), processed in chunks,
each chunk owned by one thread.

**Activation + pool** (``Sequential``'s fused ``Conv2d -> Sigmoid|ReLU -> pool(2)`` stage,
:mod:`~.layers.fusion`). Unfused, LeNet's ``Sigmoid`` then ``AvgPool2d(2)`` read and write its
first feature map (1.2 M values at batch 256, more than L2 holds) in four passes forward and
four backward. Here each task takes a run of whole ``(n, c)`` planes (contiguous in ``z``,
about 8K values), activates them in place in one pass and pools them while they are in L1: the
forward reads and rewrites ``z`` (the convolution's output, which nothing else holds) and
writes the pooled output; the backward reads the activated values and the pooled gradient and
writes the gradient at ``z``, with no activation to recompute (the sigmoid's ``exp`` and
division cost more than the pass over memory that keeps its values). The arithmetic is the
unfused layers' own, in their order, so fused and unfused results agree bit for bit. Windows
are 2x2 with stride 2, no padding, floor mode (a last odd row or column gets no window);
callers check that.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import simd

CHUNK = 16384  # elements per parallel task

# exp(t) = 2**k * exp(r), k = round(t / ln 2), r = t - k ln 2 (Cody-Waite: ln 2 in two parts so
# that k ln 2 is exact enough), exp(r) on [-ln2/2, ln2/2] by Cephes's expf polynomial.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0, _P1, _P2, _P3, _P4, _P5 = (np.float32(c) for c in (
    1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
    5.0000001201e-1))
_ONE32 = np.float32(1.0)
_HALF32 = np.float32(0.5)
# exp(-87.3) is float32's smallest normal, so sigmoid(87.3) is 1; exp(89) overflows to inf
_T_MIN32 = np.float32(-87.3)
_T_MAX32 = np.float32(89.0)


# Loops over the sigmoid compile with these options: fused multiply-adds and approximate
# reciprocals but no 'nnan'/'ninf' (NaN must propagate), and NumPy's error model (Python's
# checks each division for zero, a branch that stops vectorisation). Numba drops a function's
# fastmath flags when it inlines it, and a call that is not inlined stops vectorisation: so the
# scalar functions are inlined and the loops that call them carry the options.
VECTOR_LOOP = {"fastmath": {"contract", "arcp", "afn"}, "error_model": "numpy"}


# With AVX-512, 2**k scales exp(r) in one instruction (vscalefps, LLVM's ldexp), the same
# product rounded once as the two multiplications below: sigmoid 12% faster, the same values.
_LDEXP_IN_ONE = simd.has_avx512()


@intrinsic
def _ldexp32(typingctx, x, k):
    """x * 2**k for a float32 x and an int32 k, rounded once (LLVM's ``ldexp``, which
    loops vectorise)."""
    def codegen(context, builder, sig, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.FloatType(), [ir.FloatType(), ir.IntType(32)]),
            "llvm.ldexp.f32.i32")
        return builder.call(function, args)

    return types.float32(types.float32, types.int32), codegen


@njit(inline="always")
def _sigmoid_float32(x):
    """1 / (1 + exp(-x)) in float32, within 2.5 ulps (2.1 measured); branch-free so that
    loops over it vectorise. exp(-x) overflowing gives exactly 0, NaN gives NaN."""
    t = -x
    if t < _T_MIN32:  # comparisons are False for NaN: it stays NaN
        t = _T_MIN32
    if t > _T_MAX32:
        t = _T_MAX32
    k = np.floor(t * _LOG2E + _HALF32)
    r = (t - k * _LN2_HI) - k * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    exp_r = (p * r) * r + r + _ONE32
    k_int = np.int32(k if k == k else _ONE32)  # NaN is not converted: r carries it
    if _LDEXP_IN_ONE:
        return _ONE32 / (_ONE32 + _ldexp32(exp_r, k_int))
    # 2**k as 2**half * 2**(k - half), each from its exponent bits: both normal for every k
    # here (-126..128), so exp(88.5) is finite and sigmoid(-88.5) a tiny non-zero, as NumPy's
    half = k_int >> 1
    scale_1 = np.int32((half + 127) << 23).view(np.float32)
    scale_2 = np.int32((k_int - half + 127) << 23).view(np.float32)
    return _ONE32 / (_ONE32 + (exp_r * scale_1) * scale_2)


def sigmoid_value(x):
    """The sigmoid of one float32 or float64 in compiled code (float64: libm's ``exp``)."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(sigmoid_value, inline="always")
def _sigmoid_value_overload(x):
    if x == types.float32:
        return lambda x: _sigmoid_float32(x)
    if x == types.float64:
        return lambda x: 1.0 / (1.0 + math.exp(-x))  # math.exp(>709) is inf: gives 0
    return None


@njit(cache=True, **VECTOR_LOOP)
def sigmoid_into(x, out):
    """out[i] = sigmoid(x[i]) for flat (1-D) arrays of one dtype (serial; vectorised)."""
    for i in range(x.size):
        out[i] = sigmoid_value(x[i])


@njit(parallel=True, cache=True)
def sigmoid_forward(x):
    """1 / (1 + exp(-x)) of a flat (1-D) array, in its dtype."""
    out = np.empty_like(x)
    for chunk in prange((x.size + CHUNK - 1) // CHUNK):
        stop = min(x.size, (chunk + 1) * CHUNK)
        sigmoid_into(x[chunk * CHUNK:stop], out[chunk * CHUNK:stop])
    return out


@njit(parallel=True, cache=True)
def sigmoid_backward(grad_y, y):
    """grad_y * y * (1 - y), as PyTorch computes it; flat (1-D) arrays."""
    out = np.empty_like(y)
    one = y.dtype.type(1)
    for chunk in prange((y.size + CHUNK - 1) // CHUNK):
        for i in range(chunk * CHUNK, min(y.size, (chunk + 1) * CHUNK)):
            out[i] = grad_y[i] * ((one - y[i]) * y[i])
    return out


SIGMOID, RELU = 0, 1  # activation codes
AVG, MAX = 0, 1  # pool codes
ACTIVATION_NAMES = {SIGMOID: "sigmoid", RELU: "relu"}
POOL_NAMES = {AVG: "avg", MAX: "max"}
TASK_ELEMENTS = 8192  # values of z per parallel task (32 KiB of float32), activated in place
                      # and pooled while in L1 (or L2 for float64). A task takes whole planes,
                      # at least one; LeNet's 10x10 planes cost a third of their time in
                      # per-plane calls when taken singly


# In place (one array), so that the loops vectorise without a run-time overlap check.

@njit(cache=True, **VECTOR_LOOP)
def _sigmoid_in_place(z):
    """z = sigmoid(z) for a flat array."""
    for i in range(z.size):
        z[i] = sigmoid_value(z[i])


@njit(cache=True, **VECTOR_LOOP)
def _relu_in_place(z):
    """z = max(z, 0) for a flat array, as NumPy's ``maximum``: NaN stays NaN, -0.0 gives
    +0.0."""
    zero = z.dtype.type(0)
    for i in range(z.size):
        v = z[i]
        z[i] = v if (v > zero or v != v) else zero


# grad *= activation'(y) for flat arrays, as the activation layers' backward computes it.

@njit(cache=True, error_model="numpy")
def _times_sigmoid_derivative(grad, y):
    """The sigmoid layer's ``grad * ((1 - y) * y)``."""
    one = y.dtype.type(1)
    for i in range(y.size):
        grad[i] = grad[i] * ((one - y[i]) * y[i])


@njit(cache=True, error_model="numpy")
def _times_relu_derivative(grad, y):
    """The ReLU layer's ``grad * (not y <= 0)``."""
    zero = y.dtype.type(0)
    one = y.dtype.type(1)
    for i in range(y.size):
        grad[i] = grad[i] * (zero if y[i] <= zero else one)


# The pools' 2x2 windows, written out: with the window's size known the compiler unrolls them
# (about 2x faster than loops over a kernel size). Each function takes a block of planes
# (P, H, W) and its pooled (P, H // 2, W // 2), so that a task makes one call, not one per
# plane. Dividing by 4 and multiplying by 0.25 both round the same exact quotient: the average
# pool's results, bit for bit.

@njit(inline="always")
def avg2x2_row(top, bottom, out):
    """out = means of the 2x2 windows of rows top and bottom (columns < 2 * len(out)), summed
    in the average pool's order."""
    w = simd.width(out)
    zero = simd.splat(out, out.dtype.type(0))
    quarter = simd.splat(out, out.dtype.type(0.25))
    for ow in range(0, out.shape[0], w):  # a vector of windows: rows are short (LeNet's 14)
        n = min(w, out.shape[0] - ow)
        top_left, top_right = simd.evens_odds(top, 2 * ow, n)
        bottom_left, bottom_right = simd.evens_odds(bottom, 2 * ow, n)
        total = simd.add(simd.add(simd.add(simd.add(zero, top_left), top_right), bottom_left),
                         bottom_right)
        simd.store_first(out, ow, simd.mul(total, quarter), n)


@njit(cache=True)
def _avg2x2_forward(a, y):
    """y = means of the 2x2 windows of a, summed in the average pool's order."""
    for plane in range(y.shape[0]):
        for oh in range(y.shape[1]):
            avg2x2_row(a[plane, 2 * oh], a[plane, 2 * oh + 1], y[plane, oh])


@njit(inline="always")
def _max2x2_winner(top, bottom, w):
    """The maximum of the window at columns w, w + 1 of two rows and its position 0-3 in
    row-major order, by the max pool's rule: the first maximum wins a tie, a NaN always wins.
    Branch-free (selects): the winner of random data is unpredictable."""
    best, pos = top[w], 0
    for candidate, value in ((1, top[w + 1]), (2, bottom[w]), (3, bottom[w + 1])):
        take = (value > best) | (value != value)
        best = value if take else best
        pos = candidate if take else pos
    return best, pos


@njit(inline="always")
def max2x2_row(top, bottom, out):
    """out = maxima of the 2x2 windows of rows top and bottom (columns < 2 * len(out))."""
    for ow in range(out.shape[0]):
        out[ow] = _max2x2_winner(top, bottom, 2 * ow)[0]


@njit(cache=True)
def _max2x2_forward(a, y):
    """y = maxima of the 2x2 windows of a."""
    for plane in range(y.shape[0]):
        for oh in range(y.shape[1]):
            max2x2_row(a[plane, 2 * oh], a[plane, 2 * oh + 1], y[plane, oh])


@njit(cache=True)
def _zero_unpooled(grad, out_h, out_w):
    """Zeros in the last row and column of each plane of grad (P, H, W) where H or W is odd:
    floor mode gives them no window, so no gradient."""
    zero = grad.dtype.type(0)
    for plane in range(grad.shape[0]):
        for h in range(grad.shape[1]):
            for w in range(0 if h >= 2 * out_h else 2 * out_w, grad.shape[2]):
                grad[plane, h, w] = zero


@njit(cache=True)
def _avg2x2_backward(g, grad):
    """Each 2x2 window of grad gets a quarter of its output's gradient (every value of grad
    is written)."""
    w = simd.width(grad[0, 0])
    quarter = simd.splat(grad[0, 0], grad.dtype.type(0.25))
    for plane in range(g.shape[0]):
        for oh in range(g.shape[1]):
            top, bottom, grad_row = grad[plane, 2 * oh], grad[plane, 2 * oh + 1], g[plane, oh]
            for ow in range(0, g.shape[2], w):  # a vector of windows at a time
                n = min(w, g.shape[2] - ow)
                share = simd.mul(simd.load_first(grad_row, ow, n), quarter)
                simd.store_pairs(top, 2 * ow, share, share, n)
                simd.store_pairs(bottom, 2 * ow, share, share, n)
    _zero_unpooled(grad, g.shape[1], g.shape[2])


@njit(cache=True)
def _max2x2_backward(a, g, grad):
    """Adds each window's gradient to the winner of its 2x2 window of a, in grad, which is
    zeroed first (as the unfused backward's scatter into zeros: -0.0 becomes +0.0)."""
    flat = grad.reshape(-1)
    zero = grad.dtype.type(0)
    for i in range(flat.size):  # one pass for the block: a vectorised fill
        flat[i] = zero
    for plane in range(g.shape[0]):
        for oh in range(g.shape[1]):
            top, bottom = a[plane, 2 * oh], a[plane, 2 * oh + 1]
            for ow in range(g.shape[2]):
                pos = _max2x2_winner(top, bottom, 2 * ow)[1]
                grad[plane, 2 * oh + (pos >> 1), 2 * ow + (pos & 1)] += g[plane, oh, ow]


@njit(cache=True)
def _planes_per_task(plane_size):
    return max(1, TASK_ELEMENTS // plane_size)


def _fused_kernels(activation, pool):
    """The forward and backward kernels of one activation and pool pair.

    The codes are constants to Numba (closure variables), which compiles the pair's own
    branches only: a cold start compiles the pair a model uses, not all four. Each kernel gets
    its own name (and so its own cache index), e.g. ``sigmoid_avg_pool_forward``.
    """
    def forward(z):
        n_batch, channels, height, width = z.shape
        y = np.empty((n_batch, channels, height // 2, width // 2), dtype=z.dtype)
        planes = n_batch * channels
        per_task = _planes_per_task(height * width)
        z_planes = z.reshape(planes, height, width)
        y_planes = y.reshape(planes, height // 2, width // 2)
        for task in prange((planes + per_task - 1) // per_task):
            first = task * per_task
            last = min(planes, first + per_task)
            block = z_planes[first:last]  # activated in place, then pooled from L1
            if activation == SIGMOID:
                _sigmoid_in_place(block.reshape(-1))
            else:
                _relu_in_place(block.reshape(-1))
            if pool == AVG:
                _avg2x2_forward(block, y_planes[first:last])
            else:
                _max2x2_forward(block, y_planes[first:last])
        return y

    def backward(grad_y, activated):
        n_batch, channels, height, width = activated.shape
        grad_z = np.empty_like(activated)
        planes = n_batch * channels
        per_task = _planes_per_task(height * width)
        a_planes = activated.reshape(planes, height, width)
        g_planes = grad_y.reshape(planes, height // 2, width // 2)
        grad_planes = grad_z.reshape(planes, height, width)
        for task in prange((planes + per_task - 1) // per_task):
            first = task * per_task
            last = min(planes, first + per_task)
            grad = grad_planes[first:last]
            if pool == AVG:
                _avg2x2_backward(g_planes[first:last], grad)
            else:
                _max2x2_backward(a_planes[first:last], g_planes[first:last], grad)
            if activation == SIGMOID:
                _times_sigmoid_derivative(grad.reshape(-1), a_planes[first:last].reshape(-1))
            else:
                _times_relu_derivative(grad.reshape(-1), a_planes[first:last].reshape(-1))
        return grad_z

    name = f"{ACTIVATION_NAMES[activation]}_{POOL_NAMES[pool]}_pool"
    kernels = []
    for function, suffix in ((forward, "forward"), (backward, "backward")):
        function.__name__ = function.__qualname__ = f"{name}_{suffix}"
        kernels.append(njit(parallel=True, cache=True)(function))
    return tuple(kernels)


#: (activation, pool) -> (forward, backward) kernels
FUSED = {(activation, pool): _fused_kernels(activation, pool)
         for activation in ACTIVATION_NAMES for pool in POOL_NAMES}


def act_pool_forward(z, activation, pool):
    """y (N, C, H // 2, W // 2) = pool(activation(z)) for z (N, C, H, W), C-contiguous, 2x2
    windows. Overwrites z with activation(z), which :func:`act_pool_backward` takes."""
    return FUSED[activation, pool][0](z)


def act_pool_backward(grad_y, activated, activation, pool):
    """The gradient at z (N, C, H, W) from grad_y (N, C, H // 2, W // 2) and ``activated``,
    activation(z) as :func:`act_pool_forward` left it, both C-contiguous, 2x2 windows: the
    pool's backward, then times the activation's derivative (both read from the activated
    values, so nothing is recomputed)."""
    return FUSED[activation, pool][1](grad_y, activated)
