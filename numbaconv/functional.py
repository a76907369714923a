"""Convolution and pooling as plain functions, forward and backward, with PyTorch's semantics.

Every function takes NumPy arrays in NCHW layout (float32 or float64; the result has the
input's dtype) and checks its arguments, so a mistake surfaces as a ``ValueError`` or
``TypeError`` that names the argument and the shapes involved. Numba CUDA device arrays are
accepted too: the same call then runs on the GPU and returns device arrays (needs the
``numbaconv[cuda]`` extra).

Shapes: ``x`` (N, C_in, H, W); ``weight`` (C_out, C_in // groups, kH, kW); ``bias`` (C_out,);
outputs (N, C_out, H_out, W_out) with ``H_out = floor((H + pad_top + pad_bottom
- dilation*(kH-1) - 1) / stride) + 1`` (see :mod:`numbaconv.shapes`).
"""

from __future__ import annotations

import numpy as np

from . import shapes
from .kernels.cpu import conv as cpu_conv
from .kernels.cpu import conv_act_pool
from .kernels.cpu import pool as cpu_pool
from .kernels.cuda.device import is_device_array as _is_device_array

__all__ = [
    "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "corr2d", "convolve2d",
    "add", "concat_channels", "split_channels",
    "cross_entropy", "cross_entropy_backward", "correct", "count_nonfinite",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- argument checks

def _cuda_backend():
    from .kernels import cuda
    return cuda


def _check_array(array, name: str, ndim: int, layout: str):
    """``array`` as a C-contiguous float ndarray of ``ndim`` dimensions, else an error."""
    if not isinstance(array, np.ndarray) and not _is_device_array(array):
        raise TypeError(f"{name} must be a numpy.ndarray of shape {layout}, "
                        f"got {type(array).__name__}")
    if np.dtype(array.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {array.dtype} "
                        f"(shape {tuple(array.shape)})")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, "
                         f"got shape {tuple(array.shape)}")
    return array


def _check_same_dtype(reference, reference_name: str, other, other_name: str) -> None:
    if other.dtype != reference.dtype:
        raise TypeError(f"{other_name} has dtype {other.dtype} but {reference_name} has dtype "
                        f"{reference.dtype}; convert one with .astype()")


def _check_device(x, others: dict) -> bool:
    """True when ``x`` lives on the GPU; every array in ``others`` must live with it."""
    on_device = _is_device_array(x)
    for name, array in others.items():
        if array is not None and _is_device_array(array) != on_device:
            where = "a CUDA device array" if on_device else "a numpy.ndarray"
            raise TypeError(f"{name} must be {where} like x, got {type(array).__name__}")
    return on_device


def _check_grad(grad_y, expected_shape, reference, reference_name: str):
    _check_array(grad_y, "grad_y", 4, "(N, C, H_out, W_out)")
    _check_same_dtype(reference, reference_name, grad_y, "grad_y")
    if tuple(grad_y.shape) != tuple(expected_shape):
        raise ValueError(f"grad_y must have the forward output's shape {tuple(expected_shape)}, "
                         f"got {tuple(grad_y.shape)}")


class _ConvGeometry:
    """Checked and normalised arguments of one convolution."""

    def __init__(self, x, weight, stride, padding, dilation, groups):
        _check_array(x, "x", 4, "(N, C_in, H, W)")
        _check_array(weight, "weight", 4, "(C_out, C_in // groups, kH, kW)")
        _check_same_dtype(x, "x", weight, "weight")
        self.groups = shapes.as_int(groups, "groups", 1)
        self.stride = shapes.as_pair(stride, "stride", 1)
        self.dilation = shapes.as_pair(dilation, "dilation", 1)
        n, c_in, height, width = x.shape
        c_out, c_in_g, kh, kw = weight.shape
        self.kernel = (kh, kw)
        self.padding = shapes.conv_padding(padding, self.kernel, self.stride, self.dilation)
        if min(self.kernel) < 1:
            raise ValueError(f"weight must have a kernel of at least 1x1, got weight shape "
                             f"{tuple(weight.shape)}")
        if c_in % self.groups or c_out % self.groups:
            raise ValueError(f"groups={self.groups} must divide both the input channels "
                             f"({c_in}, x shape {tuple(x.shape)}) and the output channels "
                             f"({c_out}, weight shape {tuple(weight.shape)})")
        if c_in_g * self.groups != c_in:
            raise ValueError(
                f"weight expects {c_in_g * self.groups} input channels ({c_in_g} per group x "
                f"groups={self.groups}) but x has {c_in}: x shape {tuple(x.shape)}, "
                f"weight shape {tuple(weight.shape)}")
        (top, bottom), (left, right) = self.padding
        self.padded = (height + top + bottom, width + left + right)
        reach = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))
        if reach[0] > self.padded[0] or reach[1] > self.padded[1]:
            raise ValueError(
                f"the kernel spans {reach[0]}x{reach[1]} (dilation {self.dilation}) but the "
                f"padded input is only {self.padded[0]}x{self.padded[1]}: x shape "
                f"{tuple(x.shape)}, weight shape {tuple(weight.shape)}, padding {self.padding}")
        self.output_shape = (n, c_out,
                             shapes.output_size(height, kh, self.stride[0], self.padding[0],
                                                self.dilation[0]),
                             shapes.output_size(width, kw, self.stride[1], self.padding[1],
                                                self.dilation[1]))

    def crop(self, grad_xp):
        """The part of a padded-input gradient that belongs to the real input."""
        (top, bottom), (left, right) = self.padding
        hp, wp = self.padded
        return np.ascontiguousarray(grad_xp[:, :, top:hp - bottom, left:wp - right])


# --------------------------------------------------------------------------- convolution

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W), float32 or float64
    weight : ndarray (C_out, C_in // groups, kH, kW), the dtype of ``x``
    bias : ndarray (C_out,) or None
    stride, dilation : int or (h, w), at least 1
    padding : int, (h, w), ((top, bottom), (left, right)), 'valid' or 'same'
    groups : int dividing C_in and C_out

    Returns
    -------
    y : ndarray (N, C_out, H_out, W_out), the dtype of ``x``
    """
    geo = _ConvGeometry(x, weight, stride, padding, dilation, groups)
    _check_bias(bias, x, weight)
    if _check_device(x, {"weight": weight, "bias": bias}):
        return _cuda_backend().conv2d_forward(x, weight, bias, geo.stride, geo.padding,
                                              geo.dilation, geo.groups)
    if 0 in geo.output_shape:
        return np.zeros(geo.output_shape, dtype=x.dtype)
    b = np.zeros(weight.shape[0], dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
    out_h, out_w = geo.output_shape[2:]
    xp, _ = cpu_conv.pad(x, geo.padding)
    return cpu_conv.forward(xp, np.ascontiguousarray(weight), b, geo.stride, geo.dilation,
                            geo.groups, out_h, out_w)


def _check_bias(bias, x, weight):
    c_out = weight.shape[0]
    if bias is not None:
        _check_array(bias, "bias", 1, f"(C_out,) = ({c_out},)")
        _check_same_dtype(x, "x", bias, "bias")
        if bias.shape[0] != c_out:
            raise ValueError(f"bias must have C_out={c_out} entries (weight shape "
                             f"{tuple(weight.shape)}), got shape {tuple(bias.shape)}")


def _conv2d_act_pool(x, weight, bias, stride, padding, dilation, groups, activation, pool):
    """``(z, y)``: z = activation(conv2d(x, ...)) and y its 2x2 pool (stride 2, floor mode),
    by one fused CPU kernel (:mod:`numbaconv.kernels.cpu.conv_act_pool`; activation and pool
    codes as in :mod:`numbaconv.kernels.cpu.activation`), or None where that kernel does not
    serve the convolution (device arrays, a stride, narrow images): for
    :mod:`numbaconv.layers.fusion`, which then runs the two passes."""
    if not (isinstance(x, np.ndarray) and isinstance(weight, np.ndarray)):
        return None
    geo = _ConvGeometry(x, weight, stride, padding, dilation, groups)
    _check_bias(bias, x, weight)
    out_h, out_w = geo.output_shape[2:]
    padded_shape = (x.shape[0], x.shape[1]) + geo.padded
    if 0 in geo.output_shape or not (conv_act_pool.applies(padded_shape, x.itemsize, geo.stride,
                                                           geo.groups, out_w)):
        return None
    b = np.zeros(weight.shape[0], dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
    xp, _ = cpu_conv.pad(x, geo.padding)
    return conv_act_pool.conv_act_pool_forward(xp, np.ascontiguousarray(weight), b,
                                               geo.dilation, geo.groups, out_h, out_w,
                                               activation, pool)


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    need_input_grad=True):
    """Gradients of :func:`conv2d` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_y : ndarray (N, C_out, H_out, W_out), the gradient of the loss at conv2d's output
    x, weight, stride, padding, dilation, groups : as given to :func:`conv2d`
    need_input_grad : bool, default True. False skips grad_x (a network's first layer needs
        none) and returns None in its place.

    Returns
    -------
    (grad_x, grad_weight, grad_bias) : shapes (N, C_in, H, W), (C_out, C_in // groups, kH, kW)
        and (C_out,)
    """
    geo = _ConvGeometry(x, weight, stride, padding, dilation, groups)
    _check_grad(grad_y, geo.output_shape, x, "x")
    if _check_device(x, {"weight": weight, "grad_y": grad_y}):
        return _cuda_backend().conv2d_backward(grad_y, x, weight, geo.stride, geo.padding,
                                               geo.dilation, geo.groups,
                                               need_input_grad=need_input_grad)
    if 0 in geo.output_shape:
        return (np.zeros_like(x) if need_input_grad else None, np.zeros_like(weight),
                np.zeros(weight.shape[0], dtype=x.dtype))
    w = np.ascontiguousarray(weight)
    gy = np.ascontiguousarray(grad_y)
    xp, finite = cpu_conv.pad(x, geo.padding, check_finite=True)
    if not (finite and np.isfinite(w.sum())):  # rare: an exact, slow path
        grad_xp, grad_w, grad_b = cpu_conv.conv2d_backward_direct(gy, xp, w, *geo.stride,
                                                                  *geo.dilation, geo.groups)
        return geo.crop(grad_xp) if need_input_grad else None, grad_w, grad_b
    grad_w, grad_b = cpu_conv.weight_grad(gy, xp, geo.kernel, geo.stride, geo.dilation,
                                          geo.groups)
    grad_x = None
    if need_input_grad:
        grad_x = cpu_conv.conv2d_input_grad(gy, w, x.shape, geo.padding, geo.stride,
                                            geo.dilation, geo.groups)
    return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------- pooling

class _PoolGeometry:
    """Checked and normalised arguments of one pooling."""

    def __init__(self, input_shape, kernel_size, stride, padding, dilation, ceil_mode):
        self.kernel = shapes.as_pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel if stride is None else shapes.as_pair(stride, "stride", 1)
        self.padding = shapes.as_pair(padding, "padding", 0)
        self.dilation = shapes.as_pair(dilation, "dilation", 1)
        for p, k in zip(self.padding, self.kernel):
            if 2 * p > k:
                raise ValueError(f"padding {self.padding} must be at most half of kernel_size "
                                 f"{self.kernel}")
        self.output_shape = shapes.pool2d_output_shape(
            input_shape, self.kernel, self.stride, self.padding, self.dilation, bool(ceil_mode))
        if min(self.output_shape[2:]) < 1:
            reach = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))
            raise ValueError(f"the pooling window spans {reach[0]}x{reach[1]}, more than the "
                             f"padded input: input shape {tuple(input_shape)}, kernel_size "
                             f"{self.kernel}, padding {self.padding}, dilation {self.dilation} "
                             f"give output size {self.output_shape[2:]}")

    def args(self):
        """Kernel arguments: kernel, stride and padding pairs, flattened."""
        return (*self.kernel, *self.stride, *self.padding)


def _check_input_shape(input_shape):
    if len(input_shape) != 4 or not all(hasattr(s, "__index__") and s >= 0
                                        for s in input_shape):
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)!r}")
    return tuple(int(s) for s in input_shape)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Padding counts as -inf; the first maximum (row-major) wins a tie; NaN propagates.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    kernel_size, stride, dilation : int or (h, w); stride defaults to kernel_size
    padding : int or (h, w), at most half of kernel_size
    ceil_mode : bool, round the output size up instead of down
    return_indices : bool, also return the position of each maximum

    Returns
    -------
    y : ndarray (N, C, H_out, W_out), and with ``return_indices`` also
    indices : int64 ndarray (N, C, H_out, W_out), flat ``h * W + w`` inside each (n, c) plane
    """
    _check_array(x, "x", 4, "(N, C, H, W)")
    geo = _PoolGeometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    out_h, out_w = geo.output_shape[2:]
    if _is_device_array(x):
        y, indices = _cuda_backend().max_pool2d_forward(
            x, geo.kernel, geo.stride, geo.padding, geo.dilation, (out_h, out_w))
    else:
        y, indices = cpu_pool.max_pool2d_forward(np.ascontiguousarray(x), *geo.args(),
                                                 *geo.dilation, out_h, out_w)
    return (y, indices) if return_indices else y


def max_pool2d_backward(grad_y, indices, input_shape):
    """Gradient of :func:`max_pool2d` with respect to its input.

    Parameters
    ----------
    grad_y : ndarray (N, C, H_out, W_out)
    indices : int64 ndarray (N, C, H_out, W_out), as returned by ``max_pool2d``
    input_shape : (N, C, H, W) of the pooled input

    Returns
    -------
    grad_x : ndarray (N, C, H, W), the dtype of ``grad_y``. An index outside the plane (a
        window wholly in the padding, which pools to -inf) passes no gradient.
    """
    _check_array(grad_y, "grad_y", 4, "(N, C, H_out, W_out)")
    input_shape = _check_input_shape(input_shape)
    on_device = _check_device(grad_y, {"indices": indices})
    if not isinstance(indices, np.ndarray) and not on_device:
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if np.dtype(indices.dtype) != np.int64 or tuple(indices.shape) != tuple(grad_y.shape):
        raise ValueError(f"indices must be int64 with grad_y's shape {tuple(grad_y.shape)}, "
                         f"got {indices.dtype} {tuple(indices.shape)}")
    if tuple(grad_y.shape[:2]) != input_shape[:2]:
        raise ValueError(f"grad_y shape {tuple(grad_y.shape)} does not match input_shape "
                         f"{input_shape} in N and C")
    height, width = input_shape[2:]
    if on_device:
        return _cuda_backend().max_pool2d_backward(grad_y, indices, input_shape)
    return cpu_pool.max_pool2d_backward(np.ascontiguousarray(grad_y),
                                        np.ascontiguousarray(indices), height, width)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    kernel_size, stride : int or (h, w); stride defaults to kernel_size
    padding : int or (h, w), at most half of kernel_size
    ceil_mode : bool, round the output size up; the overhang past the padding never counts
    count_include_pad : bool, divide by a window size that includes the explicit padding
    divisor_override : non-zero int or None, divide by this instead

    Returns
    -------
    y : ndarray (N, C, H_out, W_out), the dtype of ``x``
    """
    _check_array(x, "x", 4, "(N, C, H, W)")
    geo = _PoolGeometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = shapes.as_divisor(divisor_override)
    out_h, out_w = geo.output_shape[2:]
    if _is_device_array(x):
        return _cuda_backend().avg_pool2d_forward(
            x, geo.kernel, geo.stride, geo.padding, (out_h, out_w), bool(count_include_pad),
            divisor)
    return cpu_pool.avg_pool2d_forward(np.ascontiguousarray(x), *geo.args(), out_h, out_w,
                                       bool(count_include_pad), divisor)


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of :func:`avg_pool2d` with respect to its input.

    Parameters
    ----------
    grad_y : ndarray (N, C, H_out, W_out)
    input_shape : (N, C, H, W) of the pooled input
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override :
        as given to :func:`avg_pool2d`

    Returns
    -------
    grad_x : ndarray (N, C, H, W), the dtype of ``grad_y``
    """
    _check_array(grad_y, "grad_y", 4, "(N, C, H_out, W_out)")
    input_shape = _check_input_shape(input_shape)
    geo = _PoolGeometry(input_shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = shapes.as_divisor(divisor_override)
    if tuple(grad_y.shape) != geo.output_shape:
        raise ValueError(f"grad_y must have the forward output's shape {geo.output_shape}, "
                         f"got {tuple(grad_y.shape)}")
    if _is_device_array(grad_y):
        return _cuda_backend().avg_pool2d_backward(
            grad_y, input_shape, geo.kernel, geo.stride, geo.padding, bool(count_include_pad),
            divisor)
    return cpu_pool.avg_pool2d_backward(np.ascontiguousarray(grad_y), *input_shape[2:],
                                        *geo.args(), bool(count_include_pad), divisor)


# --------------------------------------------------------------------------- the text's 2-D forms

def _check_matrix(array, name: str):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a 2-D numpy.ndarray, got {type(array).__name__}")
    if array.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions (height, width), got shape "
                         f"{array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")


def corr2d(X, K):
    """2-D cross-correlation of one plane ``X`` (h, w) with a kernel ``K`` (kh, kw).

    ``Y[i, j] = sum_{a, b} K[a, b] * X[i + a, j + b]``, shape (h - kh + 1, w - kw + 1): the
    operation a convolutional layer computes ("Dive into Deep Learning", 6.2). Integer inputs
    are computed in float64; float inputs keep the wider of their dtypes.
    """
    _check_matrix(X, "X")
    _check_matrix(K, "K")
    if K.shape[0] > X.shape[0] or K.shape[1] > X.shape[1]:
        raise ValueError(f"K shape {K.shape} must fit inside X shape {X.shape}")
    dtype = np.result_type(X.dtype, K.dtype, np.float32)
    return conv2d(X.astype(dtype)[None, None], K.astype(dtype)[None, None])[0, 0]


def convolve2d(X, K):
    """True 2-D convolution ``(f * g)(i, j) = sum_{a, b} f(a, b) g(i - a, j - b)``, 'valid' part.

    The cross-correlation of ``X`` with ``K`` flipped both ways; shapes as :func:`corr2d`.
    """
    _check_matrix(K, "K")
    return corr2d(X, K[::-1, ::-1])


# --------------------------------------------------------------------------- joining branches

def add(a, b):
    """``a + b`` of two arrays of the same shape and dtype (a residual connection's sum, and
    the sum of the gradients of an input that two branches read)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    _check_same_dtype(a, "a", b, "b")
    if _check_device(a, {"b": b}):
        return _cuda_backend().ops.add(a, b)
    return np.add(a, b)


def concat_channels(arrays):
    """The arrays (N, C_i, ...) joined along axis 1 into (N, sum C_i, ...): ``torch.cat(...,
    dim=1)``; every other axis and the dtype must agree."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("concat_channels needs at least one array")
    first = arrays[0]
    for i, array in enumerate(arrays[1:], start=1):
        if array.ndim != first.ndim or tuple(array.shape[:1]) + tuple(array.shape[2:]) != \
                tuple(first.shape[:1]) + tuple(first.shape[2:]):
            raise ValueError(f"concat_channels: array {i} has shape {tuple(array.shape)}, "
                             f"which does not fit {tuple(first.shape)} beside axis 1")
        _check_same_dtype(first, "array 0", array, f"array {i}")
    if _check_device(first, {f"array {i}": a for i, a in enumerate(arrays[1:], start=1)}):
        return _cuda_backend().ops.concat_channels(arrays)
    return np.concatenate(arrays, axis=1)


def split_channels(array, sizes):
    """The inverse of :func:`concat_channels`: ``array`` (N, sum(sizes), ...) cut along axis 1
    into arrays of ``sizes[i]`` channels (views on the CPU)."""
    sizes = [int(s) for s in sizes]
    if array.ndim < 2 or sum(sizes) != array.shape[1]:
        raise ValueError(f"split_channels: {sizes} channels do not add up to the "
                         f"{tuple(array.shape)} array's axis 1")
    if _is_device_array(array):
        return _cuda_backend().ops.split_channels(array, sizes)
    bounds = np.cumsum([0] + sizes)
    return [array[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- loss and metrics

def cross_entropy(logits, labels):
    """The batch mean of ``-log softmax(logits)[label]`` (``torch.nn.functional.
    cross_entropy``): logits (N, K) float, labels (N,) ints in [0, K); a 0-d array."""
    from .losses import _check_labels, _check_logits, log_softmax

    logits = _check_logits(logits)
    labels = _check_labels(labels, logits)
    logp = log_softmax(logits)
    return np.asarray(-logp[np.arange(len(labels)), labels].sum(dtype=np.float64)
                      / len(labels))


def cross_entropy_backward(logits, labels):
    """d :func:`cross_entropy` / d logits: ``(softmax(logits) - onehot(labels)) / N``, with
    the logits' shape (N, K) and dtype."""
    from .losses import _check_labels, _check_logits, log_softmax

    logits = _check_logits(logits)
    labels = _check_labels(labels, logits)
    grad = np.exp(log_softmax(logits))  # as the loss computes it, to the last bit
    grad[np.arange(len(labels)), labels] -= 1
    grad /= len(labels)
    return grad


def correct(logits, labels):
    """How many rows of logits (N, K) have their first arg-max at the label (N,): 0-d."""
    return np.count_nonzero(np.argmax(logits, axis=1) == labels)


def count_nonfinite(array):
    """How many elements of ``array`` are NaN or infinite: 0-d (a divergence check)."""
    return np.asarray(array.size - np.count_nonzero(np.isfinite(array)))
