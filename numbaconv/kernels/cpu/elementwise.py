"""Numba CPU kernels for elementwise activations: one pass over memory each, in parallel.

The sigmoid's forward and gradient each take one pass where NumPy needs three or four (and
temporaries). Numba has no vector ``exp`` (without Intel's SVML it calls the scalar libm one per
element), so the float32 sigmoid computes its own ``exp`` from arithmetic the compiler can
vectorise; float64 calls libm's. Arrays are flat, C-contiguous vectors (callers pass
``reshape(-1)`` views, so each kernel compiles once for every shape), processed in chunks, each
chunk owned by one thread.
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

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
    one = np.ones(1, dtype=y.dtype)[0]
    for chunk in prange((y.size + CHUNK - 1) // CHUNK):
        for i in range(chunk * CHUNK, min(y.size, (chunk + 1) * CHUNK)):
            out[i] = grad_y[i] * ((one - y[i]) * y[i])
    return out
